"""Fetch benchmark: chip-cache hit vs a fetch served by the local fake Earth Engine.

``python -m bench.bench_fetch [--n 24] [--buffer-m 2048] [--latency-ms 0 250]``

Every fetch runs the REAL ``ee`` client (expression building, serialisation, HTTP
request objects, NPY decoding) against tests/fake_ee.py, so the "miss" figures are the
client-side cost plus the simulated service latency, not Earth Engine's real compute
time (typically 1-3 s per 410 x 410 chip). Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fake_ee import FakeEarthEngine, fake_credentials  # noqa: E402

from rs_embed_core.cache import ChipCache, fetch_chip  # noqa: E402
from rs_embed_core.providers.gee import GeeProvider  # noqa: E402
from rs_embed_core.specs import PointBuffer, SensorSpec, TemporalSpec  # noqa: E402

JUNE = TemporalSpec.month(2024, 6)
SENSOR = SensorSpec()


def _rois(n: int, buffer_m: float, offset: int = 0) -> list[PointBuffer]:
    # Distinct ROIs in one UTM zone (distinct cache keys).
    return [PointBuffer(9.0 + 0.01 * (i + offset), 45.4, buffer_m) for i in range(n)]


def _ms(values: list[float]) -> dict[str, float]:
    return {
        "median_ms": round(1000 * statistics.median(values), 3),
        "p90_ms": round(1000 * sorted(values)[int(0.9 * (len(values) - 1))], 3),
        "n": len(values),
    }


def run(n: int, buffer_m: float, latencies_ms: list[float], workers: list[int]) -> list[dict]:
    results = []
    fake = FakeEarthEngine()
    provider = GeeProvider(project="bench", http_transport=fake, credentials=fake_credentials(), client_retries=0)
    with tempfile.TemporaryDirectory() as tmp:
        cache = ChipCache(Path(tmp) / "c0")
        rois = _rois(n, buffer_m)
        provider.fetch(rois[0], JUNE, SENSOR)  # initialise ee once (discovery + algorithm list)
        shape = None
        for lat_ms in latencies_ms:
            fake.latency_s = lat_ms / 1000.0
            t_direct = []
            for roi in rois:
                t0 = time.perf_counter()
                chip = provider.fetch(roi, JUNE, SENSOR)
                t_direct.append(time.perf_counter() - t0)
                shape = chip.dn.shape
            results.append({"what": "fetch, no cache (fake transport)", "latency_ms": lat_ms, **_ms(t_direct)})
        fake.latency_s = 0.0
        t_miss, t_hit = [], []
        for roi in rois:
            t0 = time.perf_counter()
            fetch_chip(provider, roi, JUNE, SENSOR, cache=cache)
            t_miss.append(time.perf_counter() - t0)
        for roi in rois:
            t0 = time.perf_counter()
            fetch_chip(provider, roi, JUNE, SENSOR, cache=cache)
            t_hit.append(time.perf_counter() - t0)
        before = len(fake.requests)
        for roi in rois:
            fetch_chip(provider, roi, JUNE, SENSOR, cache=cache)
        assert len(fake.requests) == before, "cache hits must not reach the service"
        results.append({"what": "cache miss: fetch + write (latency 0)", **_ms(t_miss)})
        results.append({"what": "cache hit: read + sha256 verify + decode", **_ms(t_hit)})
        results.append(
            {"what": "chip", "shape": list(shape or ()), "mib": round(3 * (2 * buffer_m / 10) ** 2 * 2 / 2**20, 2)}
        )

        for lat_ms in latencies_ms:
            fake.latency_s = lat_ms / 1000.0
            for k, w in enumerate(workers):
                wc = ChipCache(Path(tmp) / f"p{lat_ms}-{w}")
                batch = _rois(n, buffer_m, offset=1000 * (k + 1))
                t0 = time.perf_counter()
                with ThreadPoolExecutor(max_workers=w) as pool:
                    list(pool.map(lambda r, c=wc: fetch_chip(provider, r, JUNE, SENSOR, cache=c), batch))
                dt_s = time.perf_counter() - t0
                results.append(
                    {
                        "what": "parallel fetch through the cache (misses), threads",
                        "latency_ms": lat_ms,
                        "workers": w,
                        "chips": n,
                        "seconds": round(dt_s, 3),
                        "chips_per_s": round(n / dt_s, 2),
                    }
                )
        # Hits in parallel, for comparison.
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=workers[-1]) as pool:
            list(pool.map(lambda r: fetch_chip(provider, r, JUNE, SENSOR, cache=cache), rois))
        dt_s = time.perf_counter() - t0
        results.append(
            {"what": "parallel cache hits", "workers": workers[-1], "chips": n, "chips_per_s": round(n / dt_s, 1)}
        )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_fetch", description=__doc__)
    parser.add_argument("--n", type=int, default=24, help="chips per measurement")
    parser.add_argument("--buffer-m", type=float, default=2048.0, help="ROI half-side (2048 m -> 410 x 410 px)")
    parser.add_argument("--latency-ms", type=float, nargs="+", default=[0.0, 250.0], help="simulated service time")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4, 8])
    args = parser.parse_args(argv)
    rows = run(args.n, args.buffer_m, args.latency_ms, args.workers)
    for row in rows:
        print(json.dumps(row))
    print("BENCH_JSON " + json.dumps({"rows": rows}))  # one machine-readable line for bench.run_all
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
