"""Prefect flows and tasks against one test server per module (``prefect_test_harness``).

Real components throughout: the synthetic provider (counted through a subclass),
the chip cache, a tiny random checkpoint loaded through the real path, the staging
area and the Icechunk store. Each test uses its own provider seed, so fetch cache
keys never overlap between tests that share the harness's result storage.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rs_embed_core.errors import NoImageryError, PermanentProviderError, TransientProviderError
from rs_embed_core.providers.synthetic import SyntheticProvider
from rs_embed_core.specs import PointBuffer, SensorSpec, TemporalSpec

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("prefect_harness")]


class CountingProvider(SyntheticProvider):
    """The synthetic provider, counting fetches; optionally failing on purpose.

    Args:
        transient: raise TransientProviderError for the first N fetches.
        no_imagery: ROI ids that have no scene.
        error: raise this exception for every fetch.
    """

    def __init__(
        self, seed: int, *, transient: int = 0, no_imagery: set[str] | None = None, error: Exception | None = None
    ) -> None:
        super().__init__(seed=seed)
        self.calls = 0
        self._lock = threading.Lock()
        self.transient = transient
        self.no_imagery = no_imagery or set()
        self.error = error

    def fetch(self, roi, temporal, sensor):  # noqa: ANN001, ANN201
        with self._lock:
            self.calls += 1
            n = self.calls
        if n <= self.transient:
            raise TransientProviderError(f"quota exceeded (call {n})")
        if self.error is not None:
            raise self.error
        if roi.id in self.no_imagery:
            raise NoImageryError(f"no scene for {roi.id} in {temporal.label()}")
        return super().fetch(roi, temporal, sensor)


def _rois(n: int, lon0: float) -> list[PointBuffer]:
    return [PointBuffer(lon0 + 0.01 * i, 48.80, 320, label=f"site-{lon0:g}-{i}") for i in range(n)]


def _run_args(tmp_path: Path, ckpt: Path, provider: Any, rois: list[PointBuffer], **kw: Any) -> dict[str, Any]:
    args = {
        "rois": rois,
        "store": str(tmp_path / "store"),
        "months": ["2024-05", "2024-06"],
        "backend": provider,
        "checkpoint": str(ckpt),
        "device": "cpu",
        "batch_size": 3,
        "cache_dir": str(tmp_path / "chips"),
    }
    return {**args, **kw}


def _staging(tmp_path: Path):
    from rs_embed_core.staging import StagingArea

    return StagingArea(tmp_path / "store.staging")


def _store(tmp_path: Path):
    from rs_embed_core.store import EmbeddingStore

    return EmbeddingStore.open(str(tmp_path / "store"))


# -- fetch task -----------------------------------------------------------------------------


def test_fetch_cache_key_is_exactly_the_request() -> None:
    from tasks.fetch import FETCH_KEY_NAMESPACE, FetchCachePolicy

    policy = FetchCachePolicy()
    roi = PointBuffer(2.3, 48.8, 320, label="a")
    month = TemporalSpec.month(2024, 5)
    base = {"roi": roi.to_dict(), "temporal": month.to_dict(), "sensor": SensorSpec(), "backend": SyntheticProvider(1)}

    def key(**change: Any) -> str:
        return policy.compute_key(None, {**base, **change}, {})  # type: ignore[arg-type]

    k = key()
    assert k.startswith(FETCH_KEY_NAMESPACE + ":")
    # Not part of the key: the label, the checkpoint, the chip cache folder, the flow parameters / run.
    assert key(roi=PointBuffer(2.3, 48.8, 320, label="b").to_dict()) == k
    assert key(sensor=SensorSpec(checkpoint="/some/ckpt")) == k
    assert key(cache="/elsewhere") == k
    assert policy.compute_key(None, base, {"run": "other"}) == k  # type: ignore[arg-type]
    # Part of it: geometry, window, collection and pixel-changing settings, provider name/version/settings.
    changed = [
        key(roi=PointBuffer(2.3, 48.8, 330).to_dict()),
        key(temporal=TemporalSpec.month(2024, 6).to_dict()),
        key(sensor=SensorSpec(collection="COPERNICUS/S2_HARMONIZED")),
        key(sensor=SensorSpec(bands=("B4", "B3", "B8"))),
        key(sensor=SensorSpec(cloudy_pct=10)),
        key(sensor=SensorSpec(composite="mosaic")),
        key(backend=SyntheticProvider(2)),
        key(backend=type("V2", (SyntheticProvider,), {"version": "2"})(1)),
    ]
    assert len({k, *changed}) == len(changed) + 1


def test_fetch_retries_only_transient_errors(tmp_path: Path) -> None:
    from prefect import flow

    from tasks.fetch import fetch_chip_task

    fast = fetch_chip_task.with_options(retry_delay_seconds=0, retry_jitter_factor=None)
    roi, month = PointBuffer(3.0, 45.0, 200), TemporalSpec.month(2024, 5)

    @flow
    def one(provider: Any) -> tuple[str, Any]:
        fut = fast.submit(roi.to_dict(), month.to_dict(), SensorSpec(), provider, str(tmp_path / "c"))
        fut.wait()
        if fut.state.is_completed():
            return "completed", fut.state.result()
        return "failed", repr(fut.state.result(raise_on_failure=False))

    flaky = CountingProvider(101, transient=2)
    kind, res = one(flaky)
    assert kind == "completed" and res["status"] == "fetched" and flaky.calls == 3

    auth = CountingProvider(102, error=PermanentProviderError("401 unauthenticated"))
    assert one(auth) == ("completed", {"status": "failed", "reason": "PermanentProviderError: 401 unauthenticated"})
    assert auth.calls == 1

    none = CountingProvider(103, no_imagery={roi.id})
    kind, res = one(none)
    assert res["status"] == "no_imagery" and "no scene" in res["reason"] and none.calls == 1

    bug = CountingProvider(104, error=ValueError("a bug, not weather"))
    kind, res = one(bug)
    assert kind == "failed" and "a bug" in res and bug.calls == 1  # only TransientProviderError is retried

    always = CountingProvider(105, transient=100)
    kind, res = one(always)
    assert kind == "failed" and "TransientProviderError" in res and always.calls == 5  # 1 try + 4 retries


# -- embed_rois -------------------------------------------------------------------------------


def test_embed_rois_writes_skips_and_forces(tmp_path: Path, tiny_checkpoint: Path) -> None:
    from prefect.client.orchestration import get_client

    from flows.embed import embed_rois

    provider = CountingProvider(201)
    args = _run_args(tmp_path, tiny_checkpoint, provider, _rois(4, 2.30))
    first = embed_rois(**args)
    assert first["counts"] == {"written": 8, "skipped": 0, "no_imagery": 0, "failed": 0}
    assert first["batches"] == 3 and provider.calls == 8
    store = _store(tmp_path)
    head = store.history()[0]
    meta = head["metadata"]
    assert head["snapshot_id"] == first["snapshot_id"]
    assert (
        meta["counts"]["written"] == 8
        and meta["flow_run_id"]
        and meta["parameters"]["months"] == ["2024-05", "2024-06"]
    )
    assert "prefect" in meta["packages"] and meta["code_version"] and meta["model_identity"]["weights_are_random"]
    digests = store.entry_digests()
    assert len(digests) == 8
    ds = store.open_dataset()
    assert sorted(ds.roi_label.values.tolist()) == [f"site-2.3-{i}" for i in range(4)]
    pooled = np.asarray(ds.pooled.values)
    assert np.isfinite(pooled).all()
    staging = _staging(tmp_path)
    assert len(staging.computed_batches()) == 3
    assert not list((tmp_path / "store.staging" / "batches").iterdir())  # staged batches removed after commit

    # Same request again: nothing fetched, nothing computed, no commit.
    again = embed_rois(**args)
    assert again["counts"] == {"written": 0, "skipped": 8, "no_imagery": 0, "failed": 0}
    assert again["snapshot_id"] is None and provider.calls == 8 and len(staging.computed_batches()) == 3
    assert _store(tmp_path).history()[0]["snapshot_id"] == first["snapshot_id"]

    # force=True rewrites the same cells (no new ones), fetching from the cache.
    forced = embed_rois(**args, force=True)
    assert forced["counts"]["written"] == 8 and provider.calls == 8
    store = _store(tmp_path)
    assert store.entry_digests() == digests
    ds2 = store.open_dataset()
    assert ds2.sizes["roi"] == 4 and ds2.sizes["time"] == 2
    np.testing.assert_array_equal(np.asarray(ds2.pooled.values), pooled)

    # Artifacts: summary markdown and the ROI x month table.
    async def artifacts() -> list[Any]:
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["embed-rois-summary", "embed-rois-entries"]))
            )

    import asyncio

    found = asyncio.run(artifacts())
    kinds = {a.key: a for a in found}
    assert "Written" in kinds["embed-rois-summary"].data and "NOT real" in kinds["embed-rois-summary"].data
    assert kinds["embed-rois-entries"].type == "table"


def test_retry_after_failure_redoes_no_fetch_or_batch(
    tmp_path: Path, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that fails after inference, retried (same flow run): fetches cached, batches staged, one commit."""
    from flows.embed import embed_rois
    from rs_embed_core import pipeline

    real_publish = pipeline.publish
    attempts = []

    def failing_once(*a: Any, **kw: Any) -> Any:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("worker lost before the commit")
        return real_publish(*a, **kw)

    monkeypatch.setattr(pipeline, "publish", failing_once)
    provider = CountingProvider(301)
    args = _run_args(tmp_path, tiny_checkpoint, provider, _rois(3, 2.40))
    _store(tmp_path)  # an empty store exists before the run
    retried = embed_rois.with_options(retries=1, retry_delay_seconds=0)
    state = retried(**args, return_state=True)
    assert state.is_completed(), state
    assert len(attempts) == 2
    assert provider.calls == 6  # each (ROI, month) fetched once over both attempts
    assert len(_staging(tmp_path).computed_batches()) == 2  # each batch computed once (6 entries / 3)
    history = _store(tmp_path).history()
    assert len([h for h in history if "embed-rois" in h["message"]]) == 1  # one commit
    assert len(_store(tmp_path).entry_digests()) == 6


