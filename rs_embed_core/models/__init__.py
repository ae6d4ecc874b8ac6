"""Model adapters behind a small registry (RemoteCLIP today).

``load_model`` returns a cached adapter; ``make_dev_checkpoint`` writes clearly
labelled random-weight checkpoints for tests and demos. Heavy libraries (torch,
open_clip, rshf) load only when a model is loaded.
"""

from __future__ import annotations

import os
from pathlib import Path

from .base import ModelInfo, clear_model_cache, list_models, load_model, model_info, register_model


def make_dev_checkpoint(out_dir: str | os.PathLike[str], arch: str = "ViT-B-32", seed: int = 0) -> Path:
    """See :func:`rs_embed_core.models.devckpt.make_dev_checkpoint`."""
    from .devckpt import make_dev_checkpoint as _make

    return _make(out_dir, arch=arch, seed=seed)


__all__ = [
    "ModelInfo",
    "clear_model_cache",
    "list_models",
    "load_model",
    "make_dev_checkpoint",
    "model_info",
    "register_model",
]
