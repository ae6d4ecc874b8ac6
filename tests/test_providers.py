"""Synthetic and local-raster providers: real pixels on the ROI grid."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from affine import Affine

from rs_embed_core import (
    BBox,
    NoImageryError,
    PointBuffer,
    ProviderConfigError,
    SensorSpec,
    SpecError,
    TemporalSpec,
)
from rs_embed_core.grid import roi_grid
from rs_embed_core.providers.base import fetch_key, fetch_request, resolve_backend
from rs_embed_core.providers.local import LocalRasterProvider
from rs_embed_core.providers.synthetic import SyntheticProvider

ROI = PointBuffer(13.4, 52.5, 1000)
JULY = TemporalSpec.month(2026, 7)


def test_synthetic_is_deterministic_realistic_and_labelled():
    p = SyntheticProvider(seed=3)
    a, b = p.fetch(ROI, JULY, SensorSpec()), p.fetch(ROI, JULY, SensorSpec())
    assert np.array_equal(a.dn, b.dn) and a.scene_ids == b.scene_ids
    assert a.dn.dtype == np.uint16 and a.dn.shape == (3, 200, 200)
    assert 100 < np.median(a.dn) < 3000  # S2 L2A DN scale (reflectance x 10000)
    assert len(np.unique(a.dn[0])) > 100  # textured, not flat
    assert a.meta["synthetic"] is True and a.provider == "synthetic"
    assert a.scene_ids and all(s.startswith("SYN_202607") for s in a.scene_ids)
    assert 0 < a.valid_fraction <= 1
    other = SyntheticProvider(seed=4).fetch(ROI, JULY, SensorSpec())
    assert not np.array_equal(a.dn, other.dn)


def test_synthetic_world_is_consistent_across_overlapping_rois():
    p = SyntheticProvider(cloud_cover=0)
    big = p.fetch(PointBuffer(13.4, 52.5, 2000), JULY, SensorSpec())
    small_roi = BBox(13.39, 52.49, 13.41, 52.51)
    small = p.fetch(small_roi, JULY, SensorSpec())
    # Place the small chip inside the big one by the grid origins.
    (bx, by), (sx, sy) = (
        (big.grid.transform[2], big.grid.transform[5]),
        (small.grid.transform[2], small.grid.transform[5]),
    )
    c0, r0 = int((sx - bx) / 10), int((by - sy) / 10)
    window = big.dn[:, r0 : r0 + small.grid.height, c0 : c0 + small.grid.width]
    assert np.array_equal(window, small.dn)


def test_synthetic_seasons_and_cloud_filter():
    p = SyntheticProvider(seed=1)
    winter = p.fetch(ROI, TemporalSpec.month(2026, 1), SensorSpec())
    summer = p.fetch(ROI, JULY, SensorSpec())
    assert not np.array_equal(winter.dn, summer.dn)
    with pytest.raises(NoImageryError, match="cloudy_pct"):
        SyntheticProvider(cloud_cover=1.0).fetch(ROI, JULY, SensorSpec(cloudy_pct=0))


def _write_tif(path, grid, data, descriptions=None, tags=None, nodata=0):
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=grid.width,
        height=grid.height,
        count=data.shape[0],
        dtype="uint16",
        crs=grid.crs,
        transform=Affine(*grid.transform),
        nodata=nodata,
    ) as dst:
        dst.write(data)
        if descriptions:
            for i, d in enumerate(descriptions, 1):
                dst.set_band_description(i, d)
        if tags:
            dst.update_tags(**tags)


def test_local_rasters_composite_on_roi_grid(tmp_path):
    grid = roi_grid(ROI, 10)
    rng = np.random.default_rng(0)
    scenes = [rng.integers(500, 3000, size=(4, grid.height, grid.width), dtype=np.uint16) for _ in range(3)]
    scenes[2][:, :50, :] = 0  # a partly empty acquisition
    # Band descriptions in a different order than requested, plus an extra NIR band.
    order = ["B2", "B3", "B4", "B8"]
    _write_tif(tmp_path / "S2_20260703.tif", grid, scenes[0], order)
    _write_tif(tmp_path / "a.tif", grid, scenes[1], order, tags={"ACQUISITION_DATE": "2026-07-13"})
    _write_tif(tmp_path / "S2_20260723.tif", grid, scenes[2], order)
    _write_tif(tmp_path / "S2_20260803.tif", grid, scenes[0], order)  # outside the window
    chip = LocalRasterProvider(tmp_path).fetch(ROI, JULY, SensorSpec())
    assert chip.dates == ("2026-07-03", "2026-07-13", "2026-07-23")
    rgb = [np.stack([s[2], s[1], s[0]]).astype(np.float32) for s in scenes]
    expected = np.median(np.stack(rgb), axis=0)
    expected[:, :50, :] = np.median(np.stack(rgb[:2]), axis=0)[:, :50, :]
    assert np.allclose(chip.dn, np.round(expected), atol=1)
    assert chip.valid[:50].max() == 2 and chip.valid[50:].min() == 3
    mosaic = LocalRasterProvider(tmp_path).fetch(ROI, JULY, SensorSpec(composite="mosaic"))
    assert np.array_equal(mosaic.dn[:, 60:], rgb[2][:, 60:].astype(np.uint16))


def test_local_raster_reprojects_from_another_crs(tmp_path):
    # A file in Web Mercator covering the ROI: it must land on the UTM grid.
    from rasterio.warp import transform_bounds

    grid = roi_grid(ROI, 10)
    west, south, east, north = transform_bounds(grid.crs, "EPSG:3857", *grid.bounds)
    w, h = 300, 500
    data = np.full((3, h, w), 1234, dtype=np.uint16)
    with rasterio.open(
        tmp_path / "merc_2026-07-10.tif", "w", driver="GTiff", width=w, height=h, count=3, dtype="uint16",
        crs="EPSG:3857", transform=Affine((east - west) / w, 0, west, 0, -(north - south) / h, north), nodata=0,
    ) as dst:  # fmt: skip
        dst.write(data)
    chip = LocalRasterProvider(tmp_path).fetch(ROI, JULY, SensorSpec())
    assert chip.grid == grid and chip.valid_fraction > 0.95
    assert np.all(chip.dn[:, chip.valid > 0] == 1234)


def test_local_raster_errors(tmp_path):
    with pytest.raises(ProviderConfigError, match="does not exist"):
        LocalRasterProvider(tmp_path / "missing")
    grid = roi_grid(ROI, 10)
    _write_tif(tmp_path / "nodate.tif", grid, np.ones((3, grid.height, grid.width), np.uint16))
    with pytest.raises(ProviderConfigError, match="ACQUISITION_DATE"):
        LocalRasterProvider(tmp_path).fetch(ROI, JULY, SensorSpec())
    (tmp_path / "nodate.tif").unlink()
    _write_tif(tmp_path / "x_20260705.tif", grid, np.ones((2, grid.height, grid.width), np.uint16))
    with pytest.raises(SpecError, match="bands"):
        LocalRasterProvider(tmp_path).fetch(ROI, JULY, SensorSpec())
    with pytest.raises(NoImageryError, match="2026-08"):
        LocalRasterProvider(tmp_path).fetch(ROI, TemporalSpec.month(2026, 8), SensorSpec())


def test_fetch_key_depends_on_pixels_only():
    p = SyntheticProvider()
    k = fetch_key(p, ROI, JULY, SensorSpec())
    assert k == fetch_key(p, PointBuffer(13.4, 52.5, 1000, label="x"), JULY, SensorSpec(collection="hf:/x"))
    assert k != fetch_key(p, ROI, JULY, SensorSpec(cloudy_pct=10))
    assert k != fetch_key(SyntheticProvider(seed=1), ROI, JULY, SensorSpec())
    assert k != fetch_key(p, ROI, TemporalSpec.month(2026, 8), SensorSpec())
    assert "hf:" not in str(fetch_request(p, ROI, JULY, SensorSpec(collection="hf:/x")))


def test_backend_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("EE_PROJECT", raising=False)
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    assert isinstance(resolve_backend("synthetic"), SyntheticProvider)
    assert isinstance(resolve_backend(f"local:{tmp_path}"), LocalRasterProvider)
    p = SyntheticProvider(seed=9)
    assert resolve_backend(p) is p
    with pytest.raises(ProviderConfigError, match="EE_PROJECT"):
        resolve_backend("auto")
    with pytest.raises(ProviderConfigError, match="must be one of"):
        resolve_backend("sentinelhub")
