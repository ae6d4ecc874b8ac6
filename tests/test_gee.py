"""GeeProvider against the REAL ``ee`` client talking to a local fake service.

The fake transport (tests/fake_ee.py) receives exactly what the client sends; the
tests read the serialised expressions and grids back by meaning.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from fake_ee import S2, FakeEarthEngine, Scene, expected_dn, fake_credentials

from rs_embed_core import (
    NoImageryError,
    PermanentProviderError,
    PointBuffer,
    ProviderConfigError,
    SensorSpec,
    TemporalSpec,
    TransientProviderError,
)
from rs_embed_core.cache import ChipCache, fetch_chip
from rs_embed_core.grid import roi_grid
from rs_embed_core.providers.base import fetch_key, fetch_request
from rs_embed_core.providers.gee import (
    HIGH_VOLUME_URL,
    EarthEngineAuthError,
    EarthEngineRequestError,
    GeeProvider,
    _tiles,
)

ROI = PointBuffer(9.19, 45.46, 320, label="milan")  # UTM 32N, 64 x 64 px at 10 m
JUNE = TemporalSpec.month(2024, 6)


class Sleeper:
    """Records the backoff delays instead of sleeping."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, s: float) -> None:
        self.delays.append(s)


@pytest.fixture
def fake() -> FakeEarthEngine:
    return FakeEarthEngine()


def make(fake: FakeEarthEngine, **kw) -> tuple[GeeProvider, Sleeper]:
    sleeper = Sleeper()
    kw.setdefault("client_retries", 0)  # count our own retries exactly; ee's are covered in one test
    provider = GeeProvider(
        project="test", http_transport=fake, credentials=fake_credentials(), sleep=sleeper, seed=0, **kw
    )
    return provider, sleeper


def test_success_sends_the_composite_and_grid_and_decodes_npy(fake):
    provider, sleeper = make(fake)
    chip = provider.fetch(ROI, JUNE, SensorSpec())
    grid = roi_grid(ROI, 10.0)

    # The cheap listing call: collection, bounds on the exact grid, window, cloud filter, bands.
    (listing,) = fake.calls("value")
    expr = listing.expression
    assert expr.collections == [S2]
    assert expr.date_range == ("2024-06-01", "2024-07-01")  # end exclusive
    assert expr.max_cloudy == 30.0
    assert expr.region == {"coordinates": list(grid.bounds), "crs": "EPSG:32632", "geodesic": False}
    assert ["B4", "B3", "B2"] in expr.selected_bands

    (pixels,) = fake.calls("pixels")
    body = pixels.body
    assert pixels.uri.startswith(HIGH_VOLUME_URL)
    assert body["fileFormat"] == "NPY"
    assert body["bandIds"] == ["B4", "B3", "B2", "count"]
    a, b, c, d, e, f = grid.transform
    assert body["grid"] == {
        "dimensions": {"width": 64, "height": 64},
        "affineTransform": {"scaleX": a, "shearX": b, "translateX": c, "shearY": d, "scaleY": e, "translateY": f},
        "crsCode": "EPSG:32632",
    }
    pexpr = pixels.expression
    assert pexpr.calls("reduce.median") and not pexpr.calls("ImageCollection.mosaic")
    assert pexpr.calls("reduce.count") and pexpr.calls("Image.toUint16")
    assert pexpr.max_cloudy == 30.0 and pexpr.date_range == ("2024-06-01", "2024-07-01")

    # Decoded chip: uint16 CHW B4 B3 B2 on the grid, count band -> valid, scenes sorted by time.
    assert chip.dn.dtype == np.uint16 and chip.dn.shape == (3, 64, 64)
    assert chip.bands == ("B4", "B3", "B2") and chip.grid == grid
    np.testing.assert_array_equal(chip.dn, expected_dn(grid.transform, 64, 64, ["B4", "B3", "B2"]))
    assert chip.valid_fraction == 1.0 and int(chip.valid.max()) == 2  # 2 June scenes with <= 30 % cloud
    assert chip.scene_ids == (
        "20240605T102021_20240605T102022_T32UNA",
        "20240612T101559_20240612T102021_T32UNA",
    )
    assert chip.dates == ("2024-06-05T10:20:21Z", "2024-06-12T10:15:59Z")
    assert chip.provider == "gee"
    assert chip.request == fetch_request(provider, ROI, JUNE, SensorSpec())
    assert chip.meta["gee"]["cloud_mask"] == "none" and chip.meta["gee"]["pixel_requests"] == 1
    json.dumps(chip.provenance())  # provenance is JSON-ready
    assert sleeper.delays == []


