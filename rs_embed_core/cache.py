"""Persistent, content-addressed chip cache.

One entry per fetch key (:func:`rs_embed_core.providers.base.fetch_key`, the sha256 of
the canonical fetch request: ROI geometry, window, pixel-changing sensor settings,
provider name, version and ``describe()``). On disk, under ``<root>/v1/<kk>/``:

* ``<key>.npz``: arrays ``dn`` (uint16 C,H,W), ``valid`` (uint16 H,W) and ``meta``
  (UTF-8 JSON bytes as uint8: bands, grid, scene ids, dates, request, provider meta).
  Written with numpy's zip format and read with ``allow_pickle=False``: no pickle.
* ``<key>.json``: the sidecar with the sha256 of the npz bytes. It is written last, so
  its presence marks a complete entry; its mtime is the entry's last use (for prune).
* ``<key>.lock``: a file lock held while the entry is fetched or rewritten, so threads
  and processes asking for the same key fetch once and never see half-written files.

Writes go to a temporary file in the same folder and are moved into place with
``os.replace`` (atomic on POSIX). Reads verify the checksum; a corrupt or truncated
entry is deleted and refetched, never returned.

The root is ``RS_EMBED_CACHE_DIR`` when set, else ``<user cache dir>/rs-embed/chips``.
``RS_EMBED_CACHE_DIR=off`` (or ``none``/``0``/``false``) turns the default cache off.

``python -m rs_embed_core.cache info`` / ``prune --older-than-days N`` report and prune.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .chip import Chip
from .errors import CacheError, NoImageryError
from .grid import PixelGrid
from .providers.base import Provider, fetch_key
from .specs import ROI, SensorSpec, TemporalSpec

log = logging.getLogger(__name__)

CACHE_ENV = "RS_EMBED_CACHE_DIR"
DISABLED_VALUES = frozenset({"off", "none", "0", "false", "no", "disabled"})
FORMAT_VERSION = 1
_LAYOUT = f"v{FORMAT_VERSION}"
# A stale temporary file (a writer that died) is removed by prune after this long.
_TMP_MAX_AGE_S = 3600.0


@dataclass(frozen=True)
class ChipRef:
    """A small, JSON-ready reference to a cached chip (what Prefect tasks return).

    Attributes:
        key: the fetch key (sha256 of the canonical fetch request).
        path: the ``.npz`` file of the entry.
        shape: ``(C, H, W)`` of the DN array.
        sha256: checksum of the ``.npz`` bytes; :meth:`ChipCache.load` verifies it.
    """

    key: str
    path: str
    shape: tuple[int, ...]
    sha256: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(v) for v in self.shape))
        object.__setattr__(self, "path", str(self.path))

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "path": self.path, "shape": list(self.shape), "sha256": self.sha256}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChipRef:
        return cls(data["key"], data["path"], tuple(data["shape"]), data["sha256"])


def cache_disabled() -> bool:
    """True when ``RS_EMBED_CACHE_DIR`` switches the default cache off."""
    return os.environ.get(CACHE_ENV, "").strip().lower() in DISABLED_VALUES


def default_cache_dir() -> Path:
    """``RS_EMBED_CACHE_DIR`` if set (and not ``off``), else the user cache dir."""
    env = os.environ.get(CACHE_ENV, "").strip()
    if env and env.lower() not in DISABLED_VALUES:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("rs-embed", appauthor=False)) / "chips"


_DEFAULT: dict[Path, ChipCache] = {}


def default_cache() -> ChipCache | None:
    """The process-wide cache for the current environment, or None when disabled."""
    if cache_disabled():
        return None
    root = default_cache_dir()
    cache = _DEFAULT.get(root)
    if cache is None:
        cache = _DEFAULT[root] = ChipCache(root)
    return cache


def resolve_cache(cache: Any = None) -> ChipCache | None:
    """``None`` -> default cache (None if disabled); ``False`` -> None; a path -> ChipCache."""
    if cache is None or cache is True:
        return default_cache()
    if cache is False:
        return None
    if isinstance(cache, ChipCache):
        return cache
    if isinstance(cache, (str, os.PathLike)):
        if str(cache).strip().lower() in DISABLED_VALUES:
            return None
        return ChipCache(cache)
    raise CacheError(f"cache={cache!r} is invalid: must be None (default cache), False, a folder path or a ChipCache")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (dt.date, dt.datetime)):
        return obj.isoformat()
    if isinstance(obj, (tuple, set, frozenset)):
        return list(obj)
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _encode(key: str, chip: Chip) -> bytes:
    meta = {
        "format": FORMAT_VERSION,
        "key": key,
        "bands": list(chip.bands),
        "grid": chip.grid.to_dict(),
        "scene_ids": list(chip.scene_ids),
        "dates": list(chip.dates),
        "provider": chip.provider,
        "request": chip.request,
        "meta": chip.meta,
    }
    meta_bytes = json.dumps(meta, sort_keys=True, default=_json_default).encode()
    buf = io.BytesIO()
    np.savez(
        buf,
        dn=np.ascontiguousarray(chip.dn, dtype=np.uint16),
        valid=np.ascontiguousarray(chip.valid, dtype=np.uint16),
        meta=np.frombuffer(meta_bytes, dtype=np.uint8),
    )
    return buf.getvalue()


def _decode(key: str, data: bytes) -> Chip:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        dn = npz["dn"]
        valid = npz["valid"]
        meta = json.loads(npz["meta"].tobytes().decode())
    if meta.get("format") != FORMAT_VERSION or meta.get("key") != key:
        raise CacheError(f"entry holds key {meta.get('key')!r} format {meta.get('format')!r}, expected {key!r}")
    return Chip(
        dn=dn,
        bands=tuple(meta["bands"]),
        grid=PixelGrid.from_dict(meta["grid"]),
        valid=valid,
        scene_ids=tuple(meta["scene_ids"]),
        dates=tuple(meta["dates"]),
        provider=meta["provider"],
        request=meta["request"],
        meta=meta["meta"],
    )


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # No fsync: os.replace already makes the entry all-or-nothing for concurrent readers and
        # crashed writers, and a power cut that leaves garbage is caught by the checksum on read.
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class ChipCache:
    """Content-addressed chip files under ``root`` (see the module docstring).

    Args:
        root: cache folder; default :func:`default_cache_dir`.
        lock_timeout_s: how long to wait for another thread/process fetching the
            same key before giving up with :class:`CacheError`.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None, *, lock_timeout_s: float = 900.0) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()
        self.lock_timeout_s = lock_timeout_s
        try:
            (self.root / _LAYOUT).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheError(
                f"chip cache folder {str(self.root)!r} cannot be created ({exc}); set {CACHE_ENV} to a writable "
                f"folder, or {CACHE_ENV}=off to disable the cache"
            ) from exc

    def __repr__(self) -> str:
        return f"ChipCache({str(self.root)!r})"

    # -- layout ---------------------------------------------------------------
    def _dir(self, key: str) -> Path:
        if len(key) < 8 or not all(c in "0123456789abcdef" for c in key):
            raise CacheError(f"key={key!r} is invalid: must be a lowercase hex digest (fetch_key)")
        return self.root / _LAYOUT / key[:2]

    def path_for(self, key: str) -> Path:
        """The ``.npz`` file of ``key`` (whether or not it exists)."""
        return self._dir(key) / f"{key}.npz"

    def _sidecar(self, key: str) -> Path:
        return self._dir(key) / f"{key}.json"

    def _lock(self, key: str):
        from filelock import FileLock

        d = self._dir(key)
        d.mkdir(parents=True, exist_ok=True)
        return FileLock(str(d / f"{key}.lock"), timeout=self.lock_timeout_s)

    # -- read -----------------------------------------------------------------
    def _read(self, key: str) -> tuple[Chip, ChipRef] | None:
        """The verified entry, or None when missing. Raises CacheError when corrupt."""
        side = self._sidecar(key)
        try:
            side_text = side.read_text()
        except FileNotFoundError:
            return None
        path = self.path_for(key)
        try:
            info = json.loads(side_text)
            data = path.read_bytes()
        except (OSError, ValueError) as exc:
            raise CacheError(f"cache entry {key[:12]} is unreadable: {exc}") from exc
        digest = hashlib.sha256(data).hexdigest()
        if digest != info.get("sha256"):
            raise CacheError(f"cache entry {key[:12]} fails its checksum (truncated or corrupt)")
        try:
            chip = _decode(key, data)
        except Exception as exc:  # any decoding failure means a bad entry
            raise CacheError(f"cache entry {key[:12]} cannot be decoded: {exc}") from exc
        with contextlib.suppress(OSError):
            os.utime(side)  # last use, for prune
        return chip, ChipRef(key, str(path), chip.dn.shape, digest)

    def _discard(self, key: str) -> None:
        for p in (self._sidecar(key), self.path_for(key)):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    def _read_locked(self, key: str) -> tuple[Chip, ChipRef] | None:
        """Read under the key lock; a corrupt entry is deleted and reported as a miss."""
        try:
            return self._read(key)
        except CacheError as exc:
            log.warning("discarding %s: %s", self.path_for(key), exc)
            self._discard(key)
            return None

    def _read_fast(self, key: str) -> tuple[Chip, ChipRef] | None:
        # Lock-free: a writer may be mid-way, so any problem sends the caller to the locked path.
        try:
            return self._read(key)
        except CacheError:
            return None

    def get(self, key: str) -> Chip | None:
        """The cached chip for ``key`` or None (a corrupt entry is removed)."""
        hit = self._read_fast(key)
        if hit is None and self._sidecar(key).exists():
            with self._lock(key):
                hit = self._read_locked(key)
        return hit[0] if hit else None

    def ref(self, key: str) -> ChipRef | None:
        hit = self._read_fast(key)
        return hit[1] if hit else None

    def __contains__(self, key: str) -> bool:
        return self._read_fast(key) is not None

    def load(self, ref: ChipRef | dict[str, Any]) -> Chip:
        """The chip behind ``ref``; raises :class:`CacheError` when missing or not matching."""
        return load_chip(ref)

    # -- write ----------------------------------------------------------------
    def _write(self, key: str, chip: Chip) -> ChipRef:
        try:
            return self._write_files(key, chip)
        except OSError as exc:
            # Disk full or not writable: the atomic writes left no partial entry behind.
            self._discard(key)
            raise CacheError(
                f"cannot write chip cache entry {key[:12]} under {str(self.root)!r} ({exc.strerror or exc}); free "
                f"space there, point {CACHE_ENV} at another folder, or set {CACHE_ENV}=off"
            ) from exc

    def _write_files(self, key: str, chip: Chip) -> ChipRef:
        data = _encode(key, chip)
        digest = hashlib.sha256(data).hexdigest()
        path = self.path_for(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, data)
        side = {
            "format": FORMAT_VERSION,
            "key": key,
            "sha256": digest,
            "bytes": len(data),
            "shape": list(chip.dn.shape),
            "bands": list(chip.bands),
            "provider": chip.provider,
            "valid_fraction": round(chip.valid_fraction, 6),
            "n_scenes": chip.n_scenes,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        _atomic_write(self._sidecar(key), json.dumps(side, sort_keys=True).encode())
        return ChipRef(key, str(path), chip.dn.shape, digest)

    def put(self, key: str, chip: Chip) -> ChipRef:
        """Store ``chip`` under ``key`` (replacing any entry)."""
        with self._lock(key):
            return self._write(key, chip)

    # -- fetch through the cache ----------------------------------------------
    def fetch_with_ref(
        self, provider: Provider, roi: ROI, temporal: TemporalSpec, sensor: SensorSpec, *, refresh: bool = False
    ) -> tuple[Chip, ChipRef]:
        """Cached chip and its reference; fetch once (per key, across threads/processes) on a miss."""
        key = fetch_key(provider, roi, temporal, sensor)
        if not refresh:
            hit = self._read_fast(key)
            if hit is not None:
                return hit
        try:
            lock = self._lock(key)
            lock.acquire()
        except OSError as exc:  # filelock.Timeout is an OSError too
            raise CacheError(f"could not lock cache entry {key[:12]} under {self.root}: {exc}") from exc
        try:
            if not refresh:
                # Another worker may have fetched it while we waited for the lock.
                hit = self._read_locked(key)
                if hit is not None:
                    return hit
            chip = require_observations(provider.fetch(roi, temporal, sensor), roi, temporal)
            ref = self._write(key, chip)
            return chip, ref
        finally:
            lock.release()

    def fetch(self, provider: Provider, roi: ROI, temporal: TemporalSpec, sensor: SensorSpec) -> Chip:
        return self.fetch_with_ref(provider, roi, temporal, sensor)[0]

    def fetch_ref(self, provider: Provider, roi: ROI, temporal: TemporalSpec, sensor: SensorSpec) -> ChipRef:
        return self.fetch_with_ref(provider, roi, temporal, sensor)[1]

    # -- housekeeping -----------------------------------------------------------
    def _sidecars(self) -> list[Path]:
        return sorted((self.root / _LAYOUT).glob("*/*.json"))

    def info(self) -> dict[str, Any]:
        """``{"root", "entries", "bytes"}`` (bytes of npz + sidecar files)."""
        entries = 0
        size = 0
        for side in self._sidecars():
            try:
                size += side.stat().st_size + side.with_suffix(".npz").stat().st_size
                entries += 1
            except FileNotFoundError:
                continue
        return {"root": str(self.root), "entries": entries, "bytes": size}

    def prune(self, older_than_days: float) -> dict[str, Any]:
        """Delete entries not used for ``older_than_days`` days (and stale temp files).

        Entries being written by another worker (lock held) are skipped.
        """
        from filelock import Timeout

        if older_than_days < 0:
            raise CacheError(f"older_than_days={older_than_days!r} is invalid: must be >= 0")
        now = time.time()
        cutoff = now - older_than_days * 86400.0
        removed = 0
        freed = 0
        for side in self._sidecars():
            try:
                if side.stat().st_mtime >= cutoff:
                    continue
            except FileNotFoundError:
                continue
            key = side.stem
            lock = self._lock(key)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue
            try:
                for p in (side, side.with_suffix(".npz")):
                    try:
                        freed += p.stat().st_size
                        p.unlink()
                    except FileNotFoundError:
                        pass
                removed += 1
            finally:
                lock.release()
        for tmp in (self.root / _LAYOUT).glob("*/.*.tmp"):
            try:
                if tmp.stat().st_mtime < now - _TMP_MAX_AGE_S:
                    freed += tmp.stat().st_size
                    tmp.unlink()
            except FileNotFoundError:
                pass
        return {"root": str(self.root), "removed": removed, "freed_bytes": freed}

    def clear(self) -> dict[str, Any]:
        """Delete every entry."""
        return self.prune(0)


def require_observations(chip: Chip, roi: ROI, temporal: TemporalSpec) -> Chip:
    """``chip`` unless no pixel has an observation (all nodata): then :class:`NoImageryError`.

    An all-nodata chip embeds as a picture of zeros; storing that as the ROI's month
    would be wrong data, so it is reported as "no imagery" per ROI and never cached.
    """
    if chip.valid.size and not np.any(chip.valid):
        where = roi.id + (f" ({roi.label})" if roi.label else "")
        raise NoImageryError(
            f"the {chip.provider} chip for ROI {where} in {temporal.label()} has no valid pixel (all nodata, "
            f"{len(chip.scene_ids)} scenes listed): widen the window, raise cloudy_pct or check the ROI location"
        )
    return chip


def fetch_chip(provider: Provider, roi: ROI, temporal: TemporalSpec, sensor: SensorSpec, cache: Any = None) -> Chip:
    """Fetch a chip through the chip cache.

    Args:
        cache: ``None`` for the default cache (off with ``RS_EMBED_CACHE_DIR=off``),
            ``False`` for none, a folder path or a :class:`ChipCache`.

    Providers with ``cacheable = False`` (synthetic scenes, cheaper to regenerate
    than to read) are called directly.
    """
    chip_cache = resolve_cache(cache)
    if chip_cache is None or not getattr(provider, "cacheable", True):
        return require_observations(provider.fetch(roi, temporal, sensor), roi, temporal)
    return chip_cache.fetch(provider, roi, temporal, sensor)


def fetch_chip_ref(
    provider: Provider, roi: ROI, temporal: TemporalSpec, sensor: SensorSpec, cache: Any = None
) -> ChipRef:
    """Fetch through the cache and return a :class:`ChipRef` (for orchestration results).

    Every provider is stored here, since a reference needs a file; a provider with
    ``cacheable = False`` is fetched again and its entry rewritten.
    """
    chip_cache = resolve_cache(cache)
    if chip_cache is None:
        raise CacheError(
            f"a chip reference needs the chip cache, which is disabled ({CACHE_ENV}="
            f"{os.environ.get(CACHE_ENV)!r}); set {CACHE_ENV} to a folder or pass cache=<folder>"
        )
    refresh = not getattr(provider, "cacheable", True)
    return chip_cache.fetch_with_ref(provider, roi, temporal, sensor, refresh=refresh)[1]


def load_chip(ref: ChipRef | dict[str, Any]) -> Chip:
    """Load the chip behind ``ref`` (the path is in the reference), verifying its checksum.

    Raises:
        CacheError: the file is gone or no longer matches the reference.
    """
    if isinstance(ref, dict):
        ref = ChipRef.from_dict(ref)
    try:
        data = Path(ref.path).read_bytes()
    except OSError as exc:
        raise CacheError(f"chip {ref.key[:12]} is not in the cache at {ref.path} ({exc}); fetch it again") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != ref.sha256:
        raise CacheError(
            f"chip {ref.key[:12]} at {ref.path} does not match its reference (sha256 {digest[:12]} != "
            f"{ref.sha256[:12]}): it was rewritten or corrupted; fetch it again"
        )
    try:
        return _decode(ref.key, data)
    except Exception as exc:
        raise CacheError(f"chip {ref.key[:12]} at {ref.path} cannot be decoded: {exc}") from exc


def chip_ref_ok(ref: ChipRef | dict[str, Any]) -> bool:
    """True when the file behind ``ref`` still exists and matches its checksum (no decoding).

    Orchestrators that cache chip references (Prefect's fetch cache) check them with this
    before use: a reference to a pruned or corrupted chip must be fetched again.
    """
    if isinstance(ref, dict):
        ref = ChipRef.from_dict(ref)
    h = hashlib.sha256()
    try:
        with open(ref.path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return False
    return h.hexdigest() == ref.sha256


def main(argv: list[str] | None = None) -> int:
    """``python -m rs_embed_core.cache [--dir D] info | prune --older-than-days N``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m rs_embed_core.cache", description="Chip cache report and prune")
    parser.add_argument("--dir", default=None, help=f"cache folder (default: ${CACHE_ENV} or the user cache dir)")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="number of entries and bytes")
    p = sub.add_parser("prune", help="delete entries not used for N days")
    p.add_argument("--older-than-days", type=float, required=True)
    args = parser.parse_args(argv)
    cache = ChipCache(args.dir) if args.dir else ChipCache(default_cache_dir())
    out = cache.info() if args.cmd == "info" else cache.prune(args.older_than_days)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
