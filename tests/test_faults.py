"""Faults: killed runs, concurrent runs, provider faults, corrupt caches, full or read-only disks.

Real processes and real components: runs are the core pipeline (``run_direct``: the
same steps the Prefect flow composes) in child processes (tests/_fault_child.py) that
the test kills with SIGKILL at a chosen moment; the store is a real Icechunk
repository (local, or S3 on a moto server on 127.0.0.1); Earth Engine is the real
``ee`` client talking to the fake transport (tests/fake_ee.py) with faults injected.

Every "nothing was lost" check compares values and provenance entry by entry with a
clean run's store, not just counts.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _servers import moto_s3, s3_env
from fake_ee import FakeEarthEngine, fake_credentials

from rs_embed_core.errors import StoreError
from rs_embed_core.planning import build_request
from rs_embed_core.providers.synthetic import SyntheticProvider
from rs_embed_core.specs import PointBuffer, TemporalSpec

pytestmark = pytest.mark.timeout(300)

HERE = Path(__file__).resolve().parent
CHILD = HERE / "_fault_child.py"
# Small ROIs (320 m buffer = 64 x 64 px) keep each run to a few seconds on 2 cores.
ROIS_A = [{"lon": 2.30 + 0.01 * i, "lat": 48.80, "buffer_m": 320, "label": f"a{i}"} for i in range(3)]
ROIS_B = [{"lon": 2.40 + 0.01 * i, "lat": 48.80, "buffer_m": 320, "label": f"b{i}"} for i in range(3)]
MONTHS_1 = ["2024-05"]
MONTHS_2 = ["2024-05", "2024-06"]
# Per-entry fields that legitimately differ between two runs writing the same entry.
RUN_FIELDS = {"written_at"}


# ---------------------------------------------------------------------- helpers


def _entries(location: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Every present (roi, time) cell: arrays and provenance fields, keyed by ids (not axis positions)."""
    from rs_embed_core.store import open_embeddings

    ds = open_embeddings(location).load()
    out: dict[tuple[str, str], dict[str, Any]] = {}
    present = ds["present"].values
    for i, roi in enumerate(ds["roi"].values):
        for j, t in enumerate(ds["time"].values):
            if not present[i, j]:
                continue
            cell: dict[str, Any] = {}
            for name, var in ds.data_vars.items():
                if name in RUN_FIELDS or var.dims[:2] != ("roi", "time"):
                    continue
                cell[name] = np.asarray(var.values[i, j])
            for name, var in ds.data_vars.items():
                if var.dims[:1] == ("roi",) and var.dims[1:2] != ("time",):
                    cell["roi:" + name] = np.asarray(var.values[i])
            key = (str(roi), str(np.datetime_as_string(t, unit="D")))
            assert key not in out, f"duplicate entry {key}"
            out[key] = cell
    return out


def _assert_same_entries(actual: str, expected: str) -> None:
    got, want = _entries(actual), _entries(expected)
    assert sorted(got) == sorted(want)
    for key, cell in want.items():
        assert sorted(got[key]) == sorted(cell), key
        for name, value in cell.items():
            np.testing.assert_array_equal(got[key][name], value, err_msg=f"{key} {name}")


def _roi(d: dict[str, Any]) -> PointBuffer:
    return PointBuffer(d["lon"], d["lat"], d["buffer_m"], label=d["label"])


def _snapshot(location: str) -> tuple[str, int]:
    from rs_embed_core.store import EmbeddingStore

    store = EmbeddingStore.open(location, create=False)
    return store.snapshot_id("main"), len(store.history())


def _cfg(tmp: Path, name: str, ckpt: Path, rois: list, months: list[str], **kw: Any) -> dict[str, Any]:
    return {
        "rois": rois,
        "months": months,
        "checkpoint": str(ckpt),
        "store": str(tmp / "store"),
        "staging": str(tmp / f"staging-{name}"),
        "cache": str(tmp / "chips"),
        "signal": str(tmp / f"{name}.paused"),
        **kw,
    }


