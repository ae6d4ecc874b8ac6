"""The versioned embedding store: round trip, overwrite, rollback, versions, bad inputs, export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
import zarr
from _store_helpers import make_embedding, small_embedding

from rs_embed_core.errors import StoreError, StoreInputError
from rs_embed_core.store import (
    ENTRY_FIELDS,
    EmbeddingStore,
    StoreConfig,
    entry_grid,
    open_embeddings,
    select_month,
    select_roi,
)


@pytest.fixture()
def store(tmp_path):
    return EmbeddingStore.open(tmp_path / "emb")


def _cell(ds, emb):
    return ds.sel(roi=emb.meta["roi_id"], time=np.datetime64(emb.meta["time"], "ns"))


def test_round_trip_vit_b32_values_and_provenance(store):
    embs = [make_embedding(k, m) for k in range(3) for m in ("2026-10", "2026-11")]
    with store.writer() as w:
        for e in embs:
            w.write(e)
        sid = w.commit("first run", {"flow_run_id": "run-1", "host": "test"})
    ds = open_embeddings(store.config.location)
    assert ds.attrs["snapshot_id"] == sid and ds.attrs["storage_dtype"] == "float32"
    assert dict(ds.sizes) == {"roi": 3, "time": 2, "dim": 768, "y": 7, "x": 7, "embed": 512, "affine": 6}
    assert ds["grid"].dtype == np.float32 and ds["time"].dtype.kind == "M"
    for e in embs:
        cell = _cell(ds, e)
        np.testing.assert_array_equal(cell["grid"].values, e.grid.values)
        np.testing.assert_array_equal(cell["pooled"].values, e.pooled)
        np.testing.assert_array_equal(cell["image_embedding"].values, e.image_embedding)
        assert bool(cell["present"])
        assert str(cell["checkpoint_sha256"].values) == e.meta["checkpoint_sha256"]
        assert str(cell["entry_digest"].values) == e.meta["entry_digest"]
        assert str(cell["preprocess_path"].values) == "fallback"
        assert str(cell["model_arch"].values) == "ViT-B-32"
        assert bool(cell["weights_are_random"])
        assert int(cell["n_scenes"]) == 2 and float(cell["valid_fraction"]) == pytest.approx(0.875)
        assert json.loads(str(cell["scene_ids"].values)) == e.meta["provider"]["scene_ids"]
        assert json.loads(str(cell["meta_json"].values))["fetch_key"] == e.meta["fetch_key"]
        assert str(cell["written_at"].values).endswith("Z")
        assert str(cell["roi_label"].values) == e.meta["roi"]["label"]
        assert int(cell["crs_epsg"]) == int(e.meta["grid_crs"].split(":")[1])
        np.testing.assert_allclose(cell["grid_transform"].values, e.meta["grid_transform"])
    meta = store.history()[0]["metadata"]
    assert meta["flow_run_id"] == "run-1"
    assert meta["rs_embed_store"]["entries_written"] == 6 and meta["rs_embed_store"]["rois_added"] == 3


def test_small_dim_float16_store_and_empty_cells(tmp_path):
    store = EmbeddingStore.open(tmp_path / "f16", dtype="float16")
    with store.writer() as w:
        w.write(small_embedding(0, "2026-10"))
        w.write(small_embedding(1, "2026-11"))
        w.commit("two entries")
    ds = store.open_dataset()
    assert ds["grid"].dtype == np.float16 and ds.attrs["storage_dtype"] == "float16"
    e = small_embedding(1, "2026-11")
    np.testing.assert_allclose(_cell(ds, e)["grid"].values, e.grid.values, rtol=1e-3, atol=1e-3)
    # ROI 0 has no November entry: NaN values, present False, not zeros.
    empty = _cell(ds, small_embedding(0, "2026-11"))
    assert not bool(empty["present"]) and np.isnan(empty["grid"].values).all()
    assert int(empty["n_scenes"]) == -1
    assert EmbeddingStore.open(tmp_path / "f16").dtype == "float16"
    with pytest.raises(StoreInputError, match="storage dtype"):
        EmbeddingStore.open(tmp_path / "f16", dtype="float32")


def test_overwrite_replaces_cell_without_growth(store):
    with store.writer() as w:
        for k in range(2):
            w.write(small_embedding(k, "2026-11"))
        w.commit("run 1")
    new = make_embedding(1, "2026-11", dim=16, hw=(3, 3), embed=8, seed=999, checkpoint_sha256="cd" * 32)
    with store.writer() as w:
        w.write(small_embedding(0, "2026-11"))  # identical rerun
        w.write(new)
        w.write(new)  # twice in one batch: still one cell
        w.commit("run 2")
    ds = store.open_dataset()
    assert ds.sizes["roi"] == 2 and ds.sizes["time"] == 1
    np.testing.assert_array_equal(_cell(ds, new)["grid"].values, new.grid.values)
    assert str(_cell(ds, new)["checkpoint_sha256"].values) == "cd" * 32
    counts = store.history()[0]["metadata"]["rs_embed_store"]
    assert counts["entries_written"] == 2 and counts["entries_replaced"] == 2 and counts["rois_added"] == 0


def test_abandoned_or_failed_writer_leaves_store_unchanged(store):
    with store.writer() as w:
        w.write(small_embedding(0, "2026-11"))
        w.commit("base")
    before = store.snapshot_id()
    with store.writer() as w:
        w.write(small_embedding(1, "2026-11"))  # left without commit
    with pytest.raises(RuntimeError, match="boom"), store.writer() as w:
        w.write(small_embedding(2, "2026-11"))
        raise RuntimeError("boom")
    assert store.snapshot_id() == before
    assert store.open_dataset().sizes["roi"] == 1
    with pytest.raises(StoreError, match="closed"):
        w.write(small_embedding(3, "2026-11"))


def test_tags_branches_history_and_time_travel(store):
    with store.writer() as w:
        w.write(small_embedding(0, "2026-10"))
        s1 = w.commit("october", {"month": "2026-10"})
    store.tag("2026-10")
    with store.writer() as w:
        w.write(small_embedding(1, "2026-11"))
        s2 = w.commit("november", {"month": "2026-11"})
    assert store.tags() == {"2026-10": s1}
    with pytest.raises(StoreError, match="already exists"):
        store.tag("2026-10", s2)
    old = open_embeddings(store.config.location, ref="2026-10")
    assert old.sizes["roi"] == 1 and old.attrs["snapshot_id"] == s1
    assert open_embeddings(store, ref=s1).sizes["time"] == 1
    assert store.open_dataset("main").sizes["roi"] == 2
    hist = store.history("main")
    assert [h["snapshot_id"] for h in hist[:2]] == [s2, s1]
    assert hist[0]["metadata"]["month"] == "2026-11" and hist[1]["message"] == "october"
    # An experiment branch from the release tag does not touch main.
    assert store.branch("exp-ckpt", from_ref="2026-10") == s1
    with store.writer("exp-ckpt") as w:
        w.write(make_embedding(0, "2026-10", dim=16, hw=(3, 3), embed=8, seed=5, checkpoint_sha256="ef" * 32))
        w.commit("other checkpoint")
    assert store.snapshot_id("main") == s2
    exp = store.open_dataset("exp-ckpt")
    assert str(exp["checkpoint_sha256"].values[0, 0]) == "ef" * 32
    assert sorted(store.branches()) == ["exp-ckpt", "main"]


def test_entry_digests_for_skip_if_identical(store):
    embs = [small_embedding(k, "2026-11") for k in range(3)]
    assert store.entry_digests() == {}
    with store.writer() as w:
        for e in embs:
            w.write(e)
        w.commit("run")
    digests = store.entry_digests("main")
    assert digests == {(e.meta["roi_id"], "2026-11-01"): e.meta["entry_digest"] for e in embs}


def test_selection_helpers_and_georeferenced_grid(store):
    months = ("2026-09", "2026-10", "2026-11")
    with store.writer() as w:
        for k in range(3):
            for m in months[: k + 1]:
                w.write(small_embedding(k, m))
        w.commit("run")
    ds = store.open_dataset()
    e = small_embedding(2, "2026-10")
    series = select_roi(ds, e.meta["roi_id"])
    assert series.sizes["time"] == 3 and series["grid"].dims == ("time", "dim", "y", "x")
    nov = select_month(ds, "2026-11")
    assert list(nov.roi.values) == [e.meta["roi_id"]]
    assert select_month(ds, "2026-09").sizes["roi"] == 3
    da = entry_grid(ds, e.meta["roi_id"], "2026-10-01")
    assert da.dims == ("dim", "y", "x") and da.attrs["crs"] == e.meta["grid_crs"]
    np.testing.assert_allclose(da.x.values, e.grid.x.values)
    np.testing.assert_allclose(da.y.values, e.grid.y.values)
    np.testing.assert_array_equal(da.values, e.grid.values)
    with pytest.raises(StoreInputError, match="empty"):
        entry_grid(ds, small_embedding(0, "2026-11").meta["roi_id"], "2026-11")
    with pytest.raises(StoreInputError, match="not in the store"):
        select_roi(ds, "pb-unknown")


def test_backfilled_month_is_read_in_time_order(store):
    for m in ("2026-11", "2026-09"):
        with store.writer() as w:
            w.write(small_embedding(0, m))
            w.commit(m)
    ds = store.open_dataset()
    assert [str(t)[:10] for t in ds.time.values] == ["2026-09-01", "2026-11-01"]
    np.testing.assert_array_equal(ds["grid"].values[0, 0], small_embedding(0, "2026-09").grid.values)


def _bad(kind):
    e = small_embedding(5, "2026-11")
    if kind == "wrong_dim":
        return make_embedding(5, "2026-11", dim=32, hw=(3, 3), embed=8, seed=1)
    if kind == "wrong_grid":
        return make_embedding(5, "2026-11", dim=16, hw=(4, 4), embed=8, seed=1)
    if kind == "wrong_embed":
        return make_embedding(5, "2026-11", dim=16, hw=(3, 3), embed=9, seed=1)
    if kind == "nan_only":
        e.grid.values[:] = np.nan
        return e
    if kind == "no_roi_id":
        del e.meta["roi_id"]
        return e
    if kind == "bad_time":
        e.meta["time"] = "November"
        return e
    if kind == "no_crs":
        del e.meta["grid_crs"]
        e.grid.attrs.clear()
        return e
    if kind == "moved_roi":
        e.meta["roi_id"] = small_embedding(0, "2026-11").meta["roi_id"]
        return e
    raise AssertionError(kind)


@pytest.mark.parametrize(
    ("kind", "match"),
    [
        ("wrong_dim", "one store holds one grid size"),
        ("wrong_grid", "one store holds one grid size"),
        ("wrong_embed", "one store holds one grid size"),
        ("nan_only", "all NaN"),
        ("no_roi_id", "roi_id"),
        ("bad_time", "time="),
        ("no_crs", "grid_crs"),
        ("moved_roi", "keeps one grid"),
    ],
)
def test_bad_entries_raise_and_leave_store_unchanged(store, kind, match):
    with store.writer() as w:
        w.write(small_embedding(0, "2026-11"))
        w.commit("base")
    before = store.snapshot_id()
    with store.writer() as w:
        w.write(small_embedding(1, "2026-11"))
        with pytest.raises(StoreInputError, match=match):
            w.write(_bad(kind))
        # The writer stays usable; the good entry can still be committed.
        assert len(w) == 1
    assert store.snapshot_id() == before


def test_shape_conflict_detected_at_commit_leaves_store_unchanged(tmp_path):
    loc = tmp_path / "s"
    store = EmbeddingStore.open(loc)
    w = store.writer()  # opened while the store is empty: no shape known yet
    w.write(make_embedding(0, "2026-11", dim=32, hw=(3, 3), embed=8, seed=1))
    with EmbeddingStore.open(loc).writer() as other:
        other.write(small_embedding(1, "2026-11"))
        other.commit("other shape first")
    before = store.snapshot_id()
    with pytest.raises(StoreInputError, match="one store holds one grid size"):
        w.commit("too late")
    assert store.snapshot_id() == before


def test_unknown_refs_missing_store_and_bad_config(tmp_path, store):
    with pytest.raises(StoreInputError, match="not a branch, tag or snapshot"):
        open_embeddings(store, ref="2099-01")
    with pytest.raises(StoreInputError, match="branches"):
        store.history("nope")
    with pytest.raises(StoreInputError, match="does not exist"):
        store.writer("nope")
    with pytest.raises(StoreError, match="no embedding store"):
        EmbeddingStore.open(tmp_path / "missing", create=False)
    assert not (tmp_path / "missing").exists()
    with pytest.raises(StoreError, match="no embedding store"):
        open_embeddings(tmp_path / "missing")
    with pytest.raises(StoreInputError, match="dtype"):
        EmbeddingStore.open(tmp_path / "x", dtype="int8")
    with pytest.raises(StoreInputError, match="scheme"):
        StoreConfig.from_location("gs://bucket/x")
    before = store.snapshot_id()
    with store.writer() as w:
        assert w.commit("nothing") == before  # nothing buffered: no empty commit
    assert store.snapshot_id() == before


def test_store_config_from_environment(monkeypatch):
    monkeypatch.setenv("RS_EMBED_S3_ENDPOINT", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    cfg = StoreConfig.from_location("s3://bucket/some/prefix/")
    assert (cfg.bucket, cfg.prefix, cfg.region) == ("bucket", "some/prefix", "eu-west-1")
    assert cfg.allow_http and cfg.force_path_style and not cfg.is_local
    assert "secret" not in json.dumps(cfg.describe())
    assert StoreConfig.from_location("s3://b/p", force_path_style=False).force_path_style is False


def test_export_is_plain_zarr_v3(store, tmp_path):
    embs = [small_embedding(k, "2026-11") for k in range(2)]
    with store.writer() as w:
        for e in embs:
            w.write(e)
        sid = w.commit("run")
    store.tag("2026-11")
    with store.writer() as w:
        w.write(small_embedding(3, "2026-12"))
        w.commit("later")
    out = store.export(tmp_path / "export", ref="2026-11")
    group = zarr.open_group(out, mode="r")  # plain zarr: no icechunk involved
    assert group.attrs["snapshot_id"] == sid and group["grid"].shape == (2, 1, 16, 3, 3)
    assert group["grid"].metadata.dimension_names == ("roi", "time", "dim", "y", "x")
    np.testing.assert_array_equal(group["grid"][1, 0], embs[1].grid.values)
    ds = xr.open_zarr(out, consolidated=False, chunks=None)
    assert set(f.name for f in ENTRY_FIELDS) <= set(ds.data_vars)
    assert str(ds["entry_digest"].values[0, 0]) == embs[0].meta["entry_digest"]
    with pytest.raises(StoreError, match="not an empty directory"):
        store.export(out, ref="main")
