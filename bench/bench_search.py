"""Benchmark of caption/image search: brute-force cosine on CPU, and loading vectors from a store.

Run from the repository root::

    python -m bench.bench_search                    # 10k, 100k, 1M in memory; a 10k-entry store
    python -m bench.bench_search --sizes 10000 100000 --store-entries 2000

What it measures (numbers are printed, nothing is asserted):

1. In memory: ``cosine_top_k`` (the ranking ``text_search`` runs) over N unit 512-d
   float32 vectors (ViT-B/32's joint space), top 20: latency per query (median, p95),
   the matrix-vector product alone, a batch of 16 queries, and memory (the vectors and
   the peak extra allocation of one query, from tracemalloc).
2. Text encoding of one caption with the real ViT-B/32 text tower (random weights,
   built by open_clip; the speed does not depend on the weights).
3. From a store: a real local store with ``--store-entries`` entries (ROIs x monthly
   commits) whose image embeddings are 512-d; the token grid is 4 x 1 x 1 to keep the
   build fast, which does not change the cost measured here (one chunk per entry per
   array, whatever the grid size). Times ``load_entry_vectors`` without cache, with the
   per-snapshot cache being written, and from the cache.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
import tracemalloc
from typing import Any

import numpy as np

from rs_embed_core.search import cosine_top_k, load_entry_vectors

DIM = 512
K = 20


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


def _unit_rows(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, DIM), np.float32)
    step = 100_000
    for s in range(0, n, step):  # in blocks: no float64 temporary of the whole matrix
        block = rng.standard_normal((min(step, n - s), DIM), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[s : s + step] = block
    return out


def _timeit(fn: Any, repeats: int) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def bench_memory(sizes: list[int], repeats: int) -> dict[int, dict[str, float]]:
    print(f"== in-memory brute force: {DIM}-d float32 unit vectors, top {K}, {os.cpu_count()} CPUs ==")
    out = {}
    queries = _unit_rows(16, seed=99)
    for n in sizes:
        t0 = time.perf_counter()
        vectors = _unit_rows(n, seed=n)
        made = time.perf_counter() - t0
        q = queries[0]
        full = _timeit(lambda v=vectors, q=q: cosine_top_k(v, q, K), repeats)
        matvec = _timeit(lambda v=vectors, q=q: v @ q, repeats)
        batch = _timeit(lambda v=vectors: np.argpartition(v @ queries.T, -K, axis=0)[-K:], max(3, repeats // 5))
        tracemalloc.start()
        cosine_top_k(vectors, q, K)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        med, p95 = statistics.median(full), sorted(full)[int(0.95 * (len(full) - 1))]
        res = {
            "n": n,
            "vectors_mb": vectors.nbytes / 1e6,
            "query_peak_extra_mb": peak / 1e6,
            "median_s": med,
            "min_s": min(full),
            "p95_s": p95,
            "matvec_median_s": statistics.median(matvec),
            "batch16_per_query_s": statistics.median(batch) / 16,
        }
        out[n] = res
        print(
            f"N={n:>9,}: vectors {res['vectors_mb']:.1f} MB (made in {made:.1f} s); query top-{K}: "
            f"min {_ms(min(full))}, median {_ms(med)}, p95 {_ms(p95)} "
            f"(matvec alone: min {_ms(min(matvec))}, median {_ms(res['matvec_median_s'])}); "
            f"16 queries as one matmul + top-{K}: {_ms(res['batch16_per_query_s'])}/query; "
            f"peak extra per query {res['query_peak_extra_mb']:.2f} MB"
        )
        del vectors
    return out


def bench_text_encoder(repeats: int) -> float | None:
    print("== text encoding (ViT-B-32 text tower, random weights, CPU) ==")
    try:
        import open_clip
        import torch

        from rs_embed_core.models.remoteclip import quiet_build
    except ImportError as exc:  # pragma: no cover
        print(f"skipped: {exc}")
        return None
    with quiet_build():
        model = open_clip.create_model("ViT-B-32", pretrained=None)
    model.eval()
    tok = open_clip.get_tokenizer("ViT-B-32")

    def encode() -> Any:
        with torch.inference_mode():
            return model.encode_text(tok(["an airport with two runways"]), normalize=True)

    times = _timeit(encode, repeats)
    med = statistics.median(times)
    print(
        f"one caption: min {_ms(min(times))}, median {_ms(med)} over {repeats} runs "
        f"(torch threads: {torch.get_num_threads()})"
    )
    return med


def _build_store(location: str, n_rois: int, n_months: int) -> float:
    import xarray as xr

    from rs_embed_core.embedding import Embedding
    from rs_embed_core.store import EmbeddingStore

    rng = np.random.default_rng(0)
    store = EmbeddingStore.open(location)
    grid = xr.DataArray(np.zeros((4, 1, 1), np.float32), dims=("dim", "y", "x"))
    t0 = time.perf_counter()
    for m in range(n_months):
        month = f"{2020 + m // 12}-{m % 12 + 1:02d}-01"
        with store.writer() as w:  # one commit per month, as the monthly refresh does
            for r in range(n_rois):
                lon, lat = -10 + (r % 200) * 0.05, 40 + (r // 200) * 0.05
                meta = {
                    "roi_id": f"roi-{r:06d}",
                    "time": month,
                    "roi": {"type": "PointBuffer", "lon": lon, "lat": lat, "buffer_m": 2048.0, "label": f"r{r}"},
                    "grid_crs": "EPSG:32630",
                    "grid_transform": [4096.0, 0.0, 400000.0 + r * 5000, 0.0, -4096.0, 5000000.0],
                    "model": "remoteclip",
                    "checkpoint": "MVRL/remote-clip-vit-base-patch32",
                    "checkpoint_sha256": "ab" * 32,
                }
                image = rng.standard_normal(DIM, dtype=np.float32)
                w.write(
                    Embedding(data=None, meta=meta, grid=grid, pooled=np.ones(4, np.float32), image_embedding=image)
                )
            w.commit(f"bench month {month}")
    return time.perf_counter() - t0


def bench_store(n_entries: int, n_months: int) -> dict[str, float]:
    n_rois = max(1, n_entries // n_months)
    print(f"== from a local store: {n_rois} ROIs x {n_months} months = {n_rois * n_months:,} entries ==")
    with tempfile.TemporaryDirectory(prefix="rs-embed-bench-") as tmp:
        loc, cache = os.path.join(tmp, "emb"), os.path.join(tmp, "cache")
        built = _build_store(loc, n_rois, n_months)
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(loc) for f in fs)
        print(f"built in {built:.1f} s ({n_months} commits), {size / 1e6:.1f} MB on disk")
        t0 = time.perf_counter()
        ev = load_entry_vectors(loc)
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        load_entry_vectors(loc, cache_dir=cache)
        writing = time.perf_counter() - t0
        t0 = time.perf_counter()
        cached = load_entry_vectors(loc, cache_dir=cache)
        hit = time.perf_counter() - t0
        assert len(cached) == len(ev) and np.array_equal(cached.vectors, ev.vectors)
        n = len(ev)
        per = cold / n
        print(
            f"load_entry_vectors of {n:,} entries: no cache {cold:.2f} s ({per * 1e3:.3f} ms/entry), "
            f"writing the cache {writing:.2f} s, from the cache {_ms(hit)}"
        )
        print(f"extrapolated store scan (linear, local disk): 100,000 entries ~ {per * 1e5:.0f} s")
        return {"entries": n, "no_cache_s": cold, "write_cache_s": writing, "from_cache_s": hit}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--store-entries", type=int, default=10_000, help="0 skips the store part")
    ap.add_argument("--store-months", type=int, default=10)
    ap.add_argument("--no-text", action="store_true", help="skip the text-encoder timing")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    # The machines are shared: the load average says how much the numbers are disturbed.
    print(f"load average at start: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    summary: dict[str, Any] = {"memory": list(bench_memory(args.sizes, args.repeats).values())}
    if not args.no_text:
        summary["text_encode_s"] = bench_text_encoder(args.repeats)
    if args.store_entries:
        summary["store"] = bench_store(args.store_entries, args.store_months)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of the benchmark process: {peak:.0f} MB; total {time.perf_counter() - t0:.0f} s")
    summary["peak_rss_mb"] = peak
    print("BENCH_JSON " + json.dumps(summary))  # one machine-readable line for bench.run_all
    print(f"load average at end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