def _child(cfg: dict[str, Any]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, str(CHILD), json.dumps(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=str(HERE.parent),
    )


def _kill_when_paused(cfg: dict[str, Any], timeout: float = 240) -> None:
    proc = _child(cfg)
    deadline = time.time() + timeout
    sig = Path(cfg["signal"])
    while not sig.exists():
        if proc.poll() is not None:
            raise AssertionError(f"child ended before pausing: {proc.communicate()[0][-3000:]}")
        assert time.time() < deadline, "child never reached the pause point"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def _direct(tmp: Path, ckpt: Path, rois: list, months: list[str], *, store: Path, **kw: Any) -> dict[str, Any]:
    from rs_embed_core.pipeline import run_direct

    req = build_request(rois, months=months, checkpoint=str(ckpt), batch_size=2)
    return run_direct(
        req,
        store=store,
        staging_dir=kw.pop("staging", tmp / f"staging-{store.name}"),
        backend=kw.pop("backend", "synthetic"),
        cache=kw.pop("cache", tmp / f"chips-{store.name}"),
        device="cpu",
        **kw,
    )


# ---------------------------------------------------------------------- SIGKILL mid-run


@pytest.fixture(scope="module")
def reference_store(tmp_path_factory, tiny_checkpoint) -> str:
    """A clean, uninterrupted store: run 1 (A x May) then run 2 ((A + B) x May, June)."""
    tmp = tmp_path_factory.mktemp("reference")
    ref = tmp / "ref"
    _direct(tmp, tiny_checkpoint, ROIS_A, MONTHS_1, store=ref)
    _direct(tmp, tiny_checkpoint, ROIS_A + ROIS_B, MONTHS_2, store=ref)
    return str(ref)


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["inference", "commit"])
def test_sigkill_leaves_last_version_intact_and_rerun_equals_clean_run(
    tmp_path, tiny_checkpoint, reference_store, moment
):
    # Run 1 commits (in this process); run 2 (new ROIs and a new month: 9 entries in 5
    # batches of 2) runs in a child that is SIGKILLed at ``moment``.
    first = _cfg(tmp_path, "first", tiny_checkpoint, ROIS_A, MONTHS_1)
    store = first["store"]
    _direct(tmp_path, tiny_checkpoint, ROIS_A, MONTHS_1, store=Path(store), cache=first["cache"])
    before_snap, before_len = _snapshot(store)
    before = _entries(store)

    files_before = {p for p in Path(store).rglob("*") if p.is_file()}
    second = _cfg(tmp_path, "second", tiny_checkpoint, ROIS_A + ROIS_B, MONTHS_2, pause_at=moment)
    _kill_when_paused(second)
    if moment == "commit":  # the killed commit had written its chunk files: orphans no snapshot refers to
        assert {p for p in Path(store).rglob("*") if p.is_file()} - files_before
    else:  # killed mid-forward: one batch staged, none committed
        assert len(list(Path(second["staging"]).glob("batches/[0-9a-f]*"))) == 1

    # The store opens, the last committed version is unchanged, value for value.
    assert _snapshot(store) == (before_snap, before_len)
    after = _entries(store)
    assert sorted(after) == sorted(before)
    for key in before:
        for name in before[key]:
            np.testing.assert_array_equal(after[key][name], before[key][name])

    # The rerun (same staging and cache: finished batches are reused) ends like the clean run.
    res = _direct(
        tmp_path,
        tiny_checkpoint,
        ROIS_A + ROIS_B,
        MONTHS_2,
        store=Path(store),
        staging=second["staging"],
        cache=second["cache"],
    )
    assert res["counts"] == {"written": 9, "skipped": 3, "no_imagery": 0, "failed": 0}
    _assert_same_entries(store, reference_store)
    assert _snapshot(store)[1] == before_len + 1  # exactly one new commit