def test_row_zero_is_north(fake):
    provider, _ = make(fake)
    chip = provider.fetch(ROI, JUNE, SensorSpec())
    # The fake encodes northing/10 in B3 and easting/10 in B4 at each pixel centre.
    b4, b3 = chip.dn[0].astype(int), chip.dn[1].astype(int)
    top = chip.grid.bounds[3]
    assert b3[0, 0] == int((top - 5) // 10) % 10000
    assert np.all(np.diff(b3[:, 0]) == -1)  # one row down = 10 m south
    assert np.all(np.diff(b4[0, :]) == 1)  # one column right = 10 m east


def test_mosaic_and_cloud_score_plus_masking_are_sent_and_recorded(fake):
    provider, _ = make(fake)
    sensor = SensorSpec(composite="mosaic", cloud_mask="cloud_score_plus", cloud_score_threshold=0.65, cloudy_pct=10)
    chip = provider.fetch(ROI, JUNE, sensor)
    expr = fake.calls("pixels")[0].expression
    assert set(expr.collections) == {S2, "GOOGLE/CLOUD_SCORE_PLUS/V1/S2_HARMONIZED"}
    assert expr.calls("ImageCollection.mosaic") and not expr.calls("reduce.median")
    assert expr.calls("Image.linkCollection") and expr.mask_thresholds == [0.65]
    assert expr.max_cloudy == 10.0
    assert chip.n_scenes == 1  # only the 5 % cloudy scene passes
    assert chip.meta["gee"]["cloud_score"] == {
        "collection": "GOOGLE/CLOUD_SCORE_PLUS/V1/S2_HARMONIZED",
        "band": "cs_cdf",
        "threshold": 0.65,
    }
    # Masking is part of the fetch key: masked and unmasked chips never share a cache entry.
    assert fetch_key(provider, ROI, JUNE, sensor) != fetch_key(
        provider, ROI, JUNE, SensorSpec(composite="mosaic", cloudy_pct=10)
    )
    assert chip.request["sensor"]["cloud_score_threshold"] == 0.65


def test_empty_collection_raises_no_imagery_without_pixel_request(fake):
    provider, _ = make(fake)
    sensor = SensorSpec(cloudy_pct=1)  # every June scene is cloudier than 1 %
    with pytest.raises(NoImageryError) as info:
        provider.fetch(ROI, JUNE, sensor)
    msg = str(info.value)
    for part in (ROI.id, "milan", "2024-06-01..2024-07-01", S2, "<= 1", "widen the window", "cloudy_pct"):
        assert part in msg
    assert isinstance(info.value, PermanentProviderError)
    assert fake.calls("pixels") == [] and len(fake.calls("value")) == 1


def test_quota_429_is_retried_with_backoff_then_succeeds(fake):
    provider, sleeper = make(fake, retry_base_s=1.0, retry_cap_s=8.0)
    fake.script("pixels", [429, 429])
    chip = provider.fetch(ROI, JUNE, SensorSpec())
    assert chip.dn.shape == (3, 64, 64)
    assert len(fake.calls("pixels")) == 3
    assert len(sleeper.delays) == 2
    assert 0.5 <= sleeper.delays[0] <= 1.0 and 1.0 <= sleeper.delays[1] <= 2.0  # jittered, doubling


def test_repeated_503_fails_as_transient_after_capped_retries(fake):
    provider, sleeper = make(fake, max_retries=3, retry_base_s=10.0, retry_cap_s=15.0)
    fake.script("pixels", [503] * 10)
    with pytest.raises(TransientProviderError) as info:
        provider.fetch(ROI, JUNE, SensorSpec())
    assert "503" in str(info.value) and "4 attempts" in str(info.value)
    assert len(fake.calls("pixels")) == 4
    assert len(sleeper.delays) == 3 and max(sleeper.delays) <= 15.0  # the cap holds


def test_rate_limit_403_is_quota_not_auth(fake):
    provider, sleeper = make(fake)
    fake.script("pixels", [(403, "Quota exceeded for quota metric 'Requests' (rateLimitExceeded).")])
    assert provider.fetch(ROI, JUNE, SensorSpec()).n_scenes == 2
    assert len(sleeper.delays) == 1


def test_connection_failures_are_transient(fake):
    provider, sleeper = make(fake)
    fake.script("value", [ConnectionResetError("reset by peer"), TimeoutError("read timed out")])
    chip = provider.fetch(ROI, JUNE, SensorSpec())
    assert chip.n_scenes == 2 and len(sleeper.delays) == 2


def test_client_retries_happen_inside_ee_first(fake, monkeypatch):
    # The ee client retries 429/5xx itself (googleapiclient, rand() * 2**n s); make its sleep instant.
    import googleapiclient.http

    monkeypatch.setattr(googleapiclient.http.random, "random", lambda: 0.0)
    provider, sleeper = make(fake, client_retries=2)
    fake.script("pixels", [503, 503])
    provider.fetch(ROI, JUNE, SensorSpec())
    assert len(fake.calls("pixels")) == 3 and sleeper.delays == []  # recovered inside the client


def test_auth_failure_is_permanent_and_not_retried(fake):
    provider, sleeper = make(fake)
    fake.script("value", [401])  # the token refresh then fails like a revoked token
    with pytest.raises(EarthEngineAuthError) as info:
        provider.fetch(ROI, JUNE, SensorSpec())
    assert isinstance(info.value, ProviderConfigError)
    assert "earthengine authenticate" in str(info.value) and "EE_PROJECT" in str(info.value)
    assert len(fake.calls("value")) == 1 and sleeper.delays == []


def test_project_permission_denied_is_permanent(fake):
    provider, sleeper = make(fake)
    fake.script("pixels", [403])
    with pytest.raises(EarthEngineAuthError, match="EE_PROJECT"):
        provider.fetch(ROI, JUNE, SensorSpec())
    assert len(fake.calls("pixels")) == 1 and sleeper.delays == []


def test_memory_limit_400_is_permanent_with_guidance(fake):
    provider, sleeper = make(fake)
    fake.script("pixels", [(400, "User memory limit exceeded.")])
    with pytest.raises(EarthEngineRequestError, match="smaller ROI"):
        provider.fetch(ROI, JUNE, SensorSpec())
    assert len(fake.calls("pixels")) == 1 and sleeper.delays == []


def test_request_size_400_from_the_service_is_not_retried():
    fake = FakeEarthEngine(max_request_bytes=10_000)  # the service is stricter than the provider thinks
    provider, sleeper = make(fake)
    with pytest.raises(EarthEngineRequestError, match="48 MiB limit"):
        provider.fetch(ROI, JUNE, SensorSpec())
    assert len(fake.calls("pixels")) == 1 and sleeper.delays == []


def test_large_request_is_split_and_stitched():
    limit = 32 * 32 * 8  # bytes of a 32 x 32 request of 4 uint16 bands
    fake = FakeEarthEngine(max_request_bytes=limit)  # the fake refuses anything larger, like the real one
    provider, _ = make(fake, max_request_bytes=limit)
    roi = PointBuffer(9.19, 45.46, 350)  # 70 x 70 px -> 5 full-width strips of 14 rows
    chip = provider.fetch(roi, JUNE, SensorSpec())
    grid = roi_grid(roi, 10.0)
    calls = fake.calls("pixels")
    assert len(calls) == 5 and chip.meta["gee"]["pixel_requests"] == 5
    assert len(fake.calls("value")) == 1  # the scene listing is not repeated per tile
    sizes = [(c.body["grid"]["dimensions"]["width"], c.body["grid"]["dimensions"]["height"]) for c in calls]
    assert all(w * h * 8 <= limit for w, h in sizes) and sum(w * h for w, h in sizes) == 70 * 70
    np.testing.assert_array_equal(chip.dn, expected_dn(grid.transform, 70, 70, ["B4", "B3", "B2"]))
    assert chip.valid_fraction == 1.0


def test_tiles_respect_the_side_limit():
    tiles = _tiles(70_000, 10, 8, 48 * 1024 * 1024, 32_768)
    assert [t[3] for t in tiles] == [32_768, 32_768, 70_000 - 65_536] and all(t[2] == 10 for t in tiles)
    # 5000 x 5000 px of 3 bands + count (the largest ROI): 4 strips, each under 48 MiB.
    tiles = _tiles(5000, 5000, 8, 48 * 1024 * 1024, 32_768)
    assert len(tiles) == 4 and all(h * w * 8 <= 48 * 1024 * 1024 for _, _, h, w in tiles)
    assert sum(h * w for _, _, h, w in tiles) == 5000 * 5000
    assert _tiles(2048, 2048, 8, 48 * 1024 * 1024, 32_768) == [(0, 0, 2048, 2048)]  # the largest square fits


def test_partial_coverage_sets_valid_fraction(fake):
    grid = roi_grid(ROI, 10.0)
    fake.coverage_min_x = grid.bounds[0] + 16 * 10  # the 16 western columns have no observation
    provider, _ = make(fake)
    chip = provider.fetch(ROI, JUNE, SensorSpec())
    assert chip.valid_fraction == pytest.approx(48 / 64)
    assert np.all(chip.valid[:, :16] == 0) and np.all(chip.dn[:, :, :16] == 0)
    assert np.all(chip.valid[:, 16:] == 2)
    assert chip.provenance()["valid_fraction"] == 0.75


def test_second_fetch_through_the_cache_sends_no_request(fake, tmp_path):
    provider, _ = make(fake)
    cache = ChipCache(tmp_path)
    first = fetch_chip(provider, ROI, JUNE, SensorSpec(), cache=cache)
    n = len(fake.requests)
    second = fetch_chip(provider, ROI, JUNE, SensorSpec(), cache=cache)
    assert len(fake.requests) == n
    np.testing.assert_array_equal(first.dn, second.dn)
    assert second.scene_ids == first.scene_ids and second.request == first.request


def test_missing_project_is_a_config_error(monkeypatch):
    for var in ("EE_PROJECT", "GOOGLE_CLOUD_PROJECT", "EE_SERVICE_ACCOUNT_KEY"):
        monkeypatch.delenv(var, raising=False)
    provider = GeeProvider(http_transport=FakeEarthEngine(), credentials=fake_credentials())
    with pytest.raises(ProviderConfigError, match="EE_PROJECT"):
        provider.fetch(ROI, JUNE, SensorSpec())


def test_project_and_key_file_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("EE_PROJECT", "my-ee-project")
    monkeypatch.setenv("EE_SERVICE_ACCOUNT_KEY", str(tmp_path / "missing.json"))
    provider = GeeProvider(http_transport=FakeEarthEngine())
    assert provider.project == "my-ee-project"
    with pytest.raises(EarthEngineAuthError, match="missing.json"):
        provider.fetch(ROI, JUNE, SensorSpec())
    bad = tmp_path / "bad.json"
    bad.write_text('{"type": "service_account", "private_key": "not a key"}')
    with pytest.raises(EarthEngineAuthError, match="not a usable service-account"):
        GeeProvider(credentials_file=bad, http_transport=FakeEarthEngine()).fetch(ROI, JUNE, SensorSpec())


def test_describe_and_repr_hold_no_secrets(fake):
    provider = GeeProvider(project="test", credentials_file="/secret/key.json", http_transport=fake)
    text = json.dumps(provider.describe()) + repr(provider)
    assert "secret" not in text and "key.json" not in text
    assert provider.name == "gee" and provider.version and provider.cacheable


def test_other_collection_and_scene_catalogue(fake):
    fake.scenes = (Scene("S1", "2024-06-03T00:00:00Z", 0.0, collection="OTHER/COLL"),)
    provider, _ = make(fake)
    chip = provider.fetch(ROI, JUNE, SensorSpec(collection="OTHER/COLL", bands=("B4",)))
    assert fake.calls("value")[0].expression.collections == ["OTHER/COLL"]
    assert chip.scene_ids == ("S1",) and chip.dn.shape == (1, 64, 64)
