"""Orchestration benchmark: the Prefect flow against the core API doing the same work.

Figures (synthetic provider, tiny random checkpoint, CPU, one month per ROI, ROIs
of ``--buffer-m`` 2048 m = 410 x 410 px chips by default, the product's usual size):

* overhead: wall time of ``embed_rois`` / wall time of ``pipeline.run_direct`` for the
  same ROIs (target <= 1.3). Both start from a cold chip cache, an empty store and an
  already loaded model; the provider seed differs per measurement so no Prefect cache
  record can be hit.
* scaling: wall time and peak RSS of one flow run at 10 / 100 / 1000 ROIs, each in a
  fresh process (peak RSS is per process, the temporary Prefect server excluded).
* cached rerun: the same flow run again on the same store (every entry identical,
  so skipped) as a fraction of the first run's time (target <= 0.1); also a rerun into
  a new store with warm fetch caches (only inference and the commit are redone).

Usage: ``python -m bench.bench_flow [--sizes 10,100,1000] [--overhead-rois 100] [--buffer-m 2048]``.
Prints a JSON report and writes it to ``--out`` (default ``bench/results/bench_flow.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _rois(n: int, buffer_m: float) -> list[list[float]]:
    # A lattice of ROIs 0.05 deg apart (no overlap, distinct ids), in one UTM zone.
    side = max(1, int(n**0.5) + 1)
    return [[2.0 + 0.05 * (i % side), 45.0 + 0.05 * (i // side), buffer_m] for i in range(n)]


def _peak_rss_mb() -> float:
    """Peak RSS of this process image (VmHWM); unlike ru_maxrss it does not inherit the parent's peak across exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _cleanup(work: Path) -> None:
    """Remove a benchmark's folder (a 1000-ROI run leaves ~1.3 GB of chips) unless RS_EMBED_BENCH_KEEP=1."""
    if os.environ.get("RS_EMBED_BENCH_KEEP") != "1":
        shutil.rmtree(work, ignore_errors=True)


def _env(work: Path) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["PREFECT_HOME"] = str(work / "prefect-home")
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
    os.environ["RS_EMBED_STAGING_DIR"] = str(work / "staging")


def _checkpoint(work: Path) -> str:
    """The tiny dev checkpoint (made once per benchmark in a subprocess, so torch's build cost stays out of peak RSS)."""
    ckpt = Path(os.environ.get("RS_EMBED_BENCH_CKPT") or work / "ckpt")
    if not (ckpt / "model.safetensors").is_file():
        code = f"from rs_embed_core.models import make_dev_checkpoint; make_dev_checkpoint({str(ckpt)!r}, arch='tiny', seed=0)"
        subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
    return str(ckpt)


def _flow_kwargs(rois: list, work: Path, tag: str, ckpt: str, seed: int, batch_size: int) -> dict[str, Any]:
    from rs_embed_core.providers.synthetic import SyntheticProvider

    return {
        "rois": rois,
        "store": str(work / f"store-{tag}"),
        "months": ["2024-05"],
        "backend": SyntheticProvider(seed=seed),
        "checkpoint": ckpt,
        "device": "cpu",
        "batch_size": batch_size,
        "cache_dir": str(work / f"chips-{tag}"),
    }


