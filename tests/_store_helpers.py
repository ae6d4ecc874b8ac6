"""Hand-built Embedding objects for the store tests (planted random values, CONTRACT meta keys)."""

from __future__ import annotations

import numpy as np
import xarray as xr

from rs_embed_core.embedding import Embedding
from rs_embed_core.grid import roi_grid
from rs_embed_core.provenance import entry_digest
from rs_embed_core.specs import PointBuffer

# Real places (UTM zones 31N, 33N, 36S) so the grids are realistic.
CENTRES = [(2.35, 48.85), (13.40, 52.52), (36.82, -1.29), (-3.70, 40.42), (151.21, -33.87)]


def roi_spec(k: int) -> PointBuffer:
    lon, lat = CENTRES[k % len(CENTRES)]
    return PointBuffer(lon + 0.01 * (k // len(CENTRES)), lat, 2048.0, label=f"site-{k}")


def make_embedding(
    k: int,
    month: str = "2026-11",
    *,
    dim: int = 768,
    hw: tuple[int, int] = (7, 7),
    embed: int = 512,
    seed: int | None = None,
    checkpoint_sha256: str = "ab" * 32,
) -> Embedding:
    """Entry for ROI number ``k`` at ``month`` (YYYY-MM) with values planted from ``seed``."""
    roi = roi_spec(k)
    rng = np.random.default_rng(seed if seed is not None else abs(hash((k, month))) % 2**32)
    h, w = hw
    tokens = rng.standard_normal((dim, h, w)).astype("float32")
    pixel = roi_grid(roi, 10.0)
    minx, _, _, maxy = pixel.bounds
    step_x, step_y = pixel.width * 10.0 / w, pixel.height * 10.0 / h
    transform = (step_x, 0.0, minx, 0.0, -step_y, maxy)
    xs, ys = pixel.xy_centers(w, h)
    grid = xr.DataArray(
        tokens, dims=("dim", "y", "x"), coords={"x": xs, "y": ys}, attrs={"crs": pixel.crs, "transform": transform}
    )
    fetch_key = f"{k:04d}{month}".ljust(64, "0")
    meta = {
        "model": "remoteclip",
        "model_arch": "ViT-B-32",
        "checkpoint": "MVRL/remote-clip-vit-base-patch32",
        "checkpoint_path": "/cache/model.safetensors",
        "checkpoint_revision": "1" * 40,
        "checkpoint_sha256": checkpoint_sha256,
        "weights_are_random": True,
        "preprocess_path": "fallback",
        "preprocess": {"size": 224},
        "image_size": 224,
        "input_prep": "resize",
        "tile_layout": None,
        "pooling": "mean",
        "output": {"mode": "grid", "pooling": "mean"},
        "device": "cpu",
        "dtype": "float32",
        "versions": {"rs_embed_core": "0.1.0", "torch": "2.14.1"},
        "roi": roi.to_dict(),
        "roi_id": roi.id,
        "temporal": {"start": f"{month}-01", "end": None},
        "time": f"{month}-01",
        "sensor": {"collection": "COPERNICUS/S2_SR_HARMONIZED"},
        "provider": {
            "provider": "synthetic",
            "scene_ids": [f"S2A_{month}_{k}_a", f"S2B_{month}_{k}_b"],
            "dates": [f"{month}-03", f"{month}-13"],
            "n_scenes": 2,
            "valid_fraction": 0.875,
            "grid": pixel.to_dict(),
            "request": {},
        },
        "fetch_key": fetch_key,
        "grid_crs": pixel.crs,
        "grid_transform": list(transform),
    }
    meta["entry_digest"] = entry_digest(meta)
    pooled = tokens.mean(axis=(1, 2))
    image = rng.standard_normal(embed).astype("float32")
    return Embedding(data=grid, meta=meta, grid=grid, pooled=pooled, image_embedding=image)


def write_rois(location: str, rois: list[int], months: list[str], per_commit: int = 1) -> list[str]:
    """Process entry point: write ``rois`` x ``months``, ``per_commit`` ROIs per commit (concurrency tests).

    Every commit registers new ROIs (and the first ones new months), so concurrent
    workers race on resizing the same axes.
    """
    from rs_embed_core.store import EmbeddingStore

    store = EmbeddingStore.open(location)
    snaps = []
    for start in range(0, len(rois), per_commit):
        batch = rois[start : start + per_commit]
        with store.writer() as w:
            for k in batch:
                for m in months:
                    w.write(small_embedding(k, m))
            snaps.append(w.commit(f"rois {batch}", {"worker_rois": batch}))
    return snaps


def small_embedding(k: int, month: str) -> Embedding:
    """A small entry (D=16, 3x3, E=8) whose values are a function of (k, month) only."""
    return make_embedding(k, month, dim=16, hw=(3, 3), embed=8, seed=k * 100 + int(month[-2:]))
