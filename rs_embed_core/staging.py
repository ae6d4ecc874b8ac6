"""A staging area for computed embeddings that are not yet committed to the store.

Inference writes each batch here and hands back small :class:`StagedRef` values;
the store step reads them back and commits once. Files are plain ``.npz`` arrays
plus a ``.json`` sidecar (never pickle: staged files may cross machines and users).

Layout::

    <root>/batches/<batch_key>/manifest.json     list of entries with checksums
    <root>/batches/<batch_key>/<n>.npz|.json      one embedding each
    <root>/computed.log                           one line per batch actually computed

A batch directory appears atomically (written under a temporary name, then
renamed), so a batch either exists completely or not at all; a retried run finds
finished batches and does not recompute them. ``computed.log`` is the audit trail
of real model work (tests and benchmarks count it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .embedding import Embedding
from .errors import CacheError
from .specs import canonical_json

STAGING_FORMAT = 1


@dataclass(frozen=True)
class StagedRef:
    """Where one staged embedding lives (a small, JSON-ready task result)."""

    batch_key: str
    index: int
    roi_id: str
    time: str
    entry_digest: str
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch_key": self.batch_key,
            "index": self.index,
            "roi_id": self.roi_id,
            "time": self.time,
            "entry_digest": self.entry_digest,
            "sha256": self.sha256,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StagedRef:
        return cls(**{k: data[k] for k in ("batch_key", "index", "roi_id", "time", "entry_digest", "sha256")})


def batch_key(parts: dict[str, Any]) -> str:
    """Content key of a batch: sha256 over its canonical description."""
    return hashlib.sha256(canonical_json({"staging_format": STAGING_FORMAT, **parts}).encode()).hexdigest()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class StagingArea:
    """Staged batches of embeddings under one local folder.

    Args:
        root: the folder (created on demand). Point several workers at a shared
            volume when inference runs on other machines.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()

    # -- paths -------------------------------------------------------------------------
    def batch_dir(self, key: str) -> Path:
        if not key or any(c not in "0123456789abcdef" for c in key):
            raise CacheError(f"batch key {key!r} is not a hex digest")
        return self.root / "batches" / key

    @property
    def log_path(self) -> Path:
        return self.root / "computed.log"

    # -- queries -------------------------------------------------------------------------
    def has_batch(self, key: str) -> bool:
        """True when the batch was staged completely (its manifest exists)."""
        return (self.batch_dir(key) / "manifest.json").is_file()

    def batch_refs(self, key: str) -> list[StagedRef]:
        """The refs of a staged batch, in batch order."""
        path = self.batch_dir(key) / "manifest.json"
        try:
            manifest = json.loads(path.read_text())
        except FileNotFoundError:
            raise CacheError(f"batch {key} is not staged under {self.root}") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise CacheError(f"staging manifest {path} is unreadable ({exc})") from exc
        return [StagedRef.from_dict(e) for e in manifest["entries"]]

    def computed_batches(self) -> list[str]:
        """Keys of batches that were computed (not found staged), oldest first."""
        try:
            return self.log_path.read_text().split()
        except FileNotFoundError:
            return []

    # -- writing -------------------------------------------------------------------------
    def stage(
        self, key: str, embeddings: Sequence[Embedding], *, extra: dict[str, Any] | None = None
    ) -> list[StagedRef]:
        """Write a batch atomically and return its refs.

        If another worker staged the same key first, its batch is kept and returned
        (same key, same content).
        """
        final = self.batch_dir(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".tmp-{key[:16]}-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            entries = []
            for i, emb in enumerate(embeddings):
                sha = _write_entry(tmp / str(i), emb)
                meta = emb.meta
                entries.append(
                    StagedRef(
                        batch_key=key,
                        index=i,
                        roi_id=str(meta["roi_id"]),
                        time=str(meta["time"]),
                        entry_digest=str(meta["entry_digest"]),
                        sha256=sha,
                    ).to_dict()
                )
            manifest = {"format": STAGING_FORMAT, "key": key, "entries": entries, "extra": extra or {}}
            (tmp / "manifest.json").write_text(json.dumps(manifest, sort_keys=True))
            try:
                os.rename(tmp, final)
            except OSError:
                if not self.has_batch(key):
                    raise
                shutil.rmtree(tmp, ignore_errors=True)  # a concurrent worker won the race
            else:
                with self.log_path.open("a") as fh:  # O_APPEND: one short line per write is atomic
                    fh.write(key + "\n")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return self.batch_refs(key)

    def load(self, ref: StagedRef | dict[str, Any]) -> Embedding:
        """Read one staged embedding back, verifying its checksum."""
        if isinstance(ref, dict):
            ref = StagedRef.from_dict(ref)
        base = self.batch_dir(ref.batch_key) / str(ref.index)
        npz = base.with_suffix(".npz")
        try:
            if _sha256(npz) != ref.sha256:
                raise CacheError(f"staged entry {npz} does not match its checksum; rerun the batch (force)")
            side = json.loads(base.with_suffix(".json").read_text())
            with np.load(npz, allow_pickle=False) as arrays:
                data = {k: arrays[k] for k in arrays.files}
        except FileNotFoundError as exc:
            raise CacheError(f"staged entry {base} is missing ({exc.filename})") from None
        return _to_embedding(side, data)

    def remove(self, keys: Iterable[str]) -> None:
        """Delete staged batches (after their entries were committed)."""
        for key in set(keys):
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(self.batch_dir(key))


def _write_entry(base: Path, emb: Embedding) -> str:
    arrays: dict[str, np.ndarray] = {}
    side: dict[str, Any] = {"meta": emb.meta, "grid": None, "data": "pooled"}
    if emb.pooled is not None:
        arrays["pooled"] = np.asarray(emb.pooled)
    if emb.image_embedding is not None:
        arrays["image_embedding"] = np.asarray(emb.image_embedding)
    grid = emb.grid
    if grid is not None:
        arrays["grid"] = np.asarray(grid.values)
        coords = {}
        for i, (name, coord) in enumerate(grid.coords.items()):
            arrays[f"coord_{i}"] = np.asarray(coord.values)
            coords[str(name)] = {"key": f"coord_{i}", "dims": list(coord.dims)}
        side["grid"] = {
            "dims": list(grid.dims),
            "coords": coords,
            "attrs": _jsonable_attrs(grid.attrs),
            "name": grid.name,
        }
    if grid is not None and emb.data is grid:
        side["data"] = "grid"
    elif emb.pooled is None or emb.data is not emb.pooled:
        arrays["data"] = np.asarray(emb.data)
        side["data"] = "array"
    npz = base.with_suffix(".npz")
    with npz.open("wb") as fh:
        np.savez(fh, **arrays)
    base.with_suffix(".json").write_text(json.dumps(side, sort_keys=True, default=_json_default))
    return _sha256(npz)


def _jsonable_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(dict(attrs), default=_json_default))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if hasattr(obj, "isoformat"):
        return obj.isoformat()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def _to_embedding(side: dict[str, Any], arrays: dict[str, np.ndarray]) -> Embedding:
    grid = None
    if side.get("grid") is not None:
        import xarray as xr  # lazy: staging is imported by light code paths

        g = side["grid"]
        dims = tuple(g["dims"])
        coords = {name: (tuple(c["dims"]), arrays[c["key"]]) for name, c in g["coords"].items()}
        grid = xr.DataArray(arrays["grid"], dims=dims, coords=coords, attrs=g["attrs"], name=g["name"])
    pooled = arrays.get("pooled")
    kind = side.get("data")
    data = grid if kind == "grid" else arrays["data"] if kind == "array" else pooled
    return Embedding(
        data=data, meta=side["meta"], grid=grid, pooled=pooled, image_embedding=arrays.get("image_embedding")
    )


STAGING_ENV = "RS_EMBED_STAGING_DIR"


def default_staging_dir(store_location: str | Path) -> Path:
    """Where a run stages entries for ``store_location``.

    ``RS_EMBED_STAGING_DIR`` wins; a local store stages next to itself
    (``<store>.staging``); a remote (``s3://``) store stages under the user cache dir,
    so for inference on other machines set ``RS_EMBED_STAGING_DIR`` to a shared volume.
    """
    env = os.environ.get(STAGING_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    loc = str(store_location)
    if "://" not in loc:
        p = Path(loc).expanduser().resolve()
        return p.parent / f"{p.name}.staging"
    import platformdirs

    slug = hashlib.sha256(loc.encode()).hexdigest()[:16]
    return Path(platformdirs.user_cache_dir("rs-embed", appauthor=False)) / "staging" / slug
