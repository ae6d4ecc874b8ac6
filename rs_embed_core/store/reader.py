"""Reading the store: one call gives an ``xarray.Dataset`` at a branch, tag or snapshot.

Selections are plain xarray on that Dataset; the helpers here add the two things
xarray cannot know: which cells hold data (``present``) and where a ROI's token
grid sits on the map (``crs_epsg`` + ``grid_transform``).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np

from ..errors import StoreError, StoreInputError
from .layout import parse_time


def open_embeddings(location: Any, ref: str = "main", *, sort_time: bool = True) -> Any:
    """The store at ``location`` (path, ``s3://...``, StoreConfig or EmbeddingStore) at ``ref`` as a Dataset.

    ``ref`` is a branch (``main``), a tag (``2026-11``) or a snapshot id. The Dataset is
    lazy (values load on access) and stays readable while it is referenced; its
    ``attrs`` name the ref and snapshot id it was read from.
    """
    from .writer import EmbeddingStore

    store = location if isinstance(location, EmbeddingStore) else EmbeddingStore.open(location, create=False)
    return store.open_dataset(ref, sort_time=sort_time)


def dataset_from_session(session: Any, *, ref: str, snapshot_id: str, location: str, sort_time: bool = True) -> Any:
    import xarray as xr

    try:
        ds = xr.open_zarr(session.store, consolidated=False, chunks=None, zarr_format=3)
    except Exception as exc:  # xarray raises bare errors for a missing root
        raise StoreError(f"cannot read the store at {location} ({ref}): {exc}") from exc
    if sort_time and "time" in ds.indexes and not ds.indexes["time"].is_monotonic_increasing:
        # Months are registered in arrival order (a backfill lands at the end); readers want them sorted.
        ds = ds.sortby("time")
    ds.attrs.update({"store": location, "ref": ref, "snapshot_id": snapshot_id})
    return ds


def _time_value(month: Any) -> np.datetime64:
    return np.datetime64(parse_time(month).isoformat(), "ns")


def _require(ds: Any) -> None:
    if "present" not in ds:
        raise StoreInputError("the store holds no entries yet")


def select_roi(ds: Any, roi_id: str, *, present_only: bool = True) -> Any:
    """One ROI over time (dims time, ...); with ``present_only`` only the months that hold an entry."""
    _require(ds)
    if roi_id not in ds.indexes["roi"]:
        raise StoreInputError(f"roi={roi_id!r} is not in the store ({ds.sizes['roi']} ROIs)")
    out = ds.sel(roi=roi_id)
    if present_only:
        out = out.isel(time=np.flatnonzero(out["present"].values))
    return out


def select_month(ds: Any, month: str | dt.date | np.datetime64, *, present_only: bool = True) -> Any:
    """One month (window start, e.g. ``"2026-11"``) over all ROIs; with ``present_only`` only ROIs that hold it."""
    _require(ds)
    value = _time_value(month)
    if value not in ds.indexes["time"]:
        raise StoreInputError(f"time={month!r} is not in the store; times: {[str(t)[:10] for t in ds.time.values]}")
    out = ds.sel(time=value)
    if present_only:
        out = out.isel(roi=np.flatnonzero(out["present"].values))
    return out


def entry_grid(ds: Any, roi_id: str, month: str | dt.date | np.datetime64) -> Any:
    """One entry's token grid as a georeferenced DataArray (dim, y, x).

    ``x``/``y`` are token-cell centres in metres of the ROI's UTM CRS; ``attrs`` carry
    ``crs`` ("EPSG:x"), ``transform`` (6 floats, GDAL order) and the entry's provenance keys.
    """
    _require(ds)
    cell = select_roi(ds, roi_id, present_only=False)
    value = _time_value(month)
    if value not in cell.indexes["time"]:
        raise StoreInputError(f"time={month!r} is not in the store")
    cell = cell.sel(time=value)
    if not bool(cell["present"].values):
        raise StoreInputError(f"no entry for roi={roi_id!r} at {str(value)[:10]} (the cell is empty)")
    a, b, c, d, e, f = (float(v) for v in cell["grid_transform"].values)
    height, width = ds.sizes["y"], ds.sizes["x"]
    cols, rows = np.arange(width) + 0.5, np.arange(height) + 0.5
    if b or d:
        raise StoreError(f"roi={roi_id!r} has a rotated grid transform; only north-up grids (b = d = 0) are placed")
    xs, ys = a * cols + c, e * rows + f
    da = cell["grid"].drop_vars([n for n in cell["grid"].coords if n not in ("roi", "time")])
    da = da.assign_coords(x=("x", xs), y=("y", ys), dim=("dim", np.arange(ds.sizes["dim"])))
    da.x.attrs.update(units="m", long_name="token cell centre easting")
    da.y.attrs.update(units="m", long_name="token cell centre northing")
    da.attrs = {
        "crs": f"EPSG:{int(cell['crs_epsg'].values)}",
        "transform": [a, b, c, d, e, f],
        "roi_label": str(cell["roi_label"].values),
        "checkpoint_sha256": str(cell["checkpoint_sha256"].values),
        "preprocess_path": str(cell["preprocess_path"].values),
        "entry_digest": str(cell["entry_digest"].values),
    }
    return da
