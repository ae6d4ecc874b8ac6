"""The unit a provider returns: raw DN pixels on a known grid, with provenance."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import SpecError
from .grid import PixelGrid


@dataclass(frozen=True, eq=False)
class Chip:
    """Raw surface-reflectance DN (uint16, C x H x W) of one ROI and window.

    Attributes:
        dn: uint16 array (C, H, W) in ``bands`` order; 0 where no observation.
        bands: band names, e.g. ``("B4", "B3", "B2")``.
        grid: the pixel grid (CRS + affine transform) the pixels sit on.
        valid: uint16 (H, W) number of observations per pixel (0 = no data).
        scene_ids: source scene ids that entered the composite.
        dates: their acquisition dates (ISO strings), same order.
        provider: provider name; ``synthetic`` chips say so.
        request: the exact fetch request (canonical dict) for provenance.
        meta: anything else the provider reported.
    """

    dn: np.ndarray
    bands: tuple[str, ...]
    grid: PixelGrid
    valid: np.ndarray
    scene_ids: tuple[str, ...] = ()
    dates: tuple[str, ...] = ()
    provider: str = "unknown"
    request: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        dn = np.asarray(self.dn)
        if dn.ndim != 3 or dn.shape[0] != len(self.bands):
            raise SpecError("dn", dn.shape, f"must be (C, H, W) with C = len(bands) = {len(self.bands)}")
        if dn.shape[1:] != (self.grid.height, self.grid.width):
            raise SpecError("dn", dn.shape, f"must match the grid size (H, W) = {(self.grid.height, self.grid.width)}")
        if dn.dtype != np.uint16:
            raise SpecError("dn.dtype", str(dn.dtype), "must be uint16 digital numbers")
        valid = np.asarray(self.valid)
        if valid.shape != dn.shape[1:]:
            raise SpecError("valid", valid.shape, f"must be (H, W) = {dn.shape[1:]}")
        object.__setattr__(self, "dn", dn)
        object.__setattr__(self, "valid", valid.astype(np.uint16, copy=False))
        object.__setattr__(self, "bands", tuple(self.bands))
        object.__setattr__(self, "scene_ids", tuple(self.scene_ids))
        object.__setattr__(self, "dates", tuple(self.dates))

    @property
    def valid_fraction(self) -> float:
        return float(np.count_nonzero(self.valid)) / float(self.valid.size)

    @property
    def n_scenes(self) -> int:
        return len(self.scene_ids)

    def provenance(self) -> dict[str, Any]:
        """What the provider reported, as JSON-ready data."""
        return {
            "provider": self.provider,
            "scene_ids": list(self.scene_ids),
            "dates": list(self.dates),
            "n_scenes": self.n_scenes,
            "valid_fraction": round(self.valid_fraction, 6),
            "grid": self.grid.to_dict(),
            "request": self.request,
            **self.meta,
        }
