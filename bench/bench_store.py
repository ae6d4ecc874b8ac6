"""Benchmark of the embedding store (local filesystem): ``python -m bench.bench_store``.

Figures printed:
* write throughput (entries/s, MB/s of embedding values) for 1000 ViT-B/32-size entries
  (grid 768x7x7 + pooled 768 + image embedding 512) in float32 and float16, one commit;
* compression ratio (embedding bytes in the storage dtype / bytes on disk);
* commit latency of a one-entry commit as the store grows to 10k entries (1k/5k/10k,
  filled by batched commits of 1000 entries = one month for 1000 ROIs);
* read latency: open at a ref, one entry's grid, one ROI's whole series, entry_digests.

Values are Gaussian noise, which compresses less than real embeddings (FIELD-NOTES
measured ~1.24x float32 / ~2.46x float16 on real tokens), so the ratio here is a floor.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

D, H, W, E = 768, 7, 7, 512


class _Emb:
    """Minimal stand-in with the Embedding attributes the store reads."""

    def __init__(self, meta: dict, grid: np.ndarray, pooled: np.ndarray, image: np.ndarray) -> None:
        self.meta, self.grid, self.pooled, self.image_embedding, self.data = meta, grid, pooled, image, grid


def make_entries(n_rois: int, month: str, rng: np.random.Generator, roi_offset: int = 0) -> list[_Emb]:
    out = []
    for k in range(roi_offset, roi_offset + n_rois):
        grid = rng.standard_normal((D, H, W), dtype=np.float32)
        x0, y0 = 300_000.0 + 5_000.0 * (k % 100), 5_000_000.0 + 5_000.0 * (k // 100)
        meta = {
            "roi_id": f"pb-{k:012d}",
            "roi": {"type": "PointBuffer", "lon": 10.0, "lat": 45.0, "buffer_m": 2048.0, "label": f"roi {k}"},
            "time": f"{month}-01",
            "grid_crs": "EPSG:32632",
            "grid_transform": [585.0, 0.0, x0, 0.0, -585.0, y0],
            "model": "remoteclip",
            "model_arch": "ViT-B-32",
            "checkpoint": "MVRL/remote-clip-vit-base-patch32",
            "checkpoint_sha256": "ab" * 32,
            "preprocess_path": "fallback",
            "input_prep": "resize",
            "pooling": "mean",
            "fetch_key": f"{k:08d}{month}".ljust(64, "0"),
            "provider": {
                "provider": "synthetic",
                "scene_ids": ["S2A_x", "S2B_y"],
                "n_scenes": 2,
                "valid_fraction": 1.0,
            },
        }
        out.append(_Emb(meta, grid, grid.mean(axis=(1, 2)), rng.standard_normal(E, dtype=np.float32)))
    return out


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def bench_write(root: Path, dtype: str, n: int, rng: np.random.Generator) -> dict:
    from rs_embed_core.store import EmbeddingStore

    entries = make_entries(n, "2026-11", rng)
    store = EmbeddingStore.open(root / f"write-{dtype}", dtype=dtype)
    empty_bytes = dir_bytes(root / f"write-{dtype}")
    t0 = time.perf_counter()
    with store.writer() as w:
        for e in entries:
            w.write(e)
        t1 = time.perf_counter()
        w.commit("bench write")
    t2 = time.perf_counter()
    itemsize = np.dtype(dtype).itemsize
    value_bytes = n * (D * H * W + D + E) * itemsize
    on_disk = dir_bytes(root / f"write-{dtype}") - empty_bytes
    return {
        "dtype": dtype,
        "entries": n,
        "seconds": round(t2 - t0, 3),
        "write_calls_s": round(t1 - t0, 3),
        "commit_s": round(t2 - t1, 3),
        "entries_per_s": round(n / (t2 - t0), 1),
        "MB_per_s": round(value_bytes / 1e6 / (t2 - t0), 2),
        "value_MB": round(value_bytes / 1e6, 2),
        "on_disk_MB": round(on_disk / 1e6, 2),
        "compression_ratio": round(value_bytes / on_disk, 3),
        "compression_ratio_vs_float32": round(n * (D * H * W + D + E) * 4 / on_disk, 3),
    }


def one_entry_commit(store, entry, repeats: int = 3) -> tuple[float, float]:
    """Median seconds of (opening a writer, write + commit of one entry)."""
    opens, commits = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        with store.writer() as w:
            t1 = time.perf_counter()
            w.write(entry)
            w.commit("one entry")
        opens.append(t1 - t0)
        commits.append(time.perf_counter() - t1)
    return statistics.median(opens), statistics.median(commits)


def bench_growth(root: Path, dtype: str, rng: np.random.Generator, months: int = 10, n_rois: int = 1000) -> dict:
    from rs_embed_core.store import EmbeddingStore, open_embeddings

    store = EmbeddingStore.open(root / "growth", dtype=dtype)
    commit_ms: dict[int, float] = {}
    open_writer_ms: dict[int, float] = {}
    batch_s = []
    probe = None
    for m in range(months):
        month = f"2026-{m + 1:02d}"
        entries = make_entries(n_rois, month, rng)
        probe = probe or entries[0]
        t0 = time.perf_counter()
        with store.writer() as w:
            for e in entries:
                w.write(e)
            w.commit(f"batch {month}")
        batch_s.append(time.perf_counter() - t0)
        total = (m + 1) * n_rois
        if total in (1000, 5000, 10000):
            opened, committed = one_entry_commit(store, probe)
            open_writer_ms[total], commit_ms[total] = round(1000 * opened, 1), round(1000 * committed, 1)
    t0 = time.perf_counter()
    ds = open_embeddings(store.config.location, ref="main")
    open_ms = 1000 * (time.perf_counter() - t0)
    roi, t = probe.meta["roi_id"], np.datetime64(probe.meta["time"], "ns")
    one = []
    for k in range(5):
        t0 = time.perf_counter()
        np.asarray(ds["grid"].sel(roi=f"pb-{k * 97:012d}", time=t).values)
        one.append(time.perf_counter() - t0)
    series = []
    for k in range(3):
        t0 = time.perf_counter()
        sub = ds[["grid", "pooled", "present"]].sel(roi=f"pb-{k * 131:012d}")
        _ = (sub["grid"].values, sub["pooled"].values, sub["present"].values)
        series.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    digests = store.entry_digests()
    digest_s = time.perf_counter() - t0
    assert len(digests) == months * n_rois and roi in ds.indexes["roi"]
    return {
        "dtype": dtype,
        "entries_total": months * n_rois,
        "batch_commit_1000_entries_s": [round(s, 2) for s in batch_s],
        "one_entry_commit_ms_at": commit_ms,
        "open_writer_ms_at": open_writer_ms,
        "open_dataset_ms": round(open_ms, 1),
        "read_one_entry_grid_ms": round(1000 * statistics.median(one), 2),
        "read_roi_series_ms": round(1000 * statistics.median(series), 2),
        "roi_series_months": months,
        "entry_digests_10k_s": round(digest_s, 2),
        "store_MB_on_disk": round(dir_bytes(root / "growth") / 1e6, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1000)
    parser.add_argument("--months", type=int, default=10, help="growth phase: months x 1000 ROIs")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: a temporary one)")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    results: dict = {"machine": {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg()}, "write": [], "growth": None}
    print(json.dumps(results["machine"]))
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        for dtype in ("float32", "float16"):
            res = bench_write(root, dtype, args.entries, rng)
            results["write"].append(res)
            print(json.dumps(res))
        results["growth"] = bench_growth(root, "float16", rng, months=args.months)
        print(json.dumps(results["growth"]))
    results["machine"]["loadavg_end"] = os.getloadavg()
    print(json.dumps({"loadavg_end": results["machine"]["loadavg_end"]}))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print("BENCH_JSON " + json.dumps(results))  # one machine-readable line for bench.run_all


if __name__ == "__main__":
    main()
