"""Chip cache (scaffold: replaced by the content-addressed cache of issue 3)."""

from __future__ import annotations

from typing import Any

from .chip import Chip
from .providers.base import Provider
from .specs import ROI, SensorSpec, TemporalSpec


def fetch_chip(provider: Provider, roi: ROI, temporal: TemporalSpec, sensor: SensorSpec, cache: Any = None) -> Chip:
    """Fetch a chip through the cache (scaffold: fetches directly)."""
    return provider.fetch(roi, temporal, sensor)
