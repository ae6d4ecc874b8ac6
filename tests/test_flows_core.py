"""The core pieces the flows compose (no Prefect): requests, planning, batches, staging, pipeline."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest

from rs_embed_core.embedding import Embedding
from rs_embed_core.errors import CacheError, SpecError
from rs_embed_core.planning import (
    WorkItem,
    build_request,
    check_dispatch,
    forward_slots,
    make_batches,
    month_range,
    plan_entries,
    previous_month,
)
from rs_embed_core.specs import OutputSpec, PointBuffer, SensorSpec, TemporalSpec
from rs_embed_core.staging import StagingArea, default_staging_dir

IDENTITY = {"model": "remoteclip", "model_arch": "tiny", "checkpoint_sha256": "ab" * 32, "preprocess_path": "fallback"}


def test_build_request_validates_and_normalises(tmp_path: Path) -> None:
    req = build_request([(1, 2, 300)], months=["2024-06", "2024-05"], sensor={"cloudy_pct": 20}, checkpoint="/x/ck")
    assert [w.label() for w in req.windows] == ["2024-05", "2024-06"]
    assert req.sensor.cloudy_pct == 20 and req.sensor.checkpoint == "/x/ck"
    assert req.output == OutputSpec() and req.input_prep == "resize"
    assert [w.label() for w in build_request([(1, 2, 300)], window="2024-01-01..2024-03-01").windows] == [
        "2024-01",
        "2024-02",
    ]
    assert (
        build_request([(1, 2, 300)], window=["2024-01-05", "2024-01-20"]).windows[0].label() == "2024-01-05..2024-01-20"
    )
    with pytest.raises(SpecError, match="exactly one of months"):
        build_request([(1, 2, 300)])
    with pytest.raises(SpecError, match="batch_size"):
        build_request([(1, 2, 300)], months=["2024-05"], batch_size=0)
    with pytest.raises(SpecError, match="must not repeat"):
        build_request([(1, 2, 300)], months=["2024-05", "2024-05"])
    with pytest.raises(SpecError, match="input_prep"):
        build_request([(1, 2, 300)], months=["2024-05"], input_prep="crop")
    with pytest.raises(SpecError, match="dispatch"):
        check_dispatch("gpu")


def test_months() -> None:
    assert previous_month(dt.datetime(2026, 1, 3, tzinfo=dt.UTC)).label() == "2025-12"
    assert previous_month(dt.datetime(2026, 12, 1, 2, tzinfo=dt.UTC)).label() == "2026-11"
    assert [m.label() for m in month_range("2024-11", "2025-02")] == ["2024-11", "2024-12", "2025-01", "2025-02"]
    with pytest.raises(SpecError, match="end"):
        month_range("2025-02", "2024-11")


def test_plan_skips_identical_entries_unless_forced() -> None:
    req = build_request([(1, 2, 300), (3, 4, 300)], months=["2024-05"])
    keys = {(r.id, "2024-05-01"): f"{i:064x}" for i, r in enumerate(req.rois)}
    first = plan_entries(req, keys, IDENTITY, {})
    assert len(first.todo) == 2 and not first.skipped
    stored = {first.todo[0].key: first.todo[0].digest}
    again = plan_entries(req, keys, IDENTITY, stored)
    assert [i.key for i in again.skipped] == [first.todo[0].key] and len(again.todo) == 1
    assert len(plan_entries(req, keys, IDENTITY, stored, force=True).todo) == 2
    other = plan_entries(req, keys, {**IDENTITY, "checkpoint_sha256": "cd" * 32}, stored)
    assert not other.skipped  # new weights -> new digest -> recomputed


def test_batches_respect_size_and_tiles() -> None:
    sensor, output = SensorSpec(), OutputSpec()
    items = [
        {
            "item": WorkItem(
                PointBuffer(1 + i * 0.01, 2, 300), TemporalSpec.month(2024, 5), f"{i:064x}", "d"
            ).to_dict(),
            "chip": {},
        }
        for i in range(7)
    ]
    batches = make_batches(items, batch_size=3, sensor=sensor, output=output, input_prep="resize", identity=IDENTITY)
    assert [len(b["entries"]) for b in batches] == [3, 3, 1]
    assert len({b["key"] for b in batches}) == 3
    again = make_batches(items, batch_size=3, sensor=sensor, output=output, input_prep="resize", identity=IDENTITY)
    assert [b["key"] for b in again] == [b["key"] for b in batches]  # content keys are stable
    # 300 m buffer at 10 m = 60 px: one tile; 2000 m = 400 px: 2 x 2 tiles.
    assert forward_slots(PointBuffer(1, 2, 300), sensor, "tile") == 1
    assert forward_slots(PointBuffer(1, 2, 2000), sensor, "tile") == 4
    big = [
        {
            "item": WorkItem(PointBuffer(1 + i * 0.1, 2, 2000), TemporalSpec.month(2024, 5), "0" * 64).to_dict(),
            "chip": {},
        }
        for i in range(3)
    ]
    tiled = make_batches(big, batch_size=6, sensor=sensor, output=output, input_prep="tile", identity=IDENTITY)
    assert [len(b["entries"]) for b in tiled] == [1, 1, 1]  # 4 + 4 > 6: a chip is never split


def _embedding(i: int, grid_mode: bool) -> Embedding:
    import xarray as xr

    grid = xr.DataArray(
        np.full((4, 2, 3), i, np.float32),
        dims=("dim", "y", "x"),
        coords={"x": [5.0, 15.0, 25.0], "y": [20.0, 10.0]},
        attrs={"crs": "EPSG:32631", "transform": [10.0, 0.0, 0.0, 0.0, -10.0, 25.0]},
    )
    pooled = np.full(4, i, np.float32)
    meta = {"roi_id": f"pb-{i}", "time": "2024-05-01", "entry_digest": f"{i:064x}", "nested": {"a": [1, 2]}}
    return Embedding(
        data=grid if grid_mode else pooled, meta=meta, grid=grid, pooled=pooled, image_embedding=np.ones(3, np.float32)
    )


@pytest.mark.parametrize("grid_mode", [False, True])
def test_staging_round_trip_and_idempotence(tmp_path: Path, grid_mode: bool) -> None:
    area = StagingArea(tmp_path / "st")
    key = "ab" * 32
    assert not area.has_batch(key)
    refs = area.stage(key, [_embedding(1, grid_mode), _embedding(2, grid_mode)])
    assert area.has_batch(key) and [r.roi_id for r in refs] == ["pb-1", "pb-2"]
    assert area.computed_batches() == [key]
    back = area.load(refs[1].to_dict())
    assert back.meta["nested"] == {"a": [1, 2]}
    np.testing.assert_array_equal(back.pooled, np.full(4, 2, np.float32))
    assert back.grid.dims == ("dim", "y", "x") and back.grid.attrs["crs"] == "EPSG:32631"
    np.testing.assert_array_equal(back.grid.coords["x"].values, [5.0, 15.0, 25.0])
    assert (back.data is back.grid) if grid_mode else (back.data is back.pooled)
    # Staging the same key again (a racing worker) keeps the first batch; nothing is logged twice.
    assert area.stage(key, [_embedding(9, grid_mode)]) == refs
    assert area.computed_batches() == [key]
    assert not list((tmp_path / "st" / "batches").glob(".tmp-*"))
    # No pickle anywhere: npz opened with allow_pickle=False, sidecars are JSON.
    npz = area.batch_dir(key) / "0.npz"
    npz.write_bytes(npz.read_bytes()[:-8] + b"corrupt!")
    with pytest.raises(CacheError, match="checksum"):
        area.load(refs[0])
    area.remove([key])
    assert not area.has_batch(key)
    with pytest.raises(CacheError, match="not staged"):
        area.batch_refs(key)


def test_failed_staging_leaves_nothing(tmp_path: Path) -> None:
    area = StagingArea(tmp_path)
    bad = Embedding(data=None, meta={"roi_id": "x"}, grid=None, pooled=np.zeros(2, np.float32))  # no time/digest
    with pytest.raises(KeyError):
        area.stage("cd" * 32, [bad])
    assert not area.has_batch("cd" * 32) and not list((tmp_path / "batches").iterdir())


def test_default_staging_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RS_EMBED_STAGING_DIR", raising=False)
    assert default_staging_dir(tmp_path / "store") == (tmp_path / "store.staging").resolve()
    assert "staging" in str(default_staging_dir("s3://bucket/prefix"))
    monkeypatch.setenv("RS_EMBED_STAGING_DIR", str(tmp_path / "shared"))
    assert default_staging_dir("s3://bucket/prefix") == tmp_path / "shared"


def test_run_direct_matches_store_contract(tmp_path: Path, tiny_checkpoint: Path) -> None:
    from rs_embed_core.pipeline import existing_digests, run_direct
    from rs_embed_core.store import EmbeddingStore

    req = build_request([(2.30, 48.80, 320), (2.31, 48.80, 320)], months=["2024-05"], checkpoint=str(tiny_checkpoint))
    out = run_direct(
        req, store=tmp_path / "s", staging_dir=tmp_path / "st", backend="synthetic", cache=tmp_path / "c", device="cpu"
    )
    assert out["counts"] == {"written": 2, "skipped": 0, "no_imagery": 0, "failed": 0}
    assert len(existing_digests(tmp_path / "s")) == 2
    commits = len(EmbeddingStore.open(str(tmp_path / "s")).history())
    again = run_direct(
        req, store=tmp_path / "s", staging_dir=tmp_path / "st", backend="synthetic", cache=tmp_path / "c", device="cpu"
    )
    assert again["counts"]["skipped"] == 2 and again["snapshot_id"] is None
    assert len(EmbeddingStore.open(str(tmp_path / "s")).history()) == commits  # nothing new: no commit
