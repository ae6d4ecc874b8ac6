"""The store schema: names, dims, dtypes and fill values, and how an Embedding maps onto them.

Pure Python + numpy (no icechunk/zarr here), so the schema can be read and tested cheaply.
See docs/store-schema.md for the reader-facing description.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import StoreInputError
from ..provenance import entry_digest as compute_entry_digest
from ..specs import canonical_json

SCHEMA_NAME = "rs-embed-store"
SCHEMA_VERSION = 1
STORAGE_DTYPES = ("float32", "float16")
ZSTD_LEVEL = 3  # level 5 buys <1% more for much more CPU (FIELD-NOTES)
TIME_UNITS = "days since 1970-01-01"
AFFINE_ORDER = "a b c d e f (GDAL/affine order: x = a*col + b*row + c, y = d*col + e*row + f, cell corners)"

ENTRY_DIMS = ("roi", "time")
DATA_VARS: dict[str, tuple[str, ...]] = {
    "grid": ("roi", "time", "dim", "y", "x"),
    "pooled": ("roi", "time", "dim"),
    "image_embedding": ("roi", "time", "embed"),
}
# Non-index coordinates along roi (per-ROI georeferencing and labels).
ROI_COORDS = ("roi_label", "roi_spec", "crs_epsg", "grid_transform")


@dataclass(frozen=True)
class EntryField:
    """One per-entry provenance array (dims (roi, time), one chunk per entry)."""

    name: str
    dtype: str  # "str" | "bool" | "float32" | "int32"
    fill: Any
    description: str


ENTRY_FIELDS: tuple[EntryField, ...] = (
    EntryField("present", "bool", False, "True where the cell holds an entry (empty cells are NaN, not zeros)"),
    EntryField("model", "str", "", "model name, e.g. remoteclip"),
    EntryField("model_arch", "str", "", "open_clip architecture, e.g. ViT-B-32"),
    EntryField("checkpoint", "str", "", "checkpoint id (hub id or path)"),
    EntryField("checkpoint_revision", "str", "", "hub revision of the checkpoint, if any"),
    EntryField("checkpoint_sha256", "str", "", "sha256 of the weights file"),
    EntryField("weights_are_random", "bool", False, "True for dev checkpoints with random weights (NOT real)"),
    EntryField("preprocess_path", "str", "", "'transform' or 'fallback': which preprocessing ran"),
    EntryField("input_prep", "str", "", "'resize' or 'tile'"),
    EntryField("pooling", "str", "", "'mean' or 'max': how `pooled` was reduced from `grid`"),
    EntryField("valid_fraction", "float32", float("nan"), "fraction of chip pixels with >= 1 observation"),
    EntryField("n_scenes", "int32", -1, "number of scenes in the composite (-1: empty cell)"),
    EntryField("scene_ids", "str", "", "JSON list of source scene ids"),
    EntryField("scene_dates", "str", "", "JSON list of acquisition dates (ISO), same order as scene_ids"),
    EntryField("provider", "str", "", "imagery provider (gee, local, synthetic)"),
    EntryField("fetch_key", "str", "", "sha256 of the canonical fetch request (chip cache key)"),
    EntryField("entry_digest", "str", "", "sha256 over the value-determining provenance (skip-if-identical)"),
    EntryField("code_version", "str", "", "version of the code that computed the entry"),
    EntryField("written_at", "str", "", "UTC time the entry was committed (ISO 8601)"),
    EntryField("meta_json", "str", "", "the entry's full provenance (Embedding.meta) as canonical JSON"),
)
ENTRY_FIELD_NAMES = tuple(f.name for f in ENTRY_FIELDS)


def numpy_dtype(kind: str) -> Any:
    """numpy dtype for a field kind (strings are variable-length UTF-8)."""
    return object if kind == "str" else np.dtype(kind)


@dataclass(frozen=True)
class GridShape:
    """Sizes fixed for the whole store: token dim D, grid H x W, joint-space dim E."""

    dim: int
    height: int
    width: int
    embed: int

    def to_dict(self) -> dict[str, int]:
        return {"dim": self.dim, "y": self.height, "x": self.width, "embed": self.embed}


@dataclass(frozen=True, eq=False)
class PreparedEntry:
    """An entry validated and cast to the storage dtype, ready to be written (or rewritten after a conflict)."""

    roi_id: str
    time: dt.date
    roi_label: str
    roi_spec: str
    epsg: int
    transform: tuple[float, ...]
    grid: np.ndarray
    pooled: np.ndarray
    image_embedding: np.ndarray
    fields: dict[str, Any]

    @property
    def key(self) -> tuple[str, str]:
        return (self.roi_id, self.time.isoformat())

    @property
    def shape(self) -> GridShape:
        d, h, w = self.grid.shape
        return GridShape(d, h, w, self.image_embedding.shape[0])

    @property
    def nbytes(self) -> int:
        return self.grid.nbytes + self.pooled.nbytes + self.image_embedding.nbytes


def parse_time(value: Any) -> dt.date:
    """An entry's time key (the window start) as a date; accepts ISO text, date, datetime, datetime64."""
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, np.datetime64):
        return dt.date.fromisoformat(str(value.astype("datetime64[D]")))
    if isinstance(value, str) and len(value) >= 7:
        text = value.strip()
        try:
            return dt.date.fromisoformat(text[:10]) if len(text) >= 10 else dt.date.fromisoformat(text[:7] + "-01")
        except ValueError:
            pass
    raise StoreInputError(f"time={value!r} is invalid: give an ISO date such as '2026-11-01' (month start)")