# ---------------------------------------------------------------------- concurrent runs


def _concurrent_runs(tmp_path: Path, ckpt: Path, location: str, reference: str) -> None:
    from rs_embed_core.store import EmbeddingStore

    EmbeddingStore.open(location)  # both runs race on commits, not on creating the store
    barrier = [str(tmp_path / "ready-a"), str(tmp_path / "ready-b")]
    cfgs = [
        _cfg(tmp_path, "a", ckpt, ROIS_A, MONTHS_2, store=location, barrier=barrier),
        _cfg(tmp_path, "b", ckpt, ROIS_B, MONTHS_2, store=location, barrier=barrier[::-1]),
    ]
    procs = [_child(c) for c in cfgs]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-3000:]
        assert '"written": 6' in out, out[-3000:]

    # Every entry of both runs, none twice, equal to the clean run's (whose extra May
    # entries of A came from its first run: the same computation).
    _assert_same_entries(location, reference)
    store = EmbeddingStore.open(location, create=False)
    assert [h["metadata"]["counts"]["written"] for h in store.history()[:2]] == [6, 6]
    ds = store.open_dataset()
    assert ds.sizes["roi"] == 6 and len(set(ds["roi"].values.tolist())) == 6 and ds.sizes["time"] == 2


@pytest.mark.slow
def test_two_concurrent_runs_local_store_lose_nothing(tmp_path, tiny_checkpoint, reference_store):
    _concurrent_runs(tmp_path, tiny_checkpoint, str(tmp_path / "store"), reference_store)


@pytest.fixture()
def s3_location(monkeypatch):
    import uuid

    with moto_s3() as (endpoint, _):
        for key, value in s3_env(endpoint).items():
            monkeypatch.setenv(key, value)  # children inherit os.environ
        monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
        yield f"s3://embeddings/faults/{uuid.uuid4().hex[:8]}"


@pytest.mark.slow
def test_two_concurrent_runs_s3_store_lose_nothing(tmp_path, tiny_checkpoint, s3_location, reference_store):
    _concurrent_runs(tmp_path, tiny_checkpoint, s3_location, reference_store)


# ---------------------------------------------------------------------- provider faults


KINDS = ("429", "timeout", "503", "truncated")


