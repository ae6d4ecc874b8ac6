"""The model registry and the loader cache.

A model is registered by name (plus aliases) with the facts the API checks before
any pixels are fetched (bands it needs, whether it can take raw tensors) and a
loader. Loaded models are cached per (resolved checkpoint folder, device, half), so
``hf:<path>`` and the hub id that resolves to the same snapshot share one instance.
Nothing heavy is imported here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import SpecError, UnknownModelError


@dataclass(frozen=True)
class ModelInfo:
    """What the API needs to know about a model before loading it.

    Attributes:
        name: canonical name.
        aliases: other accepted names (the reference rs-embed's legacy ids).
        bands: the exact band order the model takes.
        provider_only: True when imagery must come from a provider (no ``backend="tensor"``).
        default_checkpoint: used when neither the caller nor ``SensorSpec.checkpoint`` names one.
        loader: ``(checkpoint, device, half) -> adapter``; may import heavy libraries.
    """

    name: str
    aliases: tuple[str, ...]
    bands: tuple[str, ...]
    provider_only: bool
    default_checkpoint: str
    loader: Callable[[str | None, str | None, bool], Any]


_REGISTRY: dict[str, ModelInfo] = {}
_ALIASES: dict[str, str] = {}
_cache: dict[tuple[str, str, str, bool], Any] = {}
_cache_lock = threading.Lock()


def register_model(info: ModelInfo) -> None:
    for key in (info.name, *info.aliases):
        _ALIASES[key.lower()] = info.name
    _REGISTRY[info.name] = info


def list_models(include_aliases: bool = False) -> list[str]:
    names = set(_REGISTRY) | (set(_ALIASES) if include_aliases else set())
    return sorted(names)


def model_info(name: str) -> ModelInfo:
    """Look a model up by name or alias (case-insensitive).

    Raises:
        UnknownModelError: naming the known models and aliases.
    """
    key = name.lower().strip() if isinstance(name, str) else None
    if key not in _ALIASES:
        known = ", ".join(f"{n} (aliases: {', '.join(_REGISTRY[n].aliases) or '-'})" for n in sorted(_REGISTRY))
        raise UnknownModelError(f"unknown model {name!r}; known models: {known}")
    return _REGISTRY[_ALIASES[key]]


def check_bands(info: ModelInfo, bands: tuple[str, ...]) -> None:
    if tuple(bands) != info.bands:
        raise SpecError(
            "bands",
            tuple(bands),
            f"{info.name} takes exactly {info.bands} (Sentinel-2 red, green, blue, in that order)",
        )


def check_backend(info: ModelInfo, backend: Any) -> None:
    if info.provider_only and isinstance(backend, str) and backend.lower() == "tensor":
        raise SpecError(
            "backend",
            backend,
            f"{info.name} is provider-only here: pass 'auto', 'gee', 'synthetic', 'local:<path>' or a provider "
            "instance, or call get_embedding_from_data(...) with your own (C, H, W) DN array",
        )


def load_model(
    name: str = "remoteclip", checkpoint: str | None = None, device: str | None = None, half: bool = False
) -> Any:
    """Load (or reuse) a model adapter.

    Args:
        name: model name or alias.
        checkpoint: hub repo id, ``hf:<id or path>`` or local folder; ``None`` -> the model's default.
        device: ``None``/``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        half: float16 weights and inputs (CUDA only); recorded in the adapter's meta.
    """
    info = model_info(name)
    return info.loader(checkpoint, device, half)


def _load_remoteclip(checkpoint: str | None, device: str | None, half: bool) -> Any:
    from .checkpoints import resolve_checkpoint
    from .remoteclip import RemoteClipAdapter, auto_device

    dev = auto_device(device)
    if half and not dev.startswith("cuda"):
        raise SpecError("half", half, f"half precision needs a CUDA device (device is {dev!r})")
    ckpt = resolve_checkpoint(checkpoint)
    key = ("remoteclip", str(ckpt.weights_file), dev, bool(half))
    with _cache_lock:
        hit = _cache.get(key)
        if hit is None:
            hit = RemoteClipAdapter.from_checkpoint(ckpt, device=dev, half=half)
            _cache[key] = hit
    return hit


def clear_model_cache() -> None:
    """Forget loaded models (tests; frees memory)."""
    with _cache_lock:
        _cache.clear()


register_model(
    ModelInfo(
        name="remoteclip",
        aliases=("remoteclip_s2rgb",),
        bands=("B4", "B3", "B2"),
        provider_only=True,
        default_checkpoint="MVRL/remote-clip-vit-base-patch32",
        loader=_load_remoteclip,
    )
)
