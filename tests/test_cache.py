"""The content-addressed chip cache: round trip, no pickle, checksums, concurrency, housekeeping."""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from rs_embed_core import CacheError, PointBuffer, SensorSpec, TemporalSpec
from rs_embed_core.cache import (
    ChipCache,
    ChipRef,
    default_cache,
    default_cache_dir,
    fetch_chip,
    fetch_chip_ref,
    load_chip,
    main,
)
from rs_embed_core.providers.base import fetch_key
from rs_embed_core.providers.synthetic import SyntheticProvider

ROI = PointBuffer(13.4, 52.5, 320, label="berlin")
JULY = TemporalSpec.month(2025, 7)
S2 = SensorSpec()


class CountingProvider:
    """Real synthetic scenes, counting fetches (optionally slow, optionally logging to a file)."""

    name = "counting"
    version = "1"

    def __init__(self, delay_s: float = 0.0, log_path: str | None = None) -> None:
        self.inner = SyntheticProvider(seed=1)
        self.delay_s = delay_s
        self.log_path = log_path
        self.calls = 0
        self._lock = threading.Lock()

    def describe(self) -> dict:
        return {"seed": 1}

    def fetch(self, roi, temporal, sensor):
        with self._lock:
            self.calls += 1
        if self.log_path:
            with open(self.log_path, "a") as fh:  # O_APPEND: one line per fetch, across processes
                fh.write(f"{os.getpid()}\n")
        time.sleep(self.delay_s)
        return self.inner.fetch(roi, temporal, sensor)


def test_round_trip_ref_and_no_pickle(tmp_path):
    cache = ChipCache(tmp_path)
    provider = CountingProvider()
    chip, ref = cache.fetch_with_ref(provider, ROI, JULY, S2)
    assert ref.key == fetch_key(provider, ROI, JULY, S2)
    assert Path(ref.path).is_file() and ref.shape == chip.dn.shape
    loaded = cache.load(ref)
    np.testing.assert_array_equal(loaded.dn, chip.dn)
    np.testing.assert_array_equal(loaded.valid, chip.valid)
    assert loaded.grid == chip.grid and loaded.bands == chip.bands
    assert loaded.scene_ids == chip.scene_ids and loaded.dates == chip.dates
    assert loaded.request == chip.request and loaded.provenance() == json.loads(json.dumps(chip.provenance()))
    # The ref is a small JSON value that orchestration can return and pass around.
    ref2 = ChipRef.from_dict(json.loads(json.dumps(ref.to_dict())))
    assert ref2 == ref and load_chip(ref2.to_dict()).dn.shape == chip.dn.shape
    # Only plain numeric .npy members: readable with allow_pickle=False, no object arrays.
    with zipfile.ZipFile(ref.path) as zf:
        assert sorted(zf.namelist()) == ["dn.npy", "meta.npy", "valid.npy"]
    with np.load(ref.path, allow_pickle=False) as npz:
        assert {npz[k].dtype.kind for k in npz.files} <= {"u"}
    side = json.loads(Path(ref.path).with_suffix(".json").read_text())
    assert side["sha256"] == ref.sha256 and side["key"] == ref.key


def test_second_fetch_performs_no_provider_call(tmp_path):
    provider = CountingProvider()
    cache = ChipCache(tmp_path)
    a = fetch_chip(provider, ROI, JULY, S2, cache=cache)
    b = fetch_chip(provider, ROI, JULY, S2, cache=cache)
    c = fetch_chip(provider, ROI, JULY, S2, cache=str(tmp_path))  # a path means the same cache
    assert provider.calls == 1
    np.testing.assert_array_equal(a.dn, b.dn)
    np.testing.assert_array_equal(a.dn, c.dn)
    # Anything that changes pixels is a different key.
    fetch_chip(provider, ROI, JULY, SensorSpec(cloudy_pct=10), cache=cache)
    fetch_chip(provider, ROI, TemporalSpec.month(2025, 8), S2, cache=cache)
    fetch_chip(provider, PointBuffer(13.4, 52.5, 320, label="renamed"), JULY, S2, cache=cache)  # label: same key
    assert provider.calls == 3
    assert cache.info()["entries"] == 3


