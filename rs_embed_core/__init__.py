"""rs_embed_core: RemoteCLIP embeddings of Sentinel-2 RGB composites.

The rs-embed style front door (``get_embedding`` and friends) plus the pieces the
Prefect layer composes. Heavy modules (torch, open_clip, ee, icechunk) load on first
use, so ``import rs_embed_core`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import (
    CacheError,
    CheckpointError,
    CheckpointNotFoundError,
    NoImageryError,
    PermanentProviderError,
    ProviderConfigError,
    ProviderError,
    RsEmbedError,
    SpecError,
    StoreError,
    StoreInputError,
    TransientProviderError,
    UnknownModelError,
)
from .specs import BBox, OutputSpec, PointBuffer, SensorSpec, TemporalSpec

__version__ = "0.1.0"

# name -> module that defines it; loaded on first attribute access.
_LAZY = {
    "get_embedding": "api",
    "get_embeddings_batch": "api",
    "get_embedding_from_data": "api",
    "Embedding": "embedding",
    "Chip": "chip",
    "PixelGrid": "grid",
    "roi_grid": "grid",
    "SyntheticProvider": "providers.synthetic",
    "LocalRasterProvider": "providers.local",
    "GeeProvider": "providers.gee",
    "ChipCache": "cache",
}

__all__ = [
    "BBox",
    "CacheError",
    "CheckpointError",
    "CheckpointNotFoundError",
    "NoImageryError",
    "OutputSpec",
    "PermanentProviderError",
    "PointBuffer",
    "ProviderConfigError",
    "ProviderError",
    "RsEmbedError",
    "SensorSpec",
    "SpecError",
    "StoreError",
    "StoreInputError",
    "TemporalSpec",
    "TransientProviderError",
    "UnknownModelError",
    "__version__",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rs_embed_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
