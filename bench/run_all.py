"""Every benchmark behind one command (``make bench``), summarised in one table.

Each ``bench/bench_*.py`` runs in its own subprocess (fresh interpreter, so peak RSS
and import costs do not mix) with the reduced sizes below, chosen so the whole run
takes about 10-12 minutes on a 2-core machine. Each script prints one machine-readable
``BENCH_JSON {...}`` line (``bench_flow`` writes its JSON report to ``--out``); this
script reads those and prints one markdown table in which every figure is a ratio or
stands beside its reference measured in the same run, then the machine it ran on.

Reduced sizes (defaults of the scripts in brackets):

* bench_model: 32 chips of 410 x 410 px, random ViT-B-32, best of 3 rounds [4].
* bench_fetch: 12 chips of 410 x 410 px [24], fake Earth Engine latency 0 and 100 ms
  [0, 250], 1 and 8 threads [1, 4, 8].
* bench_store: 300 ViT-B/32-size entries per dtype [1000]; growth to 3 x 1000 entries
  [10 x 1000].
* bench_search: 10k and 100k vectors [up to 1M], 10 repeats [30], a 1000-entry store
  [10k], no text-encoder timing.
* bench_flow: overhead at 50 ROIs [100]; scaling at 10 / 100 / 1000 ROIs (as asked);
  224 x 224 px chips (1120 m buffer, the CLI default: one ViT input, no resampling)
  [410 x 410 px], batch 32; tiny random checkpoint (orchestration, not model, cost).

Usage: ``python -m bench.run_all [--only model,fetch,...] [--json OUT]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MARK = "BENCH_JSON "

STEPS: dict[str, list[str]] = {
    "model": ["bench.bench_model", "--images", "32", "--repeats", "3"],
    "fetch": ["bench.bench_fetch", "--n", "12", "--latency-ms", "0", "100", "--workers", "1", "8"],
    "store": ["bench.bench_store", "--entries", "300", "--months", "3"],
    "search": [
        "bench.bench_search",
        "--sizes",
        "10000",
        "100000",
        "--repeats",
        "10",
        "--store-entries",
        "1000",
        "--store-months",
        "4",
        "--no-text",
    ],
    "flow": [
        "bench.bench_flow",
        "--sizes",
        "10,100,1000",
        "--overhead-rois",
        "50",
        "--buffer-m",
        "1120",
        "--batch-size",
        "32",
    ],
}
TIMEOUT_S = {"model": 300, "fetch": 180, "store": 300, "search": 180, "flow": 900}


def machine() -> dict[str, Any]:
    """nproc, CPU model, RAM, Python and load average (read from /proc where there is one)."""
    cpu = platform.processor() or platform.machine()
    mem_gib = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram_gib": mem_gib,
        "python": platform.python_version(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def run_step(name: str, args: list[str], work: Path) -> tuple[dict[str, Any] | None, float, str]:
    """Run one benchmark module; returns (its JSON summary or None, seconds, error text)."""
    cmd = [sys.executable, "-m", *args]
    out_file = work / f"{name}.json"
    if name == "flow":
        cmd += ["--out", str(out_file)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    print(f"[bench] {name}: {' '.join(args)}", file=sys.stderr, flush=True)
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S[name])
    except subprocess.TimeoutExpired:
        return None, time.perf_counter() - t0, f"timed out after {TIMEOUT_S[name]} s"
    seconds = time.perf_counter() - t0
    (work / f"{name}.log").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    if proc.returncode != 0:
        return None, seconds, f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:] or ''}"
    if name == "flow":
        return json.loads(out_file.read_text()), seconds, ""
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
    if not lines:
        return None, seconds, "no BENCH_JSON line in its output"
    return json.loads(lines[-1][len(MARK) :]), seconds, ""


# -- the table ---------------------------------------------------------------------------------


def _f(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:,.{digits}f}"


def rows_model(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    out = []
    for t in r["throughput"]:
        out.append(
            (
                "model vs pipeline",
                f"API images/s, batch {t['batch']} (ViT-B-32, 410 px chips, CPU)",
                _f(t["api_ips"]),
                f"bare forward {_f(t['bare_ips'])} img/s; ratio {t['api_ips'] / t['bare_ips']:.3f}",
            )
        )
    p = r["preprocess_ms"]
    out.append(
        (
            "preprocessing",
            "batched tensor fallback, ms/image (410 px -> 224)",
            _f(p["fallback"]),
            f"PIL pipeline {_f(p['pil'])} ms; PIL/fallback {p['pil'] / p['fallback']:.2f}x",
        )
    )
    out.append(("model vs pipeline", "peak RSS of the model benchmark, MiB", _f(r["peak_rss_mib"], 0), ""))
    return out


def rows_fetch(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rows = r["rows"]
    hit = next(x for x in rows if x["what"].startswith("cache hit:"))
    miss = next(x for x in rows if x["what"].startswith("cache miss"))
    direct = [x for x in rows if x["what"].startswith("fetch, no cache")]
    chip = next(x for x in rows if x["what"] == "chip")
    out = [
        (
            "cache hit vs fetch",
            f"cache hit (read + sha256 + decode), median ms, {chip['mib']} MiB chip",
            _f(hit["median_ms"]),
            f"miss (fetch + write) {_f(miss['median_ms'])} ms; miss/hit {miss['median_ms'] / hit['median_ms']:.1f}x",
        )
    ]
    for d in direct:
        out.append(
            (
                "cache hit vs fetch",
                f"fetch without cache, fake EE latency {d['latency_ms']:g} ms, median ms",
                _f(d["median_ms"]),
                f"fetch/hit {d['median_ms'] / hit['median_ms']:.1f}x",
            )
        )
    par = [x for x in rows if x["what"].startswith("parallel fetch")]
    for lat in sorted({x["latency_ms"] for x in par}):
        ws = sorted((x for x in par if x["latency_ms"] == lat), key=lambda x: x["workers"])
        if len(ws) >= 2:
            out.append(
                (
                    "cache hit vs fetch",
                    f"parallel misses, {ws[-1]['workers']} threads, latency {lat:g} ms, chips/s",
                    _f(ws[-1]["chips_per_s"]),
                    f"1 thread {_f(ws[0]['chips_per_s'])} chips/s; speed-up {ws[-1]['chips_per_s'] / ws[0]['chips_per_s']:.2f}x",
                )
            )
    return out


def rows_store(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    out = []
    by = {w["dtype"]: w for w in r["write"]}
    f32, f16 = by.get("float32"), by.get("float16")
    for w in (f32, f16):
        if w:
            out.append(
                (
                    "store write",
                    f"{w['dtype']}: {w['entries']} ViT-B/32 entries, one commit: entries/s (MB/s of values)",
                    f"{_f(w['entries_per_s'], 1)} ({_f(w['MB_per_s'], 1)} MB/s)",
                    f"compression {w['compression_ratio']:.2f}x of {w['dtype']}; "
                    f"{w['compression_ratio_vs_float32']:.2f}x of float32 (Gaussian noise: a floor)",
                )
            )
    if f32 and f16:
        out.append(
            (
                "store write",
                "float16 vs float32 write throughput (entries/s)",
                f"{f16['entries_per_s'] / f32['entries_per_s']:.2f}x",
                "",
            )
        )
    g = r["growth"]
    commit = g["one_entry_commit_ms_at"]
    last = max(commit, key=lambda k: int(k)) if commit else None
    out.append(
        (
            "store read",
            f"read one entry's grid, ms ({g['entries_total']} entries, float16)",
            _f(g["read_one_entry_grid_ms"]),
            f"open dataset {_f(g['open_dataset_ms'], 1)} ms; one ROI's {g['roi_series_months']}-month series "
            f"{_f(g['read_roi_series_ms'])} ms",
        )
    )
    if last:
        out.append(
            (
                "store write",
                f"one-entry commit at {last} entries, ms",
                _f(commit[last], 1),
                f"1000-entry batch commit {g['batch_commit_1000_entries_s'][-1]} s "
                f"({1000 * g['batch_commit_1000_entries_s'][-1] / 1000:.1f} ms/entry)",
            )
        )
    out.append(
        (
            "store read",
            f"entry_digests over {g['entries_total']} entries (skip planning), s",
            _f(g["entry_digests_10k_s"]),
            f"{1000 * g['entry_digests_10k_s'] / g['entries_total']:.3f} ms/entry",
        )
    )
    return out


def rows_search(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    out = []
    mem = r["memory"]
    for m in mem:
        out.append(
            (
                "search",
                f"caption/image search top-20 over {m['n']:,} 512-d vectors, median ms",
                _f(1000 * m["median_s"]),
                f"matvec alone {_f(1000 * m['matvec_median_s'])} ms; batched 16 {_f(1000 * m['batch16_per_query_s'])} ms/query",
            )
        )
    s = r.get("store")
    if s:
        out.append(
            (
                "search",
                f"load {s['entries']:,} vectors from the store, s",
                _f(s["no_cache_s"]),
                f"from the vector cache {_f(1000 * s['from_cache_s'])} ms; {s['no_cache_s'] / s['from_cache_s']:.0f}x",
            )
        )
    return out


def rows_flow(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    out = []
    o = r.get("overhead")
    if o:
        out.append(
            (
                "orchestration",
                f"Prefect flow vs core pipeline, {o['rois']} ROIs ({o['buffer_m']:g} m buffer), s",
                _f(o["flow_s"]),
                f"direct {_f(o['direct_s'])} s; overhead ratio {o['overhead_ratio']:.3f}",
            )
        )
        out.append(
            (
                "cached rerun",
                "rerun, same store (all identical: skipped), fraction of first run",
                f"{o['rerun_fraction']:.3f}",
                f"{_f(o['rerun_same_store_s'])} s vs {_f(o['flow_s'])} s",
            )
        )
        out.append(
            (
                "cached rerun",
                "rerun into a new store (fetches cached, inference + commit redone), fraction",
                f"{o['rerun_new_store_fraction']:.3f}",
                f"{_f(o['rerun_new_store_warm_fetch_s'])} s vs {_f(o['flow_s'])} s",
            )
        )
    scaling = [s for s in r.get("scaling", []) if "error" not in s]
    base = scaling[0] if scaling else None
    for s in scaling:
        ref = ""
        if base and s is not base:
            ref = (
                f"x{s['rois'] / base['rois']:g} ROIs: time x{s['wall_s'] / base['wall_s']:.1f}, "
                f"RSS x{s['peak_rss_mb'] / base['peak_rss_mb']:.2f} (vs {base['rois']} ROIs)"
            )
        out.append(
            (
                "scaling",
                f"flow run of {s['rois']} ROIs: wall s (s/ROI), peak RSS MB",
                f"{_f(s['wall_s'], 1)} ({s['s_per_roi']:.3f}), {_f(s['peak_rss_mb'], 0)}",
                ref or f"RSS before the run {_f(s['rss_before_run_mb'], 0)} MB",
            )
        )
    for s in r.get("scaling", []):
        if "error" in s:
            out.append(("scaling", f"flow run of {s['rois']} ROIs", "FAILED", s["error"].splitlines()[-1][:120]))
    return out


ROWS = {"model": rows_model, "fetch": rows_fetch, "store": rows_store, "search": rows_search, "flow": rows_flow}


def table(results: dict[str, Any]) -> str:
    lines = ["| area | figure | value | reference / ratio (same run) |", "|---|---|---|---|"]
    for name, fn in ROWS.items():
        res = results.get(name)
        if not res or res.get("error"):
            err = (res or {}).get("error", "not run")
            lines.append(f"| {name} | benchmark did not finish | n/a | {err} |")
            continue
        try:
            rows = fn(res["data"])
        except (KeyError, TypeError, ValueError, ZeroDivisionError, StopIteration) as exc:
            rows = [(name, "could not read the results", "n/a", f"{type(exc).__name__}: {exc}")]
        for area, figure, value, ref in rows:
            lines.append(f"| {area} | {figure} | {value} | {ref} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}")
    ap.add_argument("--json", type=Path, default=None, help="also write every result here")
    args = ap.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    unknown = set(names) - set(STEPS)
    if unknown:
        ap.error(f"unknown benchmark(s) {sorted(unknown)}; choose from {', '.join(STEPS)}")
    start = machine()
    t0 = time.perf_counter()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="rs-embed-bench-") as tmp:
        for name in names:
            data, seconds, error = run_step(name, STEPS[name], Path(tmp))
            results[name] = {"data": data, "seconds": round(seconds, 1), "error": error or None}
            print(f"[bench] {name}: {seconds:.0f} s{' ERROR ' + error if error else ''}", file=sys.stderr, flush=True)
    total = time.perf_counter() - t0
    end = machine()
    print(table(results))
    print()
    print(
        f"Machine: {start['nproc']} CPUs ({start['cpu']}), {start['ram_gib']} GiB RAM, Python {start['python']}; "
        f"load average {start['loadavg'][0]} at start, {end['loadavg'][0]} at end; total {total / 60:.1f} min "
        f"({', '.join(f'{n} {r["seconds"]:.0f} s' for n, r in results.items())})."
    )
    if args.json:
        args.json.write_text(json.dumps({"machine": start, "results": results, "total_s": total}, indent=1))
    return 1 if any(r["error"] for r in results.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