def time_to_days(day: dt.date) -> int:
    return (day - dt.date(1970, 1, 1)).days


def days_to_time(days: int) -> dt.date:
    return dt.date(1970, 1, 1) + dt.timedelta(days=int(days))


def _epsg(value: Any) -> int:
    text = str(value).strip().upper()
    if text.startswith("EPSG:"):
        text = text[5:]
    try:
        code = int(text)
    except ValueError:
        raise StoreInputError(f"grid_crs={value!r} is invalid: give 'EPSG:<code>'") from None
    if code <= 0:
        raise StoreInputError(f"grid_crs={value!r} is invalid: give 'EPSG:<code>'")
    return code


def _transform(value: Any) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        out = ()
    if len(out) != 6 or not all(math.isfinite(v) for v in out):
        raise StoreInputError(f"grid_transform={value!r} is invalid: give 6 finite floats ({AFFINE_ORDER})")
    return out


def _array(name: str, value: Any, ndim: int, dtype: str) -> np.ndarray:
    if value is None:
        raise StoreInputError(f"{name} is missing: the store needs grid, pooled and image_embedding")
    arr = np.asarray(getattr(value, "values", value))
    if arr.ndim != ndim or 0 in arr.shape:
        raise StoreInputError(f"{name} has shape {arr.shape}: expected {ndim} non-empty dims")
    if not np.issubdtype(arr.dtype, np.floating):
        raise StoreInputError(f"{name} dtype {arr.dtype} is invalid: expected floating point values")
    finite = np.isfinite(arr)
    if not finite.any():
        raise StoreInputError(f"{name} is all NaN/inf: refusing to store an entry without values")
    if np.isinf(arr).any():
        raise StoreInputError(f"{name} contains inf values")
    out = arr.astype(dtype)
    if not np.array_equal(np.isfinite(out), finite):
        raise StoreInputError(f"{name} overflows storage dtype {dtype} (|value| > {np.finfo(dtype).max:g})")
    return np.ascontiguousarray(out)