@pytest.mark.parametrize("damage", ["flip", "truncate", "sidecar", "empty"])
def test_corrupt_entries_are_discarded_and_refetched(tmp_path, damage, caplog):
    provider = CountingProvider()
    cache = ChipCache(tmp_path)
    first, ref = cache.fetch_with_ref(provider, ROI, JULY, S2)
    path = Path(ref.path)
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(bytes(data[: len(data) // 3]))
    elif damage == "sidecar":
        path.with_suffix(".json").write_text("{not json")
    else:
        path.write_bytes(b"")
    if damage != "sidecar":  # the npz itself is intact when only the sidecar is damaged
        with pytest.raises(CacheError):
            cache.load(ref)  # a reference never returns damaged pixels
    again = cache.fetch(provider, ROI, JULY, S2)
    assert provider.calls == 2
    np.testing.assert_array_equal(again.dn, first.dn)
    assert cache.load(cache.ref(ref.key)).dn.shape == first.dn.shape
    assert "discarding" in caplog.text


def test_failed_fetch_leaves_nothing_and_releases_the_lock(tmp_path):
    class Failing(CountingProvider):
        def fetch(self, roi, temporal, sensor):
            raise RuntimeError("boom")

    cache = ChipCache(tmp_path)
    with pytest.raises(RuntimeError):
        cache.fetch(Failing(), ROI, JULY, S2)
    assert cache.info()["entries"] == 0
    assert not list(tmp_path.rglob("*.tmp")) and not list(tmp_path.rglob("*.npz"))
    provider = CountingProvider()  # same name and key as Failing
    cache.fetch(provider, ROI, JULY, S2)
    assert provider.calls == 1


def test_threads_fetch_the_same_key_once(tmp_path):
    provider = CountingProvider(delay_s=0.2)
    cache = ChipCache(tmp_path)
    results: list = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.fetch_ref(provider, ROI, JULY, S2))) for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert provider.calls == 1
    assert len({r.sha256 for r in results}) == 1 and len(results) == 8


def _process_fetch(root: str, log_path: str, ready_dir: str, go_path: str, out_path: str) -> None:
    Path(ready_dir, str(os.getpid())).touch()
    while not os.path.exists(go_path):
        time.sleep(0.005)
    ref = ChipCache(root).fetch_ref(CountingProvider(delay_s=0.3, log_path=log_path), ROI, JULY, S2)
    Path(out_path).write_text(json.dumps(ref.to_dict()))


def test_processes_fetch_the_same_key_once(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    root, log, ready, go = tmp_path / "cache", tmp_path / "fetches.log", tmp_path / "ready", tmp_path / "go"
    ready.mkdir()
    procs = [
        ctx.Process(target=_process_fetch, args=(str(root), str(log), str(ready), str(go), str(tmp_path / f"out{i}")))
        for i in range(4)
    ]
    for p in procs:
        p.start()
    deadline = time.monotonic() + 60
    while len(list(ready.iterdir())) < len(procs) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()  # release all workers at once
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert len(log.read_text().splitlines()) == 1  # exactly one provider fetch across 4 processes
    refs = [ChipRef.from_dict(json.loads((tmp_path / f"out{i}").read_text())) for i in range(4)]
    assert len({r.sha256 for r in refs}) == 1
    assert ChipCache(root).load(refs[0]).dn.shape == (3, 64, 64)


def test_info_prune_and_cli(tmp_path, capsys):
    cache = ChipCache(tmp_path)
    provider = CountingProvider()
    old = cache.fetch_ref(provider, ROI, JULY, S2)
    new = cache.fetch_ref(provider, ROI, TemporalSpec.month(2025, 8), S2)
    info = cache.info()
    assert info["entries"] == 2 and info["bytes"] > 2 * 3 * 64 * 64  # np.savez stores raw arrays
    ten_days_ago = time.time() - 10 * 86400
    os.utime(Path(old.path).with_suffix(".json"), (ten_days_ago, ten_days_ago))
    stale_tmp = Path(old.path).parent / ".x.npz.123.tmp"
    stale_tmp.write_bytes(b"partial")
    os.utime(stale_tmp, (ten_days_ago, ten_days_ago))
    assert main(["--dir", str(tmp_path), "prune", "--older-than-days", "7"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["removed"] == 1 and out["freed_bytes"] > 0
    assert not stale_tmp.exists() and cache.ref(old.key) is None and cache.ref(new.key) == new
    assert main(["--dir", str(tmp_path), "info"]) == 0
    assert json.loads(capsys.readouterr().out)["entries"] == 1
    # A hit refreshes the last-use time, so used entries survive pruning.
    cache.fetch(provider, ROI, TemporalSpec.month(2025, 8), S2)
    assert cache.prune(1)["removed"] == 0
    assert cache.clear()["removed"] == 1 and cache.info()["entries"] == 0


def test_default_cache_follows_the_environment(tmp_path, monkeypatch):
    provider = CountingProvider()
    monkeypatch.setenv("RS_EMBED_CACHE_DIR", str(tmp_path / "env-cache"))
    assert default_cache().root == tmp_path / "env-cache"
    fetch_chip(provider, ROI, JULY, S2)
    fetch_chip(provider, ROI, JULY, S2)
    assert provider.calls == 1 and ChipCache(tmp_path / "env-cache").info()["entries"] == 1
    fetch_chip(provider, ROI, JULY, S2, cache=False)
    assert provider.calls == 2
    monkeypatch.setenv("RS_EMBED_CACHE_DIR", "off")
    assert default_cache() is None
    fetch_chip(provider, ROI, JULY, S2)
    assert provider.calls == 3
    with pytest.raises(CacheError, match="RS_EMBED_CACHE_DIR"):
        fetch_chip_ref(provider, ROI, JULY, S2)
    monkeypatch.delenv("RS_EMBED_CACHE_DIR")
    assert "rs-embed" in str(default_cache_dir())  # the user cache dir (not created here)


def test_non_cacheable_providers_bypass_reads(tmp_path):
    provider = CountingProvider()
    provider.cacheable = False
    fetch_chip(provider, ROI, JULY, S2, cache=tmp_path)
    fetch_chip(provider, ROI, JULY, S2, cache=tmp_path)
    assert provider.calls == 2 and ChipCache(tmp_path).info()["entries"] == 0
    ref = fetch_chip_ref(provider, ROI, JULY, S2, cache=tmp_path)  # a reference still needs a file
    assert provider.calls == 3 and load_chip(ref).dn.shape == (3, 64, 64)


def test_unwritable_root_and_bad_arguments(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CacheError, match="RS_EMBED_CACHE_DIR"):
        ChipCache(blocker / "sub")
    with pytest.raises(CacheError):
        ChipCache(tmp_path).get("../../etc")
    with pytest.raises(CacheError):
        fetch_chip(CountingProvider(), ROI, JULY, S2, cache=42)
    with pytest.raises(CacheError, match="not in the cache"):
        load_chip(ChipRef("ab" * 32, str(tmp_path / "nope.npz"), (3, 1, 1), "0" * 64))
