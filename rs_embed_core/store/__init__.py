"""The versioned embedding store (Icechunk repository of Zarr v3 arrays) and its reader.

Usage::

    store = EmbeddingStore.open("s3://bucket/embeddings")        # or a local directory
    with store.writer() as w:
        for emb in embeddings:
            w.write(emb)
        w.commit("2026-11 refresh", {"flow_run_id": run_id})
    ds = open_embeddings("s3://bucket/embeddings", ref="2026-11")

icechunk / zarr / xarray load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "StoreConfig": "config",
    "EmbeddingStore": "writer",
    "StoreWriter": "writer",
    "open_embeddings": "reader",
    "select_roi": "reader",
    "select_month": "reader",
    "entry_grid": "reader",
    "export_zarr": "export",
    "ENTRY_FIELDS": "layout",
    "SCHEMA_VERSION": "layout",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rs_embed_core.store' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
