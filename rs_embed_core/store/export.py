"""Export one version of the store to a plain Zarr v3 directory (readable without Icechunk).

The encoded chunks and metadata documents are copied byte for byte (no decode /
re-encode), into a temporary sibling directory renamed into place at the end, so a
failed export never leaves a half-written directory at ``out_dir``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..errors import StoreError

COPY_CONCURRENCY = 64


def export_zarr(store: Any, out_dir: str | os.PathLike[str], ref: str = "main") -> str:
    """Copy ``store`` at ``ref`` into ``out_dir`` (must not exist or be empty); returns the path."""
    import zarr
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync
    from zarr.storage import LocalStore

    target = Path(out_dir).expanduser().resolve()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise StoreError(f"export target {target} exists and is not an empty directory")
    sid = store.resolve(ref)
    source = store.repo.readonly_session(snapshot_id=sid).store
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        dest = LocalStore(str(tmp))
        proto = default_buffer_prototype()

        async def copy() -> int:
            sem = asyncio.Semaphore(COPY_CONCURRENCY)
            keys = [k async for k in source.list()]

            async def one(key: str) -> None:
                async with sem:
                    buf = await source.get(key, proto)
                    if buf is not None:
                        await dest.set(key, buf)

            await asyncio.gather(*(one(k) for k in keys))
            return len(keys)

        sync(copy())
        group = zarr.open_group(str(tmp), mode="r+", zarr_format=3)
        group.attrs.update({"exported_from": store.config.location, "exported_ref": ref, "snapshot_id": sid})
        if target.exists():
            target.rmdir()
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return str(target)