def test_failure_before_commit_leaves_store_unchanged(
    tmp_path: Path, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.embed import embed_rois
    from rs_embed_core.staging import StagingArea

    provider = CountingProvider(401)
    rois = _rois(2, 2.50)
    embed_rois(**_run_args(tmp_path, tiny_checkpoint, provider, rois, months=["2024-05"]))
    store = _store(tmp_path)
    before = (store.history()[0]["snapshot_id"], store.entry_digests())

    real_load = StagingArea.load
    loaded = []

    def breaks_mid_write(self: StagingArea, ref: Any) -> Any:
        loaded.append(ref)
        if len(loaded) == 3:
            raise OSError("disk vanished mid-write")
        return real_load(self, ref)

    monkeypatch.setattr(StagingArea, "load", breaks_mid_write)
    state = embed_rois(**_run_args(tmp_path, tiny_checkpoint, provider, rois + _rois(2, 2.60)), return_state=True)
    assert state.is_failed() and len(loaded) == 3
    store = _store(tmp_path)
    assert (store.history()[0]["snapshot_id"], store.entry_digests()) == before


def test_outcomes_recorded_not_crashing(tmp_path: Path, tiny_checkpoint: Path) -> None:
    from flows.embed import embed_rois

    rois = _rois(3, 2.70)
    provider = CountingProvider(501, no_imagery={rois[1].id})
    out = embed_rois(**_run_args(tmp_path, tiny_checkpoint, provider, rois, months=["2024-05"]))
    assert out["counts"] == {"written": 2, "skipped": 0, "no_imagery": 1, "failed": 0}
    assert _store(tmp_path).history()[0]["metadata"]["counts"]["no_imagery"] == 1


def test_monthly_refresh_tags_and_backfill_resumes(tmp_path: Path, tiny_checkpoint: Path) -> None:
    from flows.refresh import backfill, monthly_refresh

    provider = CountingProvider(601)
    common = {
        "rois": _rois(2, 2.80),
        "store": str(tmp_path / "store"),
        "backend": provider,
        "checkpoint": str(tiny_checkpoint),
        "device": "cpu",
        "cache_dir": str(tmp_path / "chips"),
    }
    out = monthly_refresh(**common, month="2024-07")
    assert out["tag"] == "2024-07" and out["counts"]["written"] == 2
    assert _store(tmp_path).tags()["2024-07"] == out["snapshot_id"]
    results = backfill(**common, start="2024-06", end="2024-07")
    assert [r["counts"]["written"] for r in results] == [2, 0]  # July was done: resumed, not redone
    assert [r["counts"]["skipped"] for r in results] == [0, 2]
    assert provider.calls == 4
    assert len(_store(tmp_path).entry_digests()) == 4
