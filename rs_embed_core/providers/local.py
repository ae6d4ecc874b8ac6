"""Imagery a user already has: GeoTIFF / COG files on disk.

Each file is one acquisition. Its bands are found by band description (``B4``,
``B3``, ``B2``, ...) or, for a file with exactly the requested number of bands and
no descriptions, by position in the requested order. Its date comes from a tag
(``ACQUISITION_DATE``, ``DATE_ACQUIRED``, ``SENSING_TIME`` or ``TIFFTAG_DATETIME``)
or from a ``YYYYMMDD`` / ``YYYY-MM-DD`` in the file name. Files inside the window
are reprojected onto the ROI's UTM grid and composited like Earth Engine does.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..chip import Chip
from ..errors import NoImageryError, ProviderConfigError, SpecError
from ..grid import roi_grid
from ..specs import ROI, SensorSpec, TemporalSpec

_DATE_TAGS = ("ACQUISITION_DATE", "DATE_ACQUIRED", "SENSING_TIME", "DATETIME", "TIFFTAG_DATETIME")
_NAME_DATE = re.compile(r"(20\d{2})-?(\d{2})-?(\d{2})")
_SUFFIXES = (".tif", ".tiff")


def _parse_date(text: str) -> dt.date | None:
    m = _NAME_DATE.search(text.replace(":", "-"))
    if not m:
        return None
    try:
        return dt.date(int(m[1]), int(m[2]), int(m[3]))
    except ValueError:
        return None


class LocalRasterProvider:
    """Composites of local GeoTIFF/COG files, reprojected onto each ROI grid.

    Args:
        path: a folder of ``.tif``/``.tiff`` files (searched recursively) or one file.
        nodata: DN value meaning "no observation" when a file declares none.
    """

    name = "local"
    version = "1"

    def __init__(self, path: str | Path, nodata: int = 0) -> None:
        self.path = Path(path).expanduser().resolve()
        if not self.path.exists():
            raise ProviderConfigError(f"LocalRasterProvider path {str(self.path)!r} does not exist")
        self.nodata = int(nodata)

    def files(self) -> list[Path]:
        if self.path.is_file():
            return [self.path]
        return sorted(p for p in self.path.rglob("*") if p.suffix.lower() in _SUFFIXES and p.is_file())

    def describe(self) -> dict[str, Any]:
        # The file set and their sizes/mtimes enter the cache key: new or edited
        # files give new chips instead of stale cache hits.
        h = hashlib.sha256()
        for f in self.files():
            st = f.stat()
            h.update(f"{f.relative_to(self.path.parent)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        return {"path": str(self.path), "files_sha256": h.hexdigest(), "nodata": self.nodata}

    def _date(self, src: Any, path: Path) -> dt.date:
        tags = src.tags()
        for key in _DATE_TAGS:
            if key in tags and (d := _parse_date(tags[key])):
                return d
        if d := _parse_date(path.name):
            return d
        raise ProviderConfigError(
            f"{path}: no acquisition date: add a tag ACQUISITION_DATE=YYYY-MM-DD or put YYYYMMDD in the file name"
        )

    def _band_indexes(self, src: Any, path: Path, bands: tuple[str, ...]) -> list[int]:
        desc = [(d or "").strip().upper() for d in src.descriptions]
        if all(b.upper() in desc for b in bands):
            return [desc.index(b.upper()) + 1 for b in bands]
        if src.count == len(bands) and not any(desc):
            return list(range(1, len(bands) + 1))
        raise SpecError(
            "bands",
            bands,
            f"{path.name} has band descriptions {desc or 'none'} ({src.count} bands); name the bands by description "
            f"or give a {len(bands)}-band file in the order {', '.join(bands)}",
        )

    def fetch(self, roi: ROI, temporal: TemporalSpec, sensor: SensorSpec) -> Chip:
        import rasterio
        from affine import Affine
        from rasterio.warp import Resampling, reproject

        grid = roi_grid(roi, sensor.scale_m)
        dst_transform = Affine(*grid.transform)
        stack: list[np.ndarray] = []
        used: list[tuple[dt.date, str]] = []
        for path in self.files():
            with rasterio.open(path) as src:
                day = self._date(src, path)
                if not temporal.start <= day < temporal.end:
                    continue
                idx = self._band_indexes(src, path, sensor.bands)
                nodata = self.nodata if src.nodata is None else src.nodata
                out = np.full((len(idx), grid.height, grid.width), self.nodata, dtype=np.uint16)
                for i, b in enumerate(idx):
                    reproject(
                        source=rasterio.band(src, b),
                        destination=out[i],
                        src_nodata=nodata,
                        dst_nodata=self.nodata,
                        dst_transform=dst_transform,
                        dst_crs=grid.crs,
                        resampling=Resampling.bilinear,
                    )
            valid = np.all(out != self.nodata, axis=0)
            if valid.any():
                stack.append(np.where(valid, out, 0).astype(np.float32))
                stack[-1][:, ~valid] = np.nan
                used.append((day, path.stem))
        if not used:
            raise NoImageryError(
                f"no local raster in {self.path} covers ROI {roi.id} within {temporal.label()} "
                f"(files need a date in [{temporal.start}, {temporal.end}) and pixels inside the ROI)"
            )
        order = np.argsort([d for d, _ in used], kind="stable")
        data = np.stack([stack[i] for i in order])  # (N, C, H, W), NaN = no observation
        count = np.sum(~np.isnan(data[:, 0]), axis=0).astype(np.uint16)
        if sensor.composite == "median":
            with np.errstate(all="ignore"):
                comp = np.nanmedian(np.where(np.isnan(data), np.nan, data), axis=0) if len(data) > 1 else data[0]
        else:  # mosaic: the latest valid observation wins, as in Earth Engine
            comp = np.full(data.shape[1:], np.nan, dtype=np.float32)
            for layer in data:
                comp = np.where(np.isnan(layer), comp, layer)
        dn = np.nan_to_num(comp, nan=0.0).round().clip(0, 65535).astype(np.uint16)
        used_sorted = [used[i] for i in order]
        return Chip(
            dn=dn,
            bands=sensor.bands,
            grid=grid,
            valid=count,
            scene_ids=tuple(s for _, s in used_sorted),
            dates=tuple(d.isoformat() for d, _ in used_sorted),
            provider=self.name,
            request={"path": str(self.path), "window": temporal.to_dict(), "composite": sensor.composite},
        )
