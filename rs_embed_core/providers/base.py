"""The provider interface and backend selection."""

from __future__ import annotations

import os
from typing import Any, Protocol, runtime_checkable

from ..chip import Chip
from ..errors import ProviderConfigError
from ..specs import ROI, SensorSpec, TemporalSpec, canonical_json

BACKENDS = ("auto", "gee", "synthetic", "local:<path>", "<Provider instance>")


@runtime_checkable
class Provider(Protocol):
    """Anything that turns (ROI, window, sensor) into a :class:`Chip`.

    ``name`` and ``version`` enter the chip cache key, so bump ``version`` when a
    provider starts producing different pixels for the same request.
    """

    name: str
    version: str

    def fetch(self, roi: ROI, temporal: TemporalSpec, sensor: SensorSpec) -> Chip: ...

    def describe(self) -> dict[str, Any]:
        """Settings that change pixels (enter the cache key); never credentials."""
        ...


def fetch_request(provider: Provider, roi: ROI, temporal: TemporalSpec, sensor: SensorSpec) -> dict[str, Any]:
    """The canonical fetch request: what a chip depends on, and nothing else.

    The checkpoint and the ROI label are not in it: neither changes pixels.
    """
    geometry = {k: v for k, v in roi.to_dict().items() if k != "label"}
    return {
        "roi": geometry,
        "temporal": temporal.to_dict(),
        "sensor": sensor.imagery_dict(),
        "provider": {"name": provider.name, "version": provider.version, **provider.describe()},
    }


def fetch_key(provider: Provider, roi: ROI, temporal: TemporalSpec, sensor: SensorSpec) -> str:
    """sha256 of the canonical fetch request (the chip cache key)."""
    import hashlib

    return hashlib.sha256(canonical_json(fetch_request(provider, roi, temporal, sensor)).encode()).hexdigest()


def gee_configured() -> bool:
    """Earth Engine counts as configured when a project is named in the environment."""
    return bool(os.environ.get("EE_PROJECT") or os.environ.get("GOOGLE_CLOUD_PROJECT"))


def resolve_backend(backend: Any = "auto") -> Provider:
    """Turn a ``backend`` argument into a provider instance."""
    if isinstance(backend, Provider) and not isinstance(backend, str):
        return backend
    if backend == "synthetic":
        from .synthetic import SyntheticProvider

        return SyntheticProvider()
    if isinstance(backend, str) and backend.startswith("local:"):
        from .local import LocalRasterProvider

        return LocalRasterProvider(backend[len("local:") :])
    if backend == "gee" or (backend == "auto" and gee_configured()):
        try:
            from .gee import GeeProvider
        except ImportError as exc:  # the Earth Engine provider is optional at import time
            raise ProviderConfigError(f"backend={backend!r}: the Earth Engine provider is unavailable ({exc})") from exc
        return GeeProvider()
    if backend == "auto":
        raise ProviderConfigError(
            "backend='auto' found no configured provider: set EE_PROJECT (or GOOGLE_CLOUD_PROJECT) and authenticate "
            "with `earthengine authenticate` to use Earth Engine, or pass backend='synthetic', "
            "backend='local:<folder of GeoTIFFs>' or a provider instance"
        )
    raise ProviderConfigError(f"backend={backend!r} is invalid: must be one of {', '.join(BACKENDS)}")
