"""Concurrent writers: two processes on local storage (file lock) and on a local S3 server (moto)."""

from __future__ import annotations

import multiprocessing as mp
import uuid

import numpy as np
import pytest
from _servers import moto_s3, s3_env
from _store_helpers import small_embedding, write_rois

from rs_embed_core.store import EmbeddingStore, open_embeddings

MONTHS = ["2026-10", "2026-11"]


def _two_writers(location: str, per_worker: int = 6) -> list[list[str]]:
    """Two processes, each registering its own ROIs one commit at a time (both grow the roi axis)."""
    EmbeddingStore.open(location)  # create once, so both workers race on commits, not on creation
    jobs = [(location, list(range(w, 2 * per_worker, 2)), MONTHS, 1) for w in range(2)]
    with mp.get_context("spawn").Pool(2) as pool:
        return pool.starmap(write_rois, jobs)


def _check_all_landed(location: str, n_rois: int) -> None:
    store = EmbeddingStore.open(location, create=False)
    ds = open_embeddings(store)
    assert ds.sizes["roi"] == n_rois and ds.sizes["time"] == len(MONTHS)
    assert bool(ds["present"].values.all())
    for k in range(n_rois):
        for m in MONTHS:
            e = small_embedding(k, m)
            cell = ds.sel(roi=e.meta["roi_id"], time=np.datetime64(f"{m}-01", "ns"))
            np.testing.assert_array_equal(cell["grid"].values, e.grid.values)
            assert str(cell["entry_digest"].values) == e.meta["entry_digest"]
    messages = [h["message"] for h in store.history()]
    assert sum(m.startswith("rois ") for m in messages) == n_rois  # one commit per ROI, none lost


@pytest.mark.slow
def test_two_processes_local_storage_lose_nothing(tmp_path):
    location = str(tmp_path / "store")
    snaps = _two_writers(location)
    assert len({s for worker in snaps for s in worker}) == 12
    _check_all_landed(location, 12)


def test_disjoint_writers_in_one_process_both_land(tmp_path):
    """Two writers opened on the same tip; the second commit rebases over the first."""
    store = EmbeddingStore.open(tmp_path / "s")
    with store.writer() as w:
        w.write(small_embedding(0, "2026-11"))
        w.write(small_embedding(1, "2026-11"))
        w.commit("base")
    a, b = store.writer(), store.writer()
    a.write(small_embedding(0, "2026-10"))  # both register the new month and new ROIs
    a.write(small_embedding(2, "2026-11"))
    b.write(small_embedding(1, "2026-10"))
    b.write(small_embedding(3, "2026-11"))
    a.commit("a")
    b.commit("b")
    ds = store.open_dataset()
    assert ds.sizes["roi"] == 4 and int(ds["present"].values.sum()) == 6


# ---------------------------------------------------------------------- S3 (moto server on loopback)


@pytest.fixture()
def s3_location(monkeypatch):
    with moto_s3() as (endpoint, _):
        for key, value in s3_env(endpoint).items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
        # moto keeps its state per process: a fresh prefix per test keeps tests independent.
        yield f"s3://embeddings/rs-embed/{uuid.uuid4().hex[:8]}"


@pytest.mark.slow
def test_s3_round_trip_versions_and_errors(s3_location, tmp_path):
    store = EmbeddingStore.open(s3_location, dtype="float16")
    assert not store.config.is_local
    with store.writer() as w:
        w.write(small_embedding(0, "2026-11"))
        sid = w.commit("s3 run", {"flow_run_id": "r1"})
    store.tag("2026-11")
    reopened = EmbeddingStore.open(s3_location, create=False)
    assert reopened.dtype == "float16" and reopened.tags() == {"2026-11": sid}
    ds = open_embeddings(s3_location, ref="2026-11")
    np.testing.assert_allclose(ds["grid"].values[0, 0], small_embedding(0, "2026-11").grid.values, atol=1e-2)
    assert store.history()[0]["metadata"]["flow_run_id"] == "r1"
    out = store.export(tmp_path / "exp")
    assert (tmp_path / "exp" / "grid" / "zarr.json").exists() and out.endswith("exp")


@pytest.mark.slow
def test_two_processes_on_s3_lose_nothing(s3_location):
    _two_writers(s3_location, per_worker=4)
    _check_all_landed(s3_location, 8)


# ---------------------------------------------------------------------- a commit landing mid-write


def _memory_store() -> EmbeddingStore:
    """An in-memory store (no file lock), so a second writer can commit inside the first one's commit."""
    import icechunk

    from rs_embed_core.store import StoreConfig
    from rs_embed_core.store.writer import _ensure_root

    repo = icechunk.Repository.create(icechunk.in_memory_storage())
    return EmbeddingStore(StoreConfig(location="memory://test"), repo, _ensure_root(repo, "float32"))


def _race(monkeypatch, store: EmbeddingStore, other_entries: list) -> None:
    """Make the next commit's write phase be overtaken by another writer's commit."""
    from rs_embed_core.store import writer as wmod

    original = wmod._apply
    state = {"raced": False}

    def racing(session, entries, dtype, written_at):
        out = original(session, entries, dtype, written_at)
        if not state["raced"]:
            state["raced"] = True
            with store.writer() as other:
                for e in other_entries:
                    other.write(e)
                other.commit("overtaking writer")
        return out

    monkeypatch.setattr(wmod, "_apply", racing)


def test_overtaken_commit_on_disjoint_cells_rebases(monkeypatch):
    store = _memory_store()
    with store.writer() as w:
        w.write(small_embedding(0, "2026-10"))
        w.write(small_embedding(1, "2026-11"))
        w.commit("base: 2 ROIs x 2 months")
    _race(monkeypatch, store, [small_embedding(1, "2026-10")])  # existing axes: no resize
    with store.writer() as w:
        w.write(small_embedding(0, "2026-11"))
        w.commit("mine")
    head = store.history()[0]
    assert head["message"] == "mine" and head["metadata"]["rs_embed_store"]["attempts"] == 1
    assert store.history()[1]["message"] == "overtaking writer"
    assert bool(store.open_dataset()["present"].values.all())


def test_overtaken_commit_growing_the_same_axis_is_replayed(monkeypatch):
    store = _memory_store()
    with store.writer() as w:
        w.write(small_embedding(0, "2026-11"))
        w.commit("base")
    # Both writers append a new ROI at index 1 and a new month: only a replay can reconcile them.
    _race(monkeypatch, store, [small_embedding(1, "2026-11"), small_embedding(1, "2026-12")])
    with store.writer() as w:
        w.write(small_embedding(2, "2026-11"))
        w.write(small_embedding(2, "2026-12"))
        w.commit("mine")
    assert store.history()[0]["metadata"]["rs_embed_store"]["attempts"] == 2
    ds = store.open_dataset()
    assert ds.sizes["roi"] == 3 and ds.sizes["time"] == 2
    for k, m in [(0, "2026-11"), (1, "2026-11"), (1, "2026-12"), (2, "2026-11"), (2, "2026-12")]:
        e = small_embedding(k, m)
        np.testing.assert_array_equal(
            ds["grid"].sel(roi=e.meta["roi_id"], time=np.datetime64(f"{m}-01", "ns")).values, e.grid.values
        )
    assert int(ds["present"].values.sum()) == 5
