"""Deterministic synthetic Sentinel-2 scenes for demos and tests.

Scenes are drawn from world coordinates (UTM metres) rather than pixel indices, so
overlapping ROIs see the same landscape and a ROI looks the same on every fetch.
The landscape has crop fields with seasonal phenology, forest, water bodies, towns
and a road lattice; each month gets a few "acquisitions" with their own cloud cover,
filtered by ``SensorSpec.cloudy_pct`` like the real collection, and per-pixel cloud
masks lower the observation count. Every chip is marked ``synthetic``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

import numpy as np

from ..chip import Chip
from ..errors import NoImageryError, SpecError
from ..grid import PixelGrid, roi_grid
from ..specs import ROI, SensorSpec, TemporalSpec

# Surface reflectance (0..1) per land-cover class and band; B8 (NIR) makes
# vegetation separable if a user asks for it.
_REFLECTANCE: dict[str, dict[str, float]] = {
    "water": {"B2": 0.045, "B3": 0.055, "B4": 0.030, "B8": 0.020},
    "town": {"B2": 0.110, "B3": 0.120, "B4": 0.140, "B8": 0.210},
    "road": {"B2": 0.095, "B3": 0.105, "B4": 0.115, "B8": 0.150},
    "forest": {"B2": 0.025, "B3": 0.045, "B4": 0.025, "B8": 0.290},
    "crop": {"B2": 0.035, "B3": 0.085, "B4": 0.035, "B8": 0.420},
    "soil": {"B2": 0.080, "B3": 0.110, "B4": 0.150, "B8": 0.230},
    "cloud": {"B2": 0.550, "B3": 0.560, "B4": 0.570, "B8": 0.600},
}
SUPPORTED_BANDS = ("B2", "B3", "B4", "B8")


def _hash2(ix: np.ndarray, iy: np.ndarray, seed: int) -> np.ndarray:
    """Uniform [0, 1) per integer lattice point (a cheap integer mix, vectorised)."""
    h = ix.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) ^ iy.astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
    h ^= np.uint64(((seed & 0xFFFFFFFF) * 0x165667B19E3779F9) % 2**64)
    h ^= h >> np.uint64(29)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(32)
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _value_noise(x: np.ndarray, y: np.ndarray, cell: float, seed: int) -> np.ndarray:
    """Smooth noise in [0, 1) with features about ``cell`` metres across."""
    gx, gy = x / cell, y / cell
    ix, iy = np.floor(gx), np.floor(gy)
    fx, fy = gx - ix, gy - iy
    sx, sy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
    ix, iy = ix.astype(np.int64), iy.astype(np.int64)
    v00, v10 = _hash2(ix, iy, seed), _hash2(ix + 1, iy, seed)
    v01, v11 = _hash2(ix, iy + 1, seed), _hash2(ix + 1, iy + 1, seed)
    return (v00 * (1 - sx) + v10 * sx) * (1 - sy) + (v01 * (1 - sx) + v11 * sx) * sy


def _fractal(x: np.ndarray, y: np.ndarray, cell: float, seed: int) -> np.ndarray:
    return (
        0.6 * _value_noise(x, y, cell, seed)
        + 0.3 * _value_noise(x, y, cell / 2.7, seed + 1)
        + 0.1 * _value_noise(x, y, cell / 7.1, seed + 2)
    )


class SyntheticProvider:
    """Realistic-looking, deterministic Sentinel-2 L2A composites (no network).

    Args:
        seed: landscape seed; the same seed gives the same world.
        cloud_cover: mean fraction of each acquisition covered by cloud (0..1).
        scenes_per_month: acquisitions generated per calendar month (before the
            ``cloudy_pct`` filter), like Sentinel-2's ~5-day revisit.
    """

    name = "synthetic"
    version = "1"
    synthetic = True

    def __init__(self, seed: int = 0, cloud_cover: float = 0.2, scenes_per_month: int = 6) -> None:
        if not 0 <= cloud_cover <= 1:
            raise SpecError("cloud_cover", cloud_cover, "must be within 0..1")
        if scenes_per_month < 1:
            raise SpecError("scenes_per_month", scenes_per_month, "must be >= 1")
        self.seed = int(seed)
        self.cloud_cover = float(cloud_cover)
        self.scenes_per_month = int(scenes_per_month)

    def describe(self) -> dict[str, Any]:
        return {"seed": self.seed, "cloud_cover": self.cloud_cover, "scenes_per_month": self.scenes_per_month}

    def scenes(self, grid: PixelGrid, temporal: TemporalSpec, sensor: SensorSpec) -> list[tuple[str, dt.date, float]]:
        """(scene id, date, cloudy %) of the acquisitions that pass the cloud filter."""
        out = []
        zone = grid.epsg % 100
        tile = f"{zone:02d}{'N' if grid.epsg < 32700 else 'S'}{int(grid.transform[2] // 100_000):02d}{int(grid.transform[5] // 100_000):03d}"
        span = (temporal.end - temporal.start).days
        n = max(1, round(self.scenes_per_month * span / 30.4))
        for i in range(n):
            day = temporal.start + dt.timedelta(days=int(i * span / n))
            key = f"{self.seed}|{tile}|{day.isoformat()}".encode()
            cloudy = int.from_bytes(hashlib.sha256(key).digest()[:4], "big") / 2**32
            cloudy_pct = round(100 * min(1.0, cloudy * 2 * self.cloud_cover), 2)
            if cloudy_pct <= sensor.cloudy_pct:
                out.append((f"SYN_{day:%Y%m%dT103021}_T{tile}", day, cloudy_pct))
        return out

    def fetch(self, roi: ROI, temporal: TemporalSpec, sensor: SensorSpec) -> Chip:
        unknown = [b for b in sensor.bands if b not in SUPPORTED_BANDS]
        if unknown:
            raise SpecError("bands", sensor.bands, f"the synthetic provider has {', '.join(SUPPORTED_BANDS)}")
        grid = roi_grid(roi, sensor.scale_m)
        scenes = self.scenes(grid, temporal, sensor)
        if not scenes:
            raise NoImageryError(
                f"no synthetic scene for ROI {roi.id} in {temporal.label()} with cloudy_pct <= {sensor.cloudy_pct:g}; "
                "widen the window or raise cloudy_pct"
            )
        xs, ys = grid.xy_centers()
        x, y = np.meshgrid(xs, ys)
        refl = self._landscape(x, y, temporal, grid.epsg >= 32700, sensor.bands)

        # Per-scene cloud masks lower the observation count; pixels clouded in every
        # scene keep a cloud's brightness, like residual haze in a real composite.
        count = np.zeros(x.shape, dtype=np.uint16)
        for i, (_, day, pct) in enumerate(scenes):
            clouds = _fractal(x, y, 2500.0, self.seed + 1000 + day.toordinal() + i)
            count += (clouds >= np.quantile(clouds, pct / 100.0) if pct > 0 else np.ones_like(clouds, bool)).astype(
                np.uint16
            )
        no_obs = count == 0
        if no_obs.any():
            for b, band in enumerate(sensor.bands):
                refl[b][no_obs] = _REFLECTANCE["cloud"][band]
        dn = np.clip(np.rint(refl * 10_000), 0, 65535).astype(np.uint16)
        return Chip(
            dn=dn,
            bands=sensor.bands,
            grid=grid,
            valid=count,
            scene_ids=tuple(s[0] for s in scenes),
            dates=tuple(s[1].isoformat() for s in scenes),
            provider=self.name,
            request={"collection": sensor.collection, "window": temporal.to_dict(), **self.describe()},
            meta={"synthetic": True, "cloudy_pct": [s[2] for s in scenes]},
        )

    def _landscape(
        self, x: np.ndarray, y: np.ndarray, temporal: TemporalSpec, south: bool, bands: tuple[str, ...]
    ) -> np.ndarray:
        s = self.seed
        mid = temporal.start + (temporal.end - temporal.start) / 2
        season = (mid.month - 1 + (6 if south else 0)) % 12  # months since January, hemisphere-aware
        # Fields: a 240 m x 320 m parcel lattice, each parcel with its own crop calendar.
        pid_x, pid_y = np.floor(x / 240.0), np.floor(y / 320.0)
        phase = _hash2(pid_x.astype(np.int64), pid_y.astype(np.int64), s + 7)
        green = np.clip(np.sin(2 * np.pi * ((season - 3) / 12.0 - 0.25 * phase)) * 0.6 + 0.4, 0, 1)
        green *= _hash2(pid_x.astype(np.int64), pid_y.astype(np.int64), s + 8) > 0.15  # some fields lie fallow
        water = _fractal(x, y, 1800.0, s + 11) > 0.74
        forest = _fractal(x, y, 1400.0, s + 12) > 0.68
        town = _fractal(x, y, 2200.0, s + 13) > 0.72
        wiggle = 60 * np.sin(y / 700.0)
        road = (np.abs(((x + wiggle) % 1500.0) - 750.0) < 7.5) | (np.abs((y % 1900.0) - 950.0) < 7.5)
        texture = 1.0 + 0.06 * (
            _hash2(np.floor(x / 10).astype(np.int64), np.floor(y / 10).astype(np.int64), s + 3) - 0.5
        )
        out = np.empty((len(bands), *x.shape), dtype=np.float64)
        for b, band in enumerate(bands):
            r = _REFLECTANCE["soil"][band] * (1 - green) + _REFLECTANCE["crop"][band] * green
            r = np.where(forest, _REFLECTANCE["forest"][band], r)
            r = np.where(town, _REFLECTANCE["town"][band], r)
            r = np.where(road, _REFLECTANCE["road"][band], r)
            r = np.where(water, _REFLECTANCE["water"][band], r)
            out[b] = r * texture
        return out
