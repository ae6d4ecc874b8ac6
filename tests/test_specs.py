"""Specs: validation names field and allowed values; canonical, hashable, JSON round-trip."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from rs_embed_core import BBox, OutputSpec, PointBuffer, SensorSpec, SpecError, TemporalSpec
from rs_embed_core.specs import DEFAULT_COLLECTION, canonical_json, check_input_prep, parse_roi, spec_from_dict

SPECS = [
    PointBuffer(13.4, 52.5, 2048, label="Berlin"),
    BBox(-0.2, 51.4, -0.1, 51.5),
    TemporalSpec.range("2026-01-01", "2026-04-01"),
    TemporalSpec.month(2026, 11),
    TemporalSpec.year(2025),
    SensorSpec(),
    SensorSpec(collection="hf:MVRL/remote-clip-vit-base-patch32", cloudy_pct=10, composite="mosaic"),
    OutputSpec.grid(),
    OutputSpec.pooled("max"),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: type(s).__name__)
def test_json_round_trip_and_hash(spec):
    text = json.dumps(spec.to_dict())
    back = spec_from_dict(json.loads(text))
    assert back == spec and hash(back) == hash(spec)
    assert canonical_json(back) == canonical_json(spec)


@pytest.mark.parametrize(
    ("make", "field", "allowed"),
    [
        (lambda: PointBuffer(181, 0, 100), "lon", "[-180, 180]"),
        (lambda: PointBuffer(0, -91, 100), "lat", "[-90, 90]"),
        (lambda: PointBuffer(0, 85, 100), "lat", "UTM band"),
        (lambda: PointBuffer(0, 0, 0), "buffer_m", "> 0"),
        (lambda: PointBuffer(0, 0, 1e6), "buffer_m", "<= 25000"),
        (lambda: PointBuffer(float("nan"), 0, 10), "lon", "finite"),
        (lambda: PointBuffer("x", 0, 10), "lon", "number"),
        (lambda: BBox(179.9, 0, -179.9, 0.1), "minlon", "antimeridian"),
        (lambda: BBox(0, 1, 0.1, 0.5), "maxlat", "> minlat"),
        (lambda: BBox(0, 0, 2, 2), "bbox", "at most 50 km"),
        (lambda: TemporalSpec.range("2026-02-01", "2026-02-01"), "end", "after start"),
        (lambda: TemporalSpec.range("2026-13-01", "2027-01-01"), "start", "ISO date"),
        (lambda: TemporalSpec.range("2010-01-01", "2011-01-01"), "start", "2015"),
        (lambda: TemporalSpec.month(2026, 13), "month", "1..12"),
        (lambda: TemporalSpec.parse_month("2026/11"), "month", "YYYY-MM"),
        (lambda: SensorSpec(composite="mean"), "composite", "median, mosaic"),
        (lambda: SensorSpec(cloudy_pct=101), "cloudy_pct", "0..100"),
        (lambda: SensorSpec(scale_m=0), "scale_m", "> 0"),
        (lambda: SensorSpec(collection="hf:"), "collection", "repo id or a local path"),
        (lambda: SensorSpec(collection=""), "collection", "non-empty"),
        (lambda: SensorSpec(bands=("B4", "B4")), "bands", "distinct"),
        (lambda: SensorSpec(cloud_mask="fmask"), "cloud_mask", "none, cloud_score_plus"),
        (lambda: OutputSpec.pooled("median"), "pooling", "mean, max"),
        (lambda: OutputSpec("tokens"), "mode", "grid, pooled"),
        (lambda: check_input_prep("crop"), "input_prep", "resize, tile"),
    ],
)
def test_bad_values_name_field_and_allowed(make, field, allowed):
    with pytest.raises(SpecError) as info:
        make()
    assert isinstance(info.value, ValueError)
    assert info.value.field == field
    assert allowed in str(info.value) and field in str(info.value)


def test_hf_collection_becomes_checkpoint_and_never_an_imagery_collection():
    s = SensorSpec(collection="hf:/models/my-ckpt")
    assert s.checkpoint == "/models/my-ckpt"
    assert s.collection == DEFAULT_COLLECTION
    assert "hf:" not in canonical_json(s.imagery_dict())
    assert "checkpoint" not in s.imagery_dict()
    # Same pixels whichever checkpoint: the imagery part is equal.
    assert s.imagery_dict() == SensorSpec().imagery_dict()


def test_loose_input_is_canonicalised():
    a = TemporalSpec.range(dt.datetime(2026, 1, 1, 12), "2026-02-01")
    assert a == TemporalSpec.month(2026, 1) and a.is_month and a.label() == "2026-01"
    assert SensorSpec(bands=["B4", "B3", "B2"], scale_m=10) == SensorSpec()
    assert PointBuffer(1, 2, 3, label="a") == PointBuffer(1.0, 2.0, 3.0, label="b")
    assert PointBuffer(1, 2, 3, label="a").id == PointBuffer(1, 2, 3).id != PointBuffer(1, 2, 4).id
    assert parse_roi((1, 2, 3)) == PointBuffer(1, 2, 3)
    assert parse_roi({"type": "BBox", "minlon": 0, "minlat": 0, "maxlon": 0.1, "maxlat": 0.1}) == BBox(0, 0, 0.1, 0.1)


def test_months_of_a_window():
    months = TemporalSpec.range("2025-11-15", "2026-02-02").months()
    assert [m.label() for m in months] == ["2025-11", "2025-12", "2026-01", "2026-02"]
    assert TemporalSpec.year(2025).months()[-1] == TemporalSpec.month(2025, 12)