def overhead(n: int, buffer_m: float, batch_size: int) -> dict[str, Any]:
    """Flow vs direct core API (same process, model loaded first) plus the cached reruns."""
    work = Path(tempfile.mkdtemp(prefix="bench-flow-"))
    _env(work)
    from prefect.testing.utilities import prefect_test_harness

    from rs_embed_core.pipeline import load_model_for, run_direct
    from rs_embed_core.planning import build_request
    from rs_embed_core.providers.synthetic import SyntheticProvider

    ckpt = _checkpoint(work)
    rois = _rois(n, buffer_m)
    with prefect_test_harness(server_startup_timeout=120):
        from flows.embed import embed_rois

        req = build_request(rois, months=["2024-05"], checkpoint=ckpt, batch_size=batch_size)
        load_model_for(req.sensor, device="cpu")
        # Warm-up of both paths on 4 other ROIs (imports, first-call costs).
        warm = _rois(4, buffer_m)
        run_direct(
            build_request(warm, months=["2024-04"], checkpoint=ckpt, batch_size=batch_size),
            store=work / "warm-direct",
            staging_dir=work / "staging",
            backend=SyntheticProvider(seed=99),
            cache=work / "warm-chips",
            device="cpu",
        )
        embed_rois(**{**_flow_kwargs(warm, work, "warm", ckpt, 98, batch_size), "months": ["2024-04"]})

        t = time.perf_counter()
        direct = run_direct(
            req,
            store=work / "store-direct",
            staging_dir=work / "staging",
            backend=SyntheticProvider(seed=1),
            cache=work / "chips-direct",
            device="cpu",
        )
        t_direct = time.perf_counter() - t

        kwargs = _flow_kwargs(rois, work, "flow", ckpt, 2, batch_size)
        t = time.perf_counter()
        first = embed_rois(**kwargs)
        t_flow = time.perf_counter() - t

        t = time.perf_counter()
        rerun = embed_rois(**kwargs)
        t_rerun = time.perf_counter() - t

        t = time.perf_counter()
        warm_fetch = embed_rois(**{**kwargs, "store": str(work / "store-flow-2")})
        t_warm_fetch = time.perf_counter() - t
    _cleanup(work)
    assert direct["counts"]["written"] == n and first["counts"]["written"] == n, (direct, first)
    assert rerun["counts"]["skipped"] == n and warm_fetch["counts"]["written"] == n
    return {
        "rois": n,
        "buffer_m": buffer_m,
        "batch_size": batch_size,
        "direct_s": round(t_direct, 2),
        "flow_s": round(t_flow, 2),
        "overhead_ratio": round(t_flow / t_direct, 3),
        "rerun_same_store_s": round(t_rerun, 2),
        "rerun_fraction": round(t_rerun / t_flow, 3),
        "rerun_new_store_warm_fetch_s": round(t_warm_fetch, 2),
        "rerun_new_store_fraction": round(t_warm_fetch / t_flow, 3),
    }


def scale_one(n: int, buffer_m: float, batch_size: int) -> dict[str, Any]:
    """One flow run at ``n`` ROIs in this (fresh) process: wall time and peak RSS."""
    work = Path(tempfile.mkdtemp(prefix=f"bench-scale-{n}-"))
    _env(work)
    from prefect.testing.utilities import prefect_test_harness

    from rs_embed_core.pipeline import load_model_for
    from rs_embed_core.specs import SensorSpec

    ckpt = _checkpoint(work)
    t = time.perf_counter()
    load_model_for(SensorSpec(checkpoint=ckpt), device="cpu")  # torch/open_clip import + build: not flow cost
    model_load_s = time.perf_counter() - t
    rss_before = _peak_rss_mb()
    with prefect_test_harness(server_startup_timeout=120):
        from flows.embed import embed_rois

        t = time.perf_counter()
        out = embed_rois(**_flow_kwargs(_rois(n, buffer_m), work, "scale", ckpt, 3, batch_size))
        wall = time.perf_counter() - t
    _cleanup(work)
    assert out["counts"]["written"] == n, out
    return {
        "rois": n,
        "wall_s": round(wall, 2),
        "s_per_roi": round(wall / n, 4),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "rss_before_run_mb": round(rss_before, 1),
        "model_load_s_excluded": round(model_load_s, 2),
        "batches": out["batches"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_flow", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--overhead-rois", type=int, default=100)
    parser.add_argument("--buffer-m", type=float, default=2048.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "bench_flow.json"))
    parser.add_argument("--scale-one", type=int, default=None, help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--skip-overhead", action="store_true")
    args = parser.parse_args(argv)

    if args.scale_one is not None:
        print(json.dumps(scale_one(args.scale_one, args.buffer_m, args.batch_size)))
        return 0

    report: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "load_avg_start": os.getloadavg()}}
    ckpt_root = Path(tempfile.mkdtemp(prefix="bench-ckpt-"))
    os.environ["RS_EMBED_BENCH_CKPT"] = _checkpoint(ckpt_root)
    if not args.skip_overhead:
        report["overhead"] = overhead(args.overhead_rois, args.buffer_m, args.batch_size)
        print(json.dumps({"overhead": report["overhead"]}), flush=True)
    report["scaling"] = []
    for n in [int(s) for s in args.sizes.split(",") if s]:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.bench_flow",
                "--scale-one",
                str(n),
                "--buffer-m",
                str(args.buffer_m),
                "--batch-size",
                str(args.batch_size),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            report["scaling"].append({"rois": n, "error": proc.stderr[-2000:]})
        else:
            report["scaling"].append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(report["scaling"][-1]), flush=True)
    report["machine"]["load_avg_end"] = os.getloadavg()
    _cleanup(ckpt_root)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
