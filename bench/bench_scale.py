"""Scale-out benchmark: 1 vs 2 GPU-pool workers on the same work, and a 100k-ROI estimate.

Run: ``python -m bench.bench_scale`` (about 5-10 minutes on 2 CPU cores).

Measured here (everything on 127.0.0.1, CPU only):

* workers: a real ``prefect server``, a process pool ``rs-embed-gpu`` with the
  ``embed-batches-gpu`` deployment of deployments/prefect.yaml, and one ``embed-rois``
  run (``dispatch="deployment"``) over ``--rois`` ROIs of 2048 m (410 x 410 px) with
  ``--arch`` (default a random ViT-B-32: same cost as the real weights), first with one
  worker, then with two (``--limit 1`` each). Fetches are warmed by an unmeasured run
  first, so both measured runs do the same work: dispatch, child-run start-up, chip
  reads, forwards, staging, one commit. Wall time and the ratio are printed.
* per-entry costs: model forward + preprocessing per image on CPU (``embed_chips``,
  batch 8), reading one cached chip, staging one entry (write + read back), and
  writing + committing ``--s3-entries`` ViT-B-32-size entries to an Icechunk store on
  a moto S3 server (entries/s, and new objects per entry = PUT requests), plus a
  one-entry commit on S3.

Estimated (printed with every assumption): wall time and object-store request rate
of one monthly run of 100k ROIs on N GPUs, from the measured costs above plus the
Earth Engine fetch figures (1-3 s per chip, 40 concurrent requests) and an ASSUMED
GPU throughput (``--gpu-img-s``, default 1000 images/s per GPU for ViT-B-32 at 224 px
including preprocessing; not measured: no GPU here).

Prints a JSON report and writes it to ``--out`` (default ``bench/results/bench_scale.json``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).parent / "prefect")
MONTH = "2024-05"
PARENT = """
import json, sys, time
from flows.embed import embed_rois
params = json.loads(sys.argv[1])
t0 = time.perf_counter()
res = embed_rois(**params)
res["flow_wall_s"] = time.perf_counter() - t0
print("RESULT " + json.dumps(res, default=str), flush=True)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # a process group this script started
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _wait_health(url: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(url)


def _cli(args: list[str], env: dict[str, str]) -> None:
    out = subprocess.run([PREFECT, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    if out.returncode:
        raise RuntimeError(f"prefect {' '.join(args)}: {out.stdout}\n{out.stderr}")


def _rois(n: int) -> list[list[float]]:
    side = max(1, int(n**0.5) + 1)
    return [[2.0 + 0.05 * (i % side), 45.0 + 0.05 * (i // side), 2048.0] for i in range(n)]


# ---------------------------------------------------------------------------- 1 vs 2 workers


def measure_workers(work: Path, checkpoint: Path, n_rois: int, batch_size: int, batches_per_run: int) -> dict:
    """Wall time of one dispatched run with 1 and with 2 workers on the GPU pool."""
    port = _free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(work / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{work / 'prefect.db'}",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "HF_HUB_OFFLINE": "1",
        "RS_EMBED_WORKDIR": str(REPO),
        "RS_EMBED_GPU_DEVICES": "",
        "RS_EMBED_CACHE_DIR": str(work / "chips"),
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "0",
    }
    env.pop("PREFECT_API_URL", None)
    procs: list[subprocess.Popen] = []
    server = subprocess.Popen(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=(work / "server.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    procs.append(server)
    results: dict[str, Any] = {}
    try:
        _wait_health(f"http://127.0.0.1:{port}/api/health")
        env["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
        _cli(["work-pool", "create", "rs-embed-gpu", "--type", "process"], env)
        _cli(
            [
                "--no-prompt",
                "deploy",
                "--name",
                "embed-batches-gpu",
                "--prefect-file",
                str(REPO / "deployments" / "prefect.yaml"),
            ],
            env,
        )
        workers: list[subprocess.Popen] = []

        def start_worker(name: str) -> None:
            w = subprocess.Popen(
                [
                    PREFECT,
                    "worker",
                    "start",
                    "--pool",
                    "rs-embed-gpu",
                    "--type",
                    "process",
                    "--name",
                    name,
                    "--limit",
                    "1",
                ],
                env=env,
                cwd=work,
                stdout=(work / f"worker-{name}.log").open("w"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            workers.append(w)
            procs.append(w)

        def run(label: str) -> dict[str, Any]:
            params = {
                "rois": _rois(n_rois),
                "months": [MONTH],
                "store": str(work / f"store-{label}"),
                "staging_dir": str(work / f"staging-{label}"),
                "backend": "synthetic",
                "checkpoint": str(checkpoint),
                "device": "cpu",
                "batch_size": batch_size,
                "batches_per_run": batches_per_run,
                "dispatch": "deployment",
                "cache_dir": str(work / "chips"),
            }
            t0 = time.perf_counter()
            out = subprocess.run(
                [sys.executable, "-c", PARENT, json.dumps(params)],
                env=env,
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=1800,
            )
            wall = time.perf_counter() - t0
            if out.returncode or "RESULT " not in out.stdout:
                raise RuntimeError(f"run {label} failed:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}")
            res = json.loads(out.stdout.split("RESULT ", 1)[1].splitlines()[0])
            return {"wall_s": round(wall, 2), "flow_wall_s": round(res["flow_wall_s"], 2), "written": res["written"]}

        start_worker("w1")
        results["warmup_1_worker"] = run("warmup")  # fills the chip cache and the fetch cache records
        results["1_worker"] = run("w1")
        start_worker("w2")
        time.sleep(3)  # let the second worker register before the run
        results["2_workers"] = run("w2")
    finally:
        for p in reversed(procs):
            _stop(p)
    n_batches = math.ceil(n_rois / batch_size)
    results.update(
        rois=n_rois,
        batch_size=batch_size,
        batches=n_batches,
        child_runs=math.ceil(n_batches / batches_per_run),
        ratio_1_over_2=round(results["1_worker"]["flow_wall_s"] / results["2_workers"]["flow_wall_s"], 3),
        cpu_cores=os.cpu_count(),
    )
    return results


# ---------------------------------------------------------------------------- per-entry costs


def measure_costs(work: Path, checkpoint: Path, s3_entries: int) -> dict[str, Any]:
    from rs_embed_core.api import embed_chips
    from rs_embed_core.cache import ChipCache, fetch_chip_ref, load_chip
    from rs_embed_core.models import load_model
    from rs_embed_core.providers.synthetic import SyntheticProvider
    from rs_embed_core.specs import OutputSpec, PointBuffer, SensorSpec, TemporalSpec
    from rs_embed_core.staging import StagingArea

    out: dict[str, Any] = {}
    provider = SyntheticProvider(seed=1)
    sensor = SensorSpec(checkpoint=str(checkpoint))
    window = TemporalSpec.parse_month(MONTH) if hasattr(TemporalSpec, "parse_month") else TemporalSpec.month(2024, 5)
    rois = [PointBuffer(lon, lat, buf) for lon, lat, buf in _rois(16)]
    cache = ChipCache(work / "cost-chips")
    t0 = time.perf_counter()
    refs = [fetch_chip_ref(provider, r, window, sensor, cache) for r in rois]
    out["synthetic_fetch_ms_per_chip"] = round(1000 * (time.perf_counter() - t0) / len(rois), 1)
    t0 = time.perf_counter()
    chips = [load_chip(ref.to_dict()) for ref in refs]
    out["chip_cache_read_ms_per_chip"] = round(1000 * (time.perf_counter() - t0) / len(chips), 2)
    out["chip_MB"] = round(Path(refs[0].path).stat().st_size / 1e6, 3)

    t0 = time.perf_counter()
    model = load_model("remoteclip", checkpoint=str(checkpoint), device="cpu")
    out["model_load_s"] = round(time.perf_counter() - t0, 2)
    kw = {"sensor": sensor, "output": OutputSpec.grid(), "input_prep": "resize"}
    embed_chips(model, chips[:8], rois=rois[:8], temporals=[window] * 8, **kw)  # warm-up
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        embs = embed_chips(model, chips[:8], rois=rois[:8], temporals=[window] * 8, **kw)
        times.append((time.perf_counter() - t0) / 8)
    out["cpu_embed_ms_per_image_batch8"] = round(1000 * statistics.median(times), 1)
    out["model_arch"] = model.meta.get("model_arch")

    staging = StagingArea(work / "cost-staging")
    t0 = time.perf_counter()
    staged = staging.stage("ab" * 32, embs)
    t1 = time.perf_counter()
    for ref in staged:
        staging.load(ref)
    t2 = time.perf_counter()
    out["staging_write_ms_per_entry"] = round(1000 * (t1 - t0) / len(embs), 2)
    out["staging_read_ms_per_entry"] = round(1000 * (t2 - t1) / len(embs), 2)
    out["staged_KB_per_entry"] = round(
        sum(p.stat().st_size for p in staging.batch_dir("ab" * 32).iterdir()) / len(embs) / 1e3, 1
    )
    out.update(measure_s3_store(s3_entries))
    return out


def measure_s3_store(n: int) -> dict[str, Any]:
    """Write + commit n ViT-B-32-size entries to an Icechunk store on a moto S3 server; count new objects."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    from bench.bench_store import make_entries
    from rs_embed_core.store import EmbeddingStore

    class _Count(logging.Handler):
        """Counts the S3 requests the moto server logs (one werkzeug access-log line each)."""

        def __init__(self) -> None:
            super().__init__()
            self.by_method: dict[str, int] = {}

        def emit(self, record: logging.LogRecord) -> None:
            for method in ("GET", "PUT", "HEAD", "POST", "DELETE"):
                if f'"{method} ' in record.getMessage():
                    self.by_method[method] = self.by_method.get(method, 0) + 1

    counter = _Count()
    access_log = logging.getLogger("werkzeug")
    access_log.addHandler(counter)
    access_log.setLevel(logging.INFO)
    access_log.propagate = False  # count, do not print
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in ("RS_EMBED_S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ.update(
        {"RS_EMBED_S3_ENDPOINT": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    )
    os.environ.setdefault("AWS_REGION", "us-east-1")
    s3 = boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="t"
    )
    s3.create_bucket(Bucket="bench")

    def objects() -> tuple[int, int]:
        count = size = 0
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket="bench"):
            for obj in page.get("Contents", []):
                count += 1
                size += obj["Size"]
        return count, size

    try:
        store = EmbeddingStore.open("s3://bench/store")
        rng = np.random.default_rng(0)
        entries = make_entries(n, "2026-11", rng)
        c0, b0 = objects()
        r0 = dict(counter.by_method)
        t0 = time.perf_counter()
        with store.writer() as w:
            for e in entries:
                w.write(e)
            t1 = time.perf_counter()
            w.commit("bench s3")
        t2 = time.perf_counter()
        r1 = dict(counter.by_method)
        c1, b1 = objects()
        one = make_entries(1, "2026-12", rng, roi_offset=n + 1)[0]
        commits = []
        for _ in range(3):
            t3 = time.perf_counter()
            with store.writer() as w:
                w.write(one)
                w.commit("one entry")
            commits.append(time.perf_counter() - t3)
        c2, _ = objects()
    finally:
        server.stop()
        access_log.removeHandler(counter)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return {
        "s3_entries": n,
        "s3_write_commit_s": round(t2 - t0, 2),
        "s3_commit_s": round(t2 - t1, 2),
        "s3_entries_per_s": round(n / (t2 - t0), 1),
        "s3_new_objects": c1 - c0,
        "s3_objects_per_entry": round((c1 - c0) / n, 3),
        "s3_requests_per_entry": {m: round((r1.get(m, 0) - r0.get(m, 0)) / n, 3) for m in r1},
        "s3_KB_per_entry": round((b1 - b0) / n / 1e3, 1),
        "s3_one_entry_commit_ms": round(1000 * statistics.median(commits), 1),
        "s3_objects_per_one_entry_commit": round((c2 - c1) / 3, 1),
    }


# ---------------------------------------------------------------------------- estimate


def estimate(costs: dict[str, Any], workers: dict[str, Any] | None, args: argparse.Namespace) -> dict[str, Any]:
    """Wall time and object-store request rate of one month of ``args.n_rois`` ROIs on N GPUs."""
    n = args.n_rois
    # Fetch: Earth Engine, 1-3 s per chip, at most 40 requests in flight (the default quota).
    fetch_s = {label: n * t / args.ee_concurrency for label, t in (("best", 1.0), ("worst", 3.0))}
    # Inference per GPU: the ASSUMED throughput, or reading chips from the shared cache, whichever is slower.
    read_img_s = 1000.0 / max(costs["chip_cache_read_ms_per_chip"], 1e-3) * args.reader_threads
    per_gpu_img_s = min(args.gpu_img_s, read_img_s)
    # A child run (one process per embed-batches run) pays process start + model load once.
    child_overhead_s = args.child_overhead_s
    if workers:
        # Measured: the 1-worker run's wall time less its CPU forwards, per child run (process start,
        # imports, model load, chip reads, staging, polling). A GPU child pays the same start-up.
        w1 = workers["1_worker"]["flow_wall_s"] - workers["rois"] * costs["cpu_embed_ms_per_image_batch8"] / 1000
        child_overhead_s = max(child_overhead_s, w1 / max(workers["child_runs"], 1))
    entries_per_child = args.batch_size * args.batches_per_run
    child_runs = math.ceil(n / entries_per_child)
    # Commit: the parent writes every staged entry (read back from staging) and commits once.
    commit_s = n / costs["s3_entries_per_s"] + n * costs["staging_read_ms_per_entry"] / 1000
    per_entry = costs.get("s3_requests_per_entry") or {"PUT": costs["s3_objects_per_entry"]}
    puts = n * per_entry.get("PUT", costs["s3_objects_per_entry"])
    gets = n * (per_entry.get("GET", 0) + per_entry.get("HEAD", 0))
    rows = []
    for gpus in args.gpus:
        infer_s = n / (per_gpu_img_s * gpus) + math.ceil(child_runs / gpus) * child_overhead_s
        for label in ("best", "worst"):
            total = fetch_s[label] + infer_s + commit_s
            rows.append(
                {
                    "gpus": gpus,
                    "ee_case": label,
                    "fetch_h": round(fetch_s[label] / 3600, 2),
                    "inference_h": round(infer_s / 3600, 3),
                    "commit_h": round(commit_s / 3600, 3),
                    "total_h": round(total / 3600, 2),
                }
            )
    return {
        "n_rois": n,
        "assumptions": {
            "ee_s_per_chip": [1.0, 3.0],
            "ee_concurrency": args.ee_concurrency,
            "gpu_img_s_ASSUMED": args.gpu_img_s,
            "chip_reader_threads": args.reader_threads,
            "child_overhead_s": round(child_overhead_s, 1),
            "entries_per_child_run": entries_per_child,
            "stages_sequential": True,
        },
        "rows": rows,
        "child_runs": child_runs,
        "object_store": {
            "commit_PUTs": int(puts),
            "commit_PUT_per_s": round(puts / max(commit_s, 1e-9), 1),
            "commit_GET_HEAD": int(gets),
            "commit_GET_HEAD_per_s": round(gets / max(commit_s, 1e-9), 1),
            "stored_GB": round(n * costs["s3_KB_per_entry"] / 1e6, 2),
            "chip_cache_GB": round(n * costs["chip_MB"] / 1e3, 1),
            "staging_GB": round(n * costs["staged_KB_per_entry"] / 1e6, 1),
        },
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="ViT-B-32", help="dev checkpoint architecture (ViT-B-32 or tiny)")
    parser.add_argument("--rois", type=int, default=64, help="ROIs in the 1 vs 2 worker runs")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches-per-run", type=int, default=2)
    parser.add_argument("--s3-entries", type=int, default=300)
    parser.add_argument("--skip-workers", action="store_true", help="only per-entry costs and the estimate")
    parser.add_argument("--n-rois", type=int, default=100_000, help="ROIs per month in the estimate")
    parser.add_argument("--gpus", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4, 8])
    parser.add_argument("--gpu-img-s", type=float, default=1000.0, help="ASSUMED images/s per GPU (not measured)")
    parser.add_argument("--ee-concurrency", type=int, default=40)
    parser.add_argument("--reader-threads", type=int, default=4)
    parser.add_argument("--child-overhead-s", type=float, default=0.0, help="floor for per-child-run start-up")
    parser.add_argument("--est-batch-size", dest="est_batch", type=int, default=256)
    parser.add_argument("--est-batches-per-run", dest="est_bpr", type=int, default=40)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "bench_scale.json"))
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from rs_embed_core.models import make_dev_checkpoint

    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="rs-embed-bench-scale-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        checkpoint = make_dev_checkpoint(work / "ckpt", arch=args.arch, seed=0)
        report["checkpoint_make_s"] = round(time.perf_counter() - t0, 1)
        report["costs"] = measure_costs(work, checkpoint, args.s3_entries)
        print(json.dumps({"costs": report["costs"]}, indent=1), flush=True)
        if not args.skip_workers:
            report["workers"] = measure_workers(work, checkpoint, args.rois, args.batch_size, args.batches_per_run)
            print(json.dumps({"workers": report["workers"]}, indent=1), flush=True)
    est_args = argparse.Namespace(**{**vars(args), "batch_size": args.est_batch, "batches_per_run": args.est_bpr})
    report["estimate"] = estimate(report["costs"], report.get("workers"), est_args)
    print(json.dumps({"estimate": report["estimate"]}, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