def _str(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return canonical_json(value)


def _meta_json(meta: dict[str, Any]) -> str:
    try:
        return canonical_json(meta)
    except TypeError:  # numpy scalars or paths in hand-made meta: keep them as text
        return json.dumps(meta, sort_keys=True, separators=(",", ":"), default=str)


def prepare_entry(embedding: Any, storage_dtype: str, *, code_version: str, written_at: str) -> PreparedEntry:
    """Validate one Embedding and turn it into storage values (raises StoreInputError, changes nothing)."""
    meta = getattr(embedding, "meta", None)
    if not isinstance(meta, dict):
        raise StoreInputError("embedding.meta must be a dict carrying roi_id, time, grid_crs, grid_transform")
    roi_id = meta.get("roi_id")
    if not isinstance(roi_id, str) or not roi_id:
        raise StoreInputError(f"meta['roi_id']={roi_id!r} is invalid: give the ROI spec's stable id (spec.id)")
    time_value = meta.get("time")
    if time_value is None and isinstance(meta.get("temporal"), dict):
        time_value = meta["temporal"].get("start")
    day = parse_time(time_value)

    grid_da = embedding.grid
    attrs = getattr(grid_da, "attrs", {}) or {}
    crs = meta.get("grid_crs", attrs.get("crs"))
    transform = meta.get("grid_transform", attrs.get("transform"))
    if crs is None or transform is None:
        raise StoreInputError("meta['grid_crs'] and meta['grid_transform'] are required to georeference the grid")

    grid = _array("grid", grid_da, 3, storage_dtype)
    pooled = _array("pooled", embedding.pooled, 1, storage_dtype)
    image = _array("image_embedding", embedding.image_embedding, 1, storage_dtype)
    if pooled.shape[0] != grid.shape[0]:
        raise StoreInputError(f"pooled has {pooled.shape[0]} dims but grid has {grid.shape[0]}: they must match")

    roi = meta.get("roi") if isinstance(meta.get("roi"), dict) else {}
    provider = meta.get("provider") if isinstance(meta.get("provider"), dict) else {}
    versions = meta.get("versions") if isinstance(meta.get("versions"), dict) else {}
    digest = meta.get("entry_digest")
    if not digest:
        try:
            digest = compute_entry_digest(meta)
        except KeyError:
            digest = ""
    valid_fraction = provider.get("valid_fraction", meta.get("valid_fraction"))
    n_scenes = provider.get("n_scenes", meta.get("n_scenes"))
    scene_ids = provider.get("scene_ids", meta.get("scene_ids"))
    fields: dict[str, Any] = {
        "present": True,
        "model": _str(meta.get("model")),
        "model_arch": _str(meta.get("model_arch")),
        "checkpoint": _str(meta.get("checkpoint")),
        "checkpoint_revision": _str(meta.get("checkpoint_revision")),
        "checkpoint_sha256": _str(meta.get("checkpoint_sha256")),
        "weights_are_random": bool(meta.get("weights_are_random", False)),
        "preprocess_path": _str(meta.get("preprocess_path")),
        "input_prep": _str(meta.get("input_prep")),
        "pooling": _str(meta.get("pooling")),
        "valid_fraction": float("nan") if valid_fraction is None else float(valid_fraction),
        "n_scenes": -1 if n_scenes is None else int(n_scenes),
        "scene_ids": json.dumps(list(scene_ids or [])),
        "scene_dates": json.dumps(list(provider.get("dates", meta.get("scene_dates")) or [])),
        "provider": _str(provider.get("provider", meta.get("provider_name"))),
        "fetch_key": _str(meta.get("fetch_key")),
        "entry_digest": _str(digest),
        "code_version": _str(meta.get("code_version") or versions.get("rs_embed_core") or code_version),
        "written_at": written_at,
        "meta_json": _meta_json(meta),
    }
    return PreparedEntry(
        roi_id=roi_id,
        time=day,
        roi_label=_str(roi.get("label")),
        roi_spec=canonical_json(roi),
        epsg=_epsg(crs),
        transform=_transform(transform),
        grid=grid,
        pooled=pooled,
        image_embedding=image,
        fields=fields,
    )
