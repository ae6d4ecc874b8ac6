"""Pixel grid: local UTM zone, true metres, origin snapped to the lattice."""

from __future__ import annotations

import math

import pytest
from pyproj import Geod, Transformer

from rs_embed_core import BBox, PointBuffer
from rs_embed_core.grid import roi_grid, utm_epsg

GEOD = Geod(ellps="WGS84")


@pytest.mark.parametrize(
    ("lon", "lat", "epsg"),
    [
        (13.4, 52.5, 32633),  # Berlin
        (-60.1, -3.2, 32720),  # Amazon, southern hemisphere
        (151.2, -33.9, 32756),  # Sydney
        (-70.0, 60.0, 32619),  # 60N: Web Mercator would be off by 2x here
        (0.0, 0.5, 32631),  # zone edge: lon 0 starts zone 31
        (-0.0001, 0.5, 32630),
        (179.99, 10.0, 32660),
        (-180.0, 10.0, 32601),
    ],
)
def test_point_buffer_grid_is_true_metres(lon, lat, epsg):
    g = roi_grid(PointBuffer(lon, lat, 2048), 10)
    assert g.epsg == epsg == utm_epsg(lon, lat)
    assert (g.width, g.height) == (410, 410)
    a, b, c, d, e, f = g.transform
    assert (a, b, d, e) == (10, 0, 0, -10)
    assert c % 10 == 0 and f % 10 == 0  # snapped to the 10 m lattice
    # The ground distance across the chip, measured on the ellipsoid, is ~4.1 km.
    inv = Transformer.from_crs(g.crs, "EPSG:4326", always_xy=True)
    minx, miny, maxx, maxy = g.bounds
    lon0, lat0 = inv.transform(minx, (miny + maxy) / 2)
    lon1, lat1 = inv.transform(maxx, (miny + maxy) / 2)
    _, _, dist = GEOD.inv(lon0, lat0, lon1, lat1)
    assert dist == pytest.approx(4100, rel=0.002)
    # The point lies at the centre of the chip (within one pixel).
    x0, y0 = Transformer.from_crs("EPSG:4326", g.crs, always_xy=True).transform(lon, lat)
    assert abs((minx + maxx) / 2 - x0) <= 10 and abs((miny + maxy) / 2 - y0) <= 10


def test_rule_sizes():
    assert roi_grid(PointBuffer(5, 45, 1120), 10).width == 224
    assert roi_grid(PointBuffer(5, 45, 1125), 10).width == 225  # partial pixels round up
    assert roi_grid(PointBuffer(5, 45, 2048), 20).width == 205


def test_bbox_grid_covers_box():
    box = BBox(13.30, 52.45, 13.36, 52.49)
    g = roi_grid(box, 10)
    fwd = Transformer.from_crs("EPSG:4326", g.crs, always_xy=True)
    minx, miny, maxx, maxy = g.bounds
    for lon, lat in [(box.minlon, box.minlat), (box.maxlon, box.maxlat), (box.minlon, box.maxlat)]:
        x, y = fwd.transform(lon, lat)
        assert minx <= x <= maxx and miny <= y <= maxy
    # ~4.1 km x 4.4 km at 52.5N
    assert g.width == pytest.approx(0.06 * 111_320 * math.cos(math.radians(52.47)) / 10, rel=0.03)
    assert g.height == pytest.approx(0.04 * 111_132 / 10, rel=0.03)


def test_bbox_near_antimeridian_west_side_works_and_crossing_is_rejected():
    g = roi_grid(BBox(179.95, -17.1, 179.999, -17.05), 10)
    assert g.epsg == 32760
    from rs_embed_core import SpecError

    with pytest.raises(SpecError, match="antimeridian"):
        BBox(179.95, -17.1, -179.95, -17.05)


def test_token_centres_are_inside_the_chip():
    g = roi_grid(PointBuffer(13.4, 52.5, 1120), 10)
    xs, ys = g.xy_centers(7, 7)
    assert xs[0] == g.bounds[0] + 160 and ys[0] == g.bounds[3] - 160  # 320 m cells
    assert all(xs[1:] > xs[:-1]) and all(ys[1:] < ys[:-1])  # row 0 is north