class FaultyEarthEngine(FakeEarthEngine):
    """The fake service with faults: random transient ones at ``rate``, permanent ones per ROI.

    Transient faults, drawn from a seeded RNG for every call of the two data routes:
    HTTP 429, a socket timeout, HTTP 503, and a 200 whose body (NPY or JSON) is cut in half, in turn.
    ``permanent`` maps a ROI grid's western edge (metres) to 401 (auth), 400 (bad
    request) or "empty" (no scene), answered on every call for that ROI.
    """

    def __init__(self, rate: float = 0.0, seed: int = 0, permanent: dict[float, Any] | None = None) -> None:
        super().__init__()
        self.rate = rate
        self.rng = random.Random(seed)
        self.permanent = permanent or {}
        self.injected: list[str] = []
        self.by_roi: dict[float, int] = {}

    def _roi_x(self, route: str, body: Any) -> float | None:
        if route == "pixels":
            return float(body["grid"]["affineTransform"]["translateX"])
        if route == "value":
            from fake_ee import Expression

            region = Expression.parse(body["expression"]).region
            return float(region["coordinates"][0]) if region else None
        return None

    def request(self, uri, method="GET", body=None, headers=None, redirections=5, connection_type=None):  # noqa: ANN001, ANN201
        route = self._route(uri)
        if route in ("value", "pixels") and body:
            x = self._roi_x(route, json.loads(body))
            with self._lock:
                self.by_roi[x] = self.by_roi.get(x, 0) + 1
            fault = self.permanent.get(x)
            if fault == "empty" and route == "value":
                return self._ok(json.dumps({"result": {"ids": [], "times": []}}).encode())
            if fault == 401 and route == "value":
                return self._error(401, "Request had invalid authentication credentials.")
            if fault == 400 and route == "pixels":
                return self._error(400, "User memory limit exceeded.")
            with self._lock:
                kind = KINDS[len(self.injected) % len(KINDS)] if self.rng.random() < self.rate else None
                if kind:
                    self.injected.append(kind)
            if kind == "429":
                return self._error(429, "Too many concurrent aggregations.")
            if kind == "503":
                return self._error(503, "The service is currently unavailable.")
            if kind == "timeout":
                raise TimeoutError("The read operation timed out")
            if kind == "truncated":
                resp, content = super().request(uri, method, body, headers, redirections, connection_type)
                return resp, content[: len(content) // 2]
        return super().request(uri, method, body, headers, redirections, connection_type)


MILAN = [{"lon": 9.19 + 0.01 * i, "lat": 45.46, "buffer_m": 320, "label": f"m{i}"} for i in range(6)]
JUNE = ["2024-06"]


def _gee(fake: FakeEarthEngine, delays: list[float], **kw: Any):
    from rs_embed_core.providers.gee import GeeProvider

    return GeeProvider(
        project="test",
        http_transport=fake,
        credentials=fake_credentials(),
        sleep=delays.append,
        seed=0,
        client_retries=0,  # our classified retries only, so every fault is visible here
        **kw,
    )


def test_high_rate_transient_provider_faults_still_complete_every_entry(tmp_path, tiny_checkpoint):
    clean = _direct(
        tmp_path, tiny_checkpoint, MILAN, JUNE, store=tmp_path / "clean", backend=_gee(FakeEarthEngine(), [])
    )
    assert clean["counts"]["written"] == 6

    faulty = FaultyEarthEngine(rate=0.5, seed=7)
    delays: list[float] = []
    out = _direct(
        tmp_path, tiny_checkpoint, MILAN, JUNE, store=tmp_path / "faulty", backend=_gee(faulty, delays, max_retries=12)
    )
    assert out["counts"] == {"written": 6, "skipped": 0, "no_imagery": 0, "failed": 0}
    assert {"429", "503", "timeout", "truncated"} <= set(faulty.injected), faulty.injected
    assert len(faulty.injected) >= 6 and len(delays) == len(faulty.injected)  # each fault retried once, with backoff
    _assert_same_entries(str(tmp_path / "faulty"), str(tmp_path / "clean"))


def test_permanent_provider_faults_fail_fast_and_are_reported_per_roi(tmp_path, tiny_checkpoint):
    from rs_embed_core import pipeline, reporting
    from rs_embed_core.grid import roi_grid

    rois = MILAN[:5]
    west = [roi_grid(_roi(r), 10.0).bounds[0] for r in rois]
    faulty = FaultyEarthEngine(permanent={west[0]: 401, west[1]: 400, west[2]: "empty"})
    delays: list[float] = []
    provider = _gee(faulty, delays, max_retries=12)
    req = build_request(rois, months=JUNE, checkpoint=str(tiny_checkpoint), batch_size=2)

    # The flow's steps: plan, fetch each entry (outcome recorded, not raised), report rows.
    identity = pipeline.model_identity_for(req.sensor)
    plan = pipeline.plan_run(req, provider, identity, {})
    t0 = time.perf_counter()
    outcomes = {i.key: pipeline.fetch_entry(i.roi, i.temporal, req.sensor, provider, tmp_path / "c") for i in plan.todo}
    assert time.perf_counter() - t0 < 30
    assert delays == []  # no backoff at all: permanent faults are never retried
    assert [faulty.by_roi[x] for x in west[:3]] == [1, 2, 1]  # 401 at listing; 400 after listing; empty listing
    written = {k for k, o in outcomes.items() if o["status"] == "fetched"}
    rows = {r["label"]: r for r in reporting.outcome_rows(plan, outcomes, written)}
    assert rows["m0"]["status"] == "failed" and "EarthEngineAuthError" in rows["m0"]["reason"]
    assert "earthengine authenticate" in rows["m0"]["reason"]
    assert rows["m1"]["status"] == "failed" and "memory" in rows["m1"]["reason"]
    assert rows["m2"]["status"] == "no_imagery" and "widen the window" in rows["m2"]["reason"]
    assert rows["m3"]["status"] == rows["m4"]["status"] == "written"
    md = reporting.summary_markdown(req, list(rows.values()), {"snapshot_id": None}, store="s", dispatch="local")
    assert "## Not written" in md and "| m0 | 2024-06 | failed | EarthEngineAuthError" in md and "| m2 |" in md

    # And through the whole run: the good ROIs land, the bad ones are counted, nothing retried.
    faulty.by_roi.clear()
    out = _direct(tmp_path, tiny_checkpoint, rois, JUNE, store=tmp_path / "s", backend=provider)
    assert out["counts"] == {"written": 2, "skipped": 0, "no_imagery": 1, "failed": 2}
    assert delays == []


# ---------------------------------------------------------------------- corrupt chip cache


class CountingProvider(SyntheticProvider):
    """The synthetic provider (same fetch keys as ``SyntheticProvider(seed)``), counting real fetches."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed=seed)
        self.calls = 0

    def fetch(self, roi, temporal, sensor):  # noqa: ANN001, ANN201
        self.calls += 1
        return super().fetch(roi, temporal, sensor)


def test_corrupt_or_truncated_cached_chip_is_refetched_never_used(tmp_path, tiny_checkpoint, caplog):
    chips = tmp_path / "chips"
    first = CountingProvider()
    _direct(tmp_path, tiny_checkpoint, ROIS_A, MONTHS_1, store=tmp_path / "s1", backend=first, cache=chips)
    assert first.calls == 3
    files = sorted(chips.rglob("*.npz"))
    assert len(files) == 3
    files[0].write_bytes(files[0].read_bytes()[: files[0].stat().st_size // 3])  # truncated
    data = bytearray(files[1].read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the pixels
    files[1].write_bytes(bytes(data))

    second = CountingProvider()
    with caplog.at_level(logging.WARNING, logger="rs_embed_core.cache"):
        _direct(tmp_path, tiny_checkpoint, ROIS_A, MONTHS_1, store=tmp_path / "s2", backend=second, cache=chips)
    assert second.calls == 2  # exactly the two bad entries were fetched again
    assert sum("discarding" in r.getMessage() for r in caplog.records) == 2
    _assert_same_entries(str(tmp_path / "s2"), str(tmp_path / "s1"))

    # A reference to a chip that changed after it was handed out is refused, never decoded.
    from rs_embed_core.cache import ChipCache, load_chip
    from rs_embed_core.errors import CacheError
    from rs_embed_core.providers.base import fetch_key
    from rs_embed_core.specs import SensorSpec

    cache = ChipCache(chips)
    roi = _roi(ROIS_A[0])
    ref = cache.fetch_ref(second, roi, TemporalSpec.month(2024, 5), SensorSpec())
    assert ref.key == fetch_key(second, roi, TemporalSpec.month(2024, 5), SensorSpec())
    Path(ref.path).write_bytes(Path(ref.path).read_bytes()[:-10])
    with pytest.raises(CacheError, match="does not match its reference"):
        load_chip(ref.to_dict())


# ---------------------------------------------------------------------- Prefect result storage


@pytest.fixture()
def prefect_home(prefect_harness):
    """The session's Prefect test server (tests/conftest.py); its PREFECT_HOME holds result storage."""
    return prefect_harness


def _flow_args(tmp_path: Path, ckpt: Path, provider: Any) -> dict[str, Any]:
    return {
        "rois": ROIS_A[:2],
        "months": MONTHS_1,
        "backend": provider,
        "checkpoint": str(ckpt),
        "device": "cpu",
        "batch_size": 2,
        "cache_dir": str(tmp_path / "chips"),
    }


def _fetch_records(home: Path) -> set[Path]:
    """The fetch task's persisted cache records in the (session-wide) Prefect home."""
    return {p for p in (home / "storage").rglob("*") if p.is_file() and "fetch-chip" in str(p)}


@pytest.mark.slow
def test_corrupt_prefect_result_record_is_recomputed_not_used(tmp_path, tiny_checkpoint, prefect_home):
    from flows.embed import embed_rois

    provider = CountingProvider(seed=101)
    args = _flow_args(tmp_path, tiny_checkpoint, provider)
    before = _fetch_records(prefect_home)  # other tests share the session's Prefect home
    embed_rois(store=str(tmp_path / "s1"), **args)
    records = sorted(_fetch_records(prefect_home) - before)
    assert len(records) >= 2
    for rec in records:
        json.loads(rec.read_text())  # JSON, not pickle (fetch results are small references)
        rec.write_text(rec.read_text()[:40])  # truncated mid-record
    out = embed_rois(store=str(tmp_path / "s2"), **args)
    assert out["counts"]["written"] == 2
    for rec in records:  # the task ran again and wrote a good record
        assert json.loads(rec.read_text())["result"]
    _assert_same_entries(str(tmp_path / "s2"), str(tmp_path / "s1"))


@pytest.mark.slow
def test_corrupt_chip_behind_a_cached_fetch_result_is_refetched(tmp_path, tiny_checkpoint, prefect_home):
    from flows.embed import embed_rois

    provider = CountingProvider(seed=102)
    args = _flow_args(tmp_path, tiny_checkpoint, provider)
    embed_rois(store=str(tmp_path / "s1"), **args)
    assert provider.calls == 2
    for npz in (tmp_path / "chips").rglob("*.npz"):
        npz.write_bytes(npz.read_bytes()[:100])
    # A new store, so nothing is skipped: the fetch task's Prefect cache hits, its chips are bad.
    out = embed_rois(store=str(tmp_path / "s2"), **args)
    assert out["counts"]["written"] == 2 and provider.calls == 4
    _assert_same_entries(str(tmp_path / "s2"), str(tmp_path / "s1"))


# ---------------------------------------------------------------------- full or read-only disk


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return res.returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture()
def small_disk(tmp_path):
    """A 2 MiB tmpfs (root only; the test is skipped where mounting is not allowed)."""
    mnt = tmp_path / "disk"
    if not _mount_tmpfs(mnt, "2m"):
        pytest.skip("needs root and mount to make a small filesystem")
    try:
        yield mnt
    finally:
        _umount(mnt)


def test_disk_full_chip_cache_is_a_clear_error_and_leaves_no_partial_entry(small_disk):
    from rs_embed_core.cache import ChipCache
    from rs_embed_core.errors import CacheError
    from rs_embed_core.specs import SensorSpec

    cache = ChipCache(small_disk / "chips")
    provider = SyntheticProvider(seed=4)
    rois = [PointBuffer(2.3 + 0.02 * i, 48.8, 1000) for i in range(4)]  # 200 x 200 px: ~240 kB per chip
    month = TemporalSpec.month(2024, 5)
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (2 * 2**20 - 400_000))  # leave room for one chip only
    first = cache.fetch_ref(provider, rois[0], month, SensorSpec())
    with pytest.raises(CacheError, match="No space left") as info:
        for roi in rois[1:]:
            cache.fetch_ref(provider, roi, month, SensorSpec())
    assert "RS_EMBED_CACHE_DIR" in str(info.value)
    npz = sorted(p.name for p in (small_disk / "chips").rglob("*.npz"))
    sidecars = sorted(p.name for p in (small_disk / "chips").rglob("*.json"))
    assert [n[:-4] for n in npz] == [n[:-5] for n in sidecars] == [first.key]  # no half entry, no temp file
    assert not list((small_disk / "chips").rglob("*.tmp"))
    filler.unlink()  # space again: the good entry still reads, the failed ones fetch normally
    assert cache.get(first.key) is not None
    assert cache.fetch_ref(provider, rois[1], month, SensorSpec()).key


