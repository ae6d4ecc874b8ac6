"""ROI -> pixel grid in the local UTM zone, snapped to the ``scale_m`` lattice.

The rule, in true metres on the ground (never Web Mercator):

* CRS: the UTM zone of the ROI centre, ``EPSG:326zz`` north of the equator and
  ``EPSG:327zz`` south of it (zone = floor((lon + 180) / 6) + 1; the Norway and
  Svalbard exceptions are not applied, so every point maps to its regular zone).
* ``PointBuffer``: a square of ``n = ceil(2 * buffer_m / scale_m)`` pixels a side,
  centred on the point and with its upper-left corner rounded to a multiple of
  ``scale_m``. A 2048 m buffer at 10 m gives 410 x 410 px.
* ``BBox``: the box edges (densified) are projected to UTM; the grid is their
  bounding rectangle floored/ceiled outward to the lattice.

Rows run north to south (negative y step): row 0 is the northern edge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from .errors import SpecError
from .specs import BBox, PointBuffer

# Guard against zero-size or absurd grids independent of the spec checks.
MAX_GRID_SIDE = 32_768


@dataclass(frozen=True)
class PixelGrid:
    """A north-up raster grid: CRS, affine transform and size.

    ``transform`` is the GDAL/affine order ``(a, b, c, d, e, f)``:
    ``x = a*col + b*row + c`` and ``y = d*col + e*row + f`` for pixel corners.
    """

    epsg: int
    transform: tuple[float, float, float, float, float, float]
    width: int
    height: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "transform", tuple(float(v) for v in self.transform))
        if not (0 < self.width <= MAX_GRID_SIDE and 0 < self.height <= MAX_GRID_SIDE):
            raise SpecError("grid", (self.width, self.height), f"each side must be 1..{MAX_GRID_SIDE} px")

    @property
    def crs(self) -> str:
        return f"EPSG:{self.epsg}"

    @property
    def res(self) -> float:
        return self.transform[0]

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(minx, miny, maxx, maxy) in CRS metres."""
        a, _, c, _, e, f = self.transform
        return (c, f + e * self.height, c + a * self.width, f)

    def xy_centers(self, width: int | None = None, height: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Cell-centre coordinates when the grid's extent is split into ``width`` x ``height`` cells.

        With no arguments: the centres of this grid's pixels. With another size:
        the centres of a coarser grid covering the same extent (a token grid).
        """
        w = self.width if width is None else width
        h = self.height if height is None else height
        minx, miny, maxx, maxy = self.bounds
        dx, dy = (maxx - minx) / w, (maxy - miny) / h
        xs = minx + dx * (np.arange(w) + 0.5)
        ys = maxy - dy * (np.arange(h) + 0.5)
        return xs, ys

    def to_dict(self) -> dict[str, Any]:
        return {"epsg": self.epsg, "transform": list(self.transform), "width": self.width, "height": self.height}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PixelGrid:
        return cls(int(data["epsg"]), tuple(data["transform"]), int(data["width"]), int(data["height"]))


def utm_zone(lon: float) -> int:
    """Regular UTM zone number 1..60 (lon 180 falls in zone 60)."""
    return min(int(math.floor((lon + 180.0) / 6.0)) + 1, 60)


def utm_epsg(lon: float, lat: float) -> int:
    """EPSG code of the WGS 84 / UTM zone containing (lon, lat)."""
    return (32600 if lat >= 0 else 32700) + utm_zone(lon)


@lru_cache(maxsize=128)
def _to_utm(epsg: int):
    from pyproj import Transformer

    return Transformer.from_crs("EPSG:4326", f"EPSG:{epsg}", always_xy=True)


def roi_grid(roi: PointBuffer | BBox, scale_m: float = 10.0) -> PixelGrid:
    """The pixel grid of ``roi`` at ``scale_m`` (see the module docstring for the rule)."""
    if scale_m <= 0:
        raise SpecError("scale_m", scale_m, "must be > 0")
    lon, lat = roi.center
    epsg = utm_epsg(lon, lat)
    tr = _to_utm(epsg)
    if isinstance(roi, PointBuffer):
        x0, y0 = tr.transform(roi.lon, roi.lat)
        n = int(math.ceil(2.0 * roi.buffer_m / scale_m - 1e-9))
        half = n * scale_m / 2.0
        minx = round((x0 - half) / scale_m) * scale_m
        maxy = round((y0 + half) / scale_m) * scale_m
        return PixelGrid(epsg, (scale_m, 0.0, minx, 0.0, -scale_m, maxy), n, n)
    # Densify the edges: a lon/lat box is curved in UTM.
    t = np.linspace(0.0, 1.0, 33)
    lons = np.concatenate(
        [roi.minlon + (roi.maxlon - roi.minlon) * t, np.full_like(t, roi.maxlon)]
        + [roi.maxlon - (roi.maxlon - roi.minlon) * t, np.full_like(t, roi.minlon)]
    )
    lats = np.concatenate(
        [np.full_like(t, roi.minlat), roi.minlat + (roi.maxlat - roi.minlat) * t]
        + [np.full_like(t, roi.maxlat), roi.maxlat - (roi.maxlat - roi.minlat) * t]
    )
    xs, ys = tr.transform(lons, lats)
    minx = math.floor(float(np.min(xs)) / scale_m) * scale_m
    maxx = math.ceil(float(np.max(xs)) / scale_m) * scale_m
    miny = math.floor(float(np.min(ys)) / scale_m) * scale_m
    maxy = math.ceil(float(np.max(ys)) / scale_m) * scale_m
    width = max(1, int(round((maxx - minx) / scale_m)))
    height = max(1, int(round((maxy - miny) / scale_m)))
    return PixelGrid(epsg, (scale_m, 0.0, minx, 0.0, -scale_m, maxy), width, height)


def grid_lonlat_center(grid: PixelGrid) -> tuple[float, float]:
    """The lon/lat of the grid centre (for reports and maps)."""
    from pyproj import Transformer

    minx, miny, maxx, maxy = grid.bounds
    tr = Transformer.from_crs(f"EPSG:{grid.epsg}", "EPSG:4326", always_xy=True)
    lon, lat = tr.transform((minx + maxx) / 2, (miny + maxy) / 2)
    return float(lon), float(lat)
