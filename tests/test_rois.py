"""ROI lists from CSV / GeoJSON / inline values: forms, clear errors, duplicates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rs_embed_core.errors import SpecError
from rs_embed_core.rois import RoiFileError, load_rois, resolve_rois
from rs_embed_core.specs import BBox, PointBuffer


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_csv_points_and_labels(tmp_path: Path) -> None:
    p = _write(
        tmp_path,
        "rois.csv",
        "# field sites\nlabel,lon,lat,buffer_m\nparis,2.35,48.85,1000\n\nberlin,13.40,52.52,500\n",
    )
    rois = load_rois(p)
    assert rois == (PointBuffer(2.35, 48.85, 1000), PointBuffer(13.40, 52.52, 500))
    assert [r.label for r in rois] == ["paris", "berlin"]


def test_csv_bbox_and_default_buffer(tmp_path: Path) -> None:
    boxes = load_rois(_write(tmp_path, "b.csv", "minlon,minlat,maxlon,maxlat,name\n10,45,10.05,45.05,alps\n"))
    assert boxes == (BBox(10, 45, 10.05, 45.05),) and boxes[0].label == "alps"
    pts = load_rois(_write(tmp_path, "p.csv", "lon,lat\n1,2\n"), default_buffer_m=250)
    assert pts == (PointBuffer(1, 2, 250),)


def test_csv_bad_value_names_the_line(tmp_path: Path) -> None:
    p = _write(tmp_path, "rois.csv", "lon,lat,buffer_m\n1,2,100\n3,95,100\n")
    with pytest.raises(RoiFileError, match=r"rois.csv line 3: lat=.*latitude") as info:
        load_rois(p)
    assert isinstance(info.value, SpecError) and isinstance(info.value, ValueError)


def test_csv_missing_columns_and_ragged_rows(tmp_path: Path) -> None:
    with pytest.raises(RoiFileError, match=r"line 1: header .* lacks column\(s\) buffer_m"):
        load_rois(_write(tmp_path, "a.csv", "lon,lat\n1,2\n"))
    with pytest.raises(RoiFileError, match=r"line 3: has 2 cells, the header has 3"):
        load_rois(_write(tmp_path, "b.csv", "lon,lat,buffer_m\n1,2,3\n4,5\n"))
    with pytest.raises(RoiFileError, match="no ROI rows"):
        load_rois(_write(tmp_path, "c.csv", "lon,lat,buffer_m\n"))


def test_duplicates_rejected_with_both_places(tmp_path: Path) -> None:
    with pytest.raises(RoiFileError, match=r"line 3: duplicate ROI: same geometry .* as .*line 2"):
        load_rois(_write(tmp_path, "d.csv", "lon,lat,buffer_m\n1,2,100\n1.0,2.0,100.0\n"))
    with pytest.raises(RoiFileError, match=r"line 3: duplicate label 'x' \(also used at .*line 2\)"):
        load_rois(_write(tmp_path, "e.csv", "label,lon,lat,buffer_m\nx,1,2,100\nx,3,4,100\n"))
    with pytest.raises(RoiFileError, match=r"rois\[1\]: duplicate ROI"):
        resolve_rois([(1, 2, 100), {"lon": 1, "lat": 2, "buffer_m": 100}])


def test_geojson_points_polygons_and_errors(tmp_path: Path) -> None:
    fc = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "id": "a",
                "geometry": {"type": "Point", "coordinates": [5, 50]},
                "properties": {"buffer_m": 800},
            },
            {
                "type": "Feature",
                "properties": {"label": "field"},
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [[[5, 50], [5.02, 50], [5.02, 50.01], [5, 50.01], [5, 50]]],
                },
            },
        ],
    }
    p = _write(tmp_path, "r.geojson", json.dumps(fc))
    rois = load_rois(p)
    assert rois == (PointBuffer(5, 50, 800), BBox(5, 50, 5.02, 50.01))
    assert [r.label for r in rois] == ["a", "field"]

    fc["features"][0]["properties"] = {}
    with pytest.raises(RoiFileError, match=r"feature 0 \(a\): buffer_m=None .*properties.buffer_m"):
        load_rois(_write(tmp_path, "bad.geojson", json.dumps(fc)))
    fc["features"][0]["geometry"] = {"type": "LineString", "coordinates": [[0, 0], [1, 1]]}
    with pytest.raises(RoiFileError, match=r"feature 0 \(a\): geometry='LineString'"):
        load_rois(_write(tmp_path, "bad2.geojson", json.dumps(fc)))
    with pytest.raises(RoiFileError, match=r"line 1: is not valid JSON"):
        load_rois(_write(tmp_path, "bad3.json", "{nope"))


def test_resolve_inline_forms_and_paths(tmp_path: Path) -> None:
    rois = resolve_rois(
        [
            PointBuffer(1, 2, 100, label="p"),
            {"type": "BBox", "minlon": 3, "minlat": 4, "maxlon": 3.01, "maxlat": 4.01},
            (5, 6, 200),
            {"minlon": 7, "minlat": 8, "maxlon": 7.01, "maxlat": 8.01, "label": "q"},
        ]
    )
    assert [type(r).__name__ for r in rois] == ["PointBuffer", "BBox", "PointBuffer", "BBox"]
    assert rois[3].label == "q"
    p = _write(tmp_path, "one.csv", "lon,lat,buffer_m\n1,2,100\n")
    assert resolve_rois(str(p)) == resolve_rois(p) == (PointBuffer(1, 2, 100),)
    with pytest.raises(RoiFileError, match="no such file"):
        resolve_rois(str(tmp_path / "missing.csv"))
    with pytest.raises(SpecError, match="rois="):
        resolve_rois("paris")
    with pytest.raises(RoiFileError, match=r"rois\[0\]: roi="):
        resolve_rois([{"foo": 1}])