def _big_entries(n: int, month: str = "2026-11") -> list:
    from _store_helpers import make_embedding

    # Random float32 barely compresses: ~150 kB per ViT-B/32-size entry.
    return [make_embedding(k, month, seed=k) for k in range(n)]


def test_disk_full_during_commit_is_a_clear_error_and_store_unchanged(small_disk):
    from rs_embed_core.store import EmbeddingStore

    location = str(small_disk / "store")
    store = EmbeddingStore.open(location)
    with store.writer() as w:
        w.write(_big_entries(1, "2026-10")[0])
        sid = w.commit("first")
    n_commits = len(store.history())
    before = _entries(location)
    with pytest.raises((StoreError, OSError)) as info, store.writer() as w:
        for e in _big_entries(20):  # ~3 MB of float32 tokens on a 2 MiB disk
            w.write(e)
        w.commit("too big")
    msg = str(info.value).lower()
    assert "no space" in msg or "space left" in msg or "enospc" in msg or "os error 28" in msg, msg
    assert isinstance(info.value, StoreError), f"not a StoreError: {type(info.value).__name__}: {info.value}"
    reopened = EmbeddingStore.open(location, create=False)
    assert reopened.snapshot_id() == sid and len(reopened.history()) == n_commits
    after = _entries(location)
    assert sorted(after) == sorted(before)
    for key in before:
        for name in before[key]:
            np.testing.assert_array_equal(after[key][name], before[key][name])


@pytest.fixture()
def read_only_dir(tmp_path):
    """(folder, make_read_only): a read-only remount of a tmpfs as root, else permission bits (root ignores those)."""
    folder = tmp_path / "ro"
    if _mount_tmpfs(folder, "4m"):

        def make_read_only() -> None:
            res = subprocess.run(["mount", "-o", "remount,ro", str(folder)], capture_output=True, text=True)
            assert res.returncode == 0, res.stderr

        try:
            yield folder, make_read_only
        finally:
            _umount(folder)
        return
    if os.geteuid() == 0:
        pytest.skip("root without mount: permission bits cannot make a folder read-only")

    def chmod_read_only() -> None:
        for p in [folder, *folder.rglob("*")]:
            p.chmod(0o555 if p.is_dir() else 0o444)

    try:
        yield folder, chmod_read_only
    finally:
        for p in [folder, *folder.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)


def test_read_only_store_location_is_a_clear_error_and_store_unchanged(read_only_dir):
    from _store_helpers import small_embedding

    from rs_embed_core.store import EmbeddingStore

    folder, make_read_only = read_only_dir
    location = str(folder / "store")
    store = EmbeddingStore.open(location)
    with store.writer() as w:
        w.write(small_embedding(0, "2026-10"))
        sid = w.commit("first")
    before = _entries(location)
    make_read_only()
    # Reading still works on a read-only location.
    assert EmbeddingStore.open(location, create=False).snapshot_id() == sid
    with pytest.raises(StoreError) as info:
        s = EmbeddingStore.open(location, create=False)
        with s.writer() as w:
            w.write(small_embedding(1, "2026-10"))
            w.commit("second")
    msg = str(info.value).lower()
    assert "not writable" in msg and ("read-only" in msg or "permission denied" in msg), msg
    after = _entries(location)
    assert sorted(after) == sorted(before)
    assert EmbeddingStore.open(location, create=False).snapshot_id() == sid
    # Creating a store there is refused just as clearly.
    with pytest.raises(StoreError, match="not writable"):
        EmbeddingStore.open(str(folder / "new-store"))
