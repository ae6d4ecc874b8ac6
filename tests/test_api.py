"""The public API on the synthetic provider and a tiny random checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rs_embed_core import BBox, OutputSpec, PointBuffer, SensorSpec, TemporalSpec
from rs_embed_core.api import embed_chips, get_embedding, get_embedding_from_data, get_embeddings_batch
from rs_embed_core.errors import SpecError, UnknownModelError
from rs_embed_core.grid import PixelGrid, roi_grid
from rs_embed_core.provenance import entry_digest
from rs_embed_core.providers.base import fetch_key
from rs_embed_core.providers.synthetic import SyntheticProvider
from rs_embed_core.specs import DEFAULT_COLLECTION

CONTRACT_META_KEYS = {
    "model", "model_arch", "checkpoint", "checkpoint_path", "checkpoint_revision", "checkpoint_sha256",
    "weights_are_random", "preprocess_path", "preprocess", "image_size", "input_prep", "tile_layout", "pooling",
    "output", "device", "dtype", "versions", "roi", "roi_id", "temporal", "time", "sensor", "provider",
    "fetch_key", "entry_digest", "grid_crs", "grid_transform",
}  # fmt: skip
WINDOW = TemporalSpec.range("2022-06-01", "2022-09-01")


@pytest.fixture(autouse=True)
def _private_chip_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RS_EMBED_CACHE_DIR", str(tmp_path / "chips"))


@pytest.fixture
def sensor(tiny_checkpoint, tiny_model):
    return SensorSpec(collection=f"hf:{tiny_checkpoint}")


def test_reference_examples_run_verbatim(tiny_checkpoint, hf_cache):
    # The two RemoteCLIP examples of the rs-embed docs. Differences: the import line,
    # backend="synthetic", and in the second the hf: target is a local folder. The first
    # uses the DEFAULT checkpoint id: the tiny random checkpoint is seeded into a private
    # HF cache under that id, so it runs offline through the real hub-cache lookup.
    from conftest import seed_hf_cache

    seed_hf_cache(hf_cache, "MVRL/remote-clip-vit-base-patch32", tiny_checkpoint)
    ckpt = tiny_checkpoint

    from rs_embed_core import get_embedding, PointBuffer, TemporalSpec, OutputSpec  # noqa: I001, F811

    emb = get_embedding(
        "remoteclip",
        spatial=PointBuffer(lon=121.5, lat=31.2, buffer_m=2048),
        temporal=TemporalSpec.range("2022-06-01", "2022-09-01"),
        output=OutputSpec.pooled(),
        backend="synthetic",
    )
    assert emb.data.shape == (64,) and emb.meta["checkpoint"] == "MVRL/remote-clip-vit-base-patch32"
    assert emb.meta["weights_are_random"] is True

    from rs_embed_core import get_embedding, PointBuffer, TemporalSpec, OutputSpec, SensorSpec  # noqa: I001, F811

    emb = get_embedding(
        "remoteclip",
        spatial=PointBuffer(lon=121.5, lat=31.2, buffer_m=2048),
        temporal=TemporalSpec.range("2022-06-01", "2022-09-01"),
        sensor=SensorSpec(
            collection=f"hf:{ckpt}",
            bands=("B4", "B3", "B2"),
            scale_m=10,
            cloudy_pct=30,
            composite="median",
        ),
        output=OutputSpec.grid(),
        backend="synthetic",
    )
    assert emb.data.dims == ("dim", "y", "x") and emb.data.shape == (64, 7, 7)
    # The hf: string chose the weights and never reached the provider.
    assert emb.meta["sensor"]["collection"] == DEFAULT_COLLECTION
    assert emb.meta["provider"]["request"]["collection"] == DEFAULT_COLLECTION
    assert emb.meta["checkpoint_path"] == str(tiny_checkpoint.resolve())


def test_meta_has_every_contract_key_and_consistent_digests(sensor):
    roi = PointBuffer(10.0, 50.0, 1000, label="field A")
    emb = get_embedding(
        "remoteclip", spatial=roi, temporal=TemporalSpec.month(2023, 7), sensor=sensor, backend="synthetic"
    )
    m = emb.meta
    assert set(m) >= CONTRACT_META_KEYS
    json.dumps(m)  # JSON-ready
    assert m["roi"]["label"] == "field A" and m["roi_id"] == roi.id
    assert m["time"] == "2023-07-01" and m["pooling"] == "mean" and m["input_prep"] == "resize"
    assert m["fetch_key"] == fetch_key(SyntheticProvider(), roi, TemporalSpec.month(2023, 7), sensor)
    assert m["entry_digest"] == entry_digest(m)
    assert m["provider"]["provider"] == "synthetic" and m["grid_crs"] == "EPSG:32632"
    assert emb.pooled.dtype == np.float32 and emb.image_embedding.shape == (32,)
    assert emb.grid.dtype == np.float32 and emb.grid.attrs["crs"] == "EPSG:32632"


def test_square_chip_grid_covers_the_chip_exactly(sensor):
    roi = PointBuffer(121.5, 31.2, 2048)
    emb = get_embedding(
        "remoteclip", spatial=roi, temporal=WINDOW, sensor=sensor, output=OutputSpec.grid(), backend="synthetic"
    )
    g = roi_grid(roi, 10.0)  # 410 x 410 px
    minx, miny, maxx, maxy = g.bounds
    a, _, c, _, e, f = emb.meta["grid_transform"]
    assert (c, f) == pytest.approx((minx, maxy))
    assert (c + 7 * a, f + 7 * e) == pytest.approx((maxx, miny))
    xs, ys = g.xy_centers(7, 7)
    np.testing.assert_allclose(emb.data.x.values, xs)
    np.testing.assert_allclose(emb.data.y.values, ys)


def test_non_square_chip_grid_is_the_centre_crop_the_model_saw(tiny_model):
    grid = PixelGrid(32633, (10.0, 0.0, 400_000.0, 0.0, -10.0, 5_000_000.0), 600, 300)
    data = np.random.default_rng(0).integers(0, 3000, (3, 300, 600)).astype(np.uint16)
    sensor = SensorSpec(checkpoint=tiny_model.meta["checkpoint_path"])
    emb = get_embedding_from_data("remoteclip", data=data, grid=grid, sensor=sensor, output=OutputSpec.grid())
    a, _, c, _, e, f = emb.meta["grid_transform"]
    # Columns 150..450 of the chip were seen: 3000 m wide, starting 1500 m in.
    assert c == pytest.approx(401_500.0) and c + 7 * a == pytest.approx(404_500.0)
    assert f == pytest.approx(5_000_000.0) and f + 7 * e == pytest.approx(4_997_000.0)
    assert emb.grid.shape == (64, 7, 7) and emb.pooled.shape == (64,) and emb.image_embedding.shape == (32,)


@pytest.mark.parametrize("hw", [(300, 500), (500, 300), (250, 700)])
def test_tile_mode_on_sizes_not_multiple_of_224(tiny_model, hw):
    h, w = hw
    grid = PixelGrid(32631, (10.0, 0.0, 300_000.0, 0.0, -10.0, 6_000_000.0), w, h)
    data = np.random.default_rng(1).integers(0, 4000, (3, h, w)).astype(np.uint16)
    sensor = SensorSpec(checkpoint=tiny_model.meta["checkpoint_path"])
    tiled = get_embedding_from_data("remoteclip", data=data, grid=grid, sensor=sensor, input_prep="tile")
    resized = get_embedding_from_data("remoteclip", data=data, grid=grid, sensor=sensor)
    ny, nx = -(-h // 32), -(-w // 32)
    assert tiled.grid.shape == (64, ny, nx)
    # Dimensions never depend on input_prep or ROI shape.
    assert tiled.pooled.shape == resized.pooled.shape == (64,)
    assert tiled.image_embedding.shape == resized.image_embedding.shape == (32,)
    assert tiled.meta["grid_transform"] == pytest.approx([320.0, 0.0, 300_000.0, 0.0, -320.0, 6_000_000.0])
    # Area-weighted pooling: cells partly outside the chip count by their inside fraction.
    wy = np.clip(h - np.arange(ny) * 32, 0, 32) / 32
    wx = np.clip(w - np.arange(nx) * 32, 0, 32) / 32
    wgt = np.outer(wy, wx)
    expected = (tiled.grid.values * wgt).sum(axis=(1, 2)) / wgt.sum()
    np.testing.assert_allclose(tiled.pooled, expected, rtol=1e-4, atol=1e-5)
    assert tiled.meta["tile_layout"]["n_tiles"] == len(tiled.meta["tile_layout"]["starts_y"]) * len(
        tiled.meta["tile_layout"]["starts_x"]
    )


def test_tile_stitching_places_each_tile_on_the_lattice(tiny_model):
    from rs_embed_core.models.preprocess import clip_fallback, dn_to_uint8

    data = np.random.default_rng(2).integers(0, 4000, (3, 448, 480)).astype(np.uint16)
    sensor = SensorSpec(checkpoint=tiny_model.meta["checkpoint_path"])
    emb = get_embedding_from_data("remoteclip", data=data, sensor=sensor, input_prep="tile")
    u8 = torch.from_numpy(dn_to_uint8(data))
    # Tile (224, 0) alone covers lattice rows 7..13, columns 0..6, with no overlap.
    tokens, _ = tiny_model.forward(clip_fallback(u8[None, :, 224:448, 0:224], 224))
    np.testing.assert_allclose(emb.grid.values[:, 7:14, 0:7], tokens[0].numpy(), rtol=1e-4, atol=1e-4)
    # Columns 8..13 are seen by tiles starting at x=224 and x=256 (flush): averaged.
    t1, _ = tiny_model.forward(clip_fallback(u8[None, :, 0:224, 224:448], 224))
    t2, _ = tiny_model.forward(clip_fallback(u8[None, :, 0:224, 256:480], 224))
    np.testing.assert_allclose(
        emb.grid.values[:, 0:7, 8:14], (t1[0, :, :, 1:7] + t2[0, :, :, 0:6]).numpy() / 2, rtol=1e-4, atol=1e-4
    )
    assert emb.meta["grid_crs"] is None  # no PixelGrid given: pixel units


def test_tile_mode_on_a_chip_smaller_than_the_model_input(tiny_model):
    data = np.random.default_rng(3).integers(0, 4000, (3, 100, 150)).astype(np.uint16)
    grid = PixelGrid(32631, (10.0, 0.0, 0.0, 0.0, -10.0, 1000.0), 150, 100)
    sensor = SensorSpec(checkpoint=tiny_model.meta["checkpoint_path"])
    emb = get_embedding_from_data("remoteclip", data=data, grid=grid, sensor=sensor, input_prep="tile")
    lay = emb.meta["tile_layout"]
    assert lay["upsampled_hw"] == [224, 336] and emb.grid.shape == (64, 7, 11)
    a, *_ = emb.meta["grid_transform"]
    assert a == pytest.approx(10 * 32 * 150 / 336)
    assert emb.pooled.shape == (64,)


def test_batch_equals_single_calls_and_is_batched_across_rois(sensor, monkeypatch):
    rois = [PointBuffer(5.0 + 0.05 * i, 45.0, 800 + 150 * i) for i in range(5)]
    monkeypatch.setenv("RS_EMBED_REMOTECLIP_BATCH_SIZE", "3")
    batch = get_embeddings_batch("remoteclip", spatials=rois, temporal=WINDOW, sensor=sensor, backend="synthetic")
    assert [e.meta["roi_id"] for e in batch] == [r.id for r in rois]
    monkeypatch.setenv("RS_EMBED_REMOTECLIP_BATCH_SIZE", "1")
    for roi, e in zip(rois, batch, strict=True):
        single = get_embedding("remoteclip", spatial=roi, temporal=WINDOW, sensor=sensor, backend="synthetic")
        np.testing.assert_allclose(single.data, e.data, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(single.image_embedding, e.image_embedding, rtol=1e-4, atol=1e-5)
        assert single.meta["entry_digest"] == e.meta["entry_digest"]


def test_max_pooling_and_embed_chips_with_windows(sensor, tiny_model):
    prov = SyntheticProvider(seed=3)
    rois = [PointBuffer(8.0, 47.0, 700), BBox(8.1, 47.0, 8.13, 47.02)]
    windows = [TemporalSpec.month(2022, 5), TemporalSpec.month(2022, 8)]
    chips = [prov.fetch(r, w, sensor) for r, w in zip(rois, windows, strict=True)]
    embs = embed_chips(tiny_model, chips, rois=rois, temporals=windows, sensor=sensor, output=OutputSpec.pooled("max"))
    assert [e.meta["time"] for e in embs] == ["2022-05-01", "2022-08-01"]
    for e in embs:
        np.testing.assert_allclose(e.data, e.grid.values.reshape(64, -1).max(axis=1))
        assert e.meta["pooling"] == "max"
    with pytest.raises(SpecError, match="rois"):
        embed_chips(tiny_model, chips, rois=rois[:1], temporal=windows[0], sensor=sensor)


def test_request_errors_are_clear(sensor):
    roi = PointBuffer(10.0, 50.0, 500)
    with pytest.raises(UnknownModelError, match="remoteclip"):
        get_embedding("clip-vit", spatial=roi, temporal=WINDOW, backend="synthetic")
    with pytest.raises(SpecError, match="provider-only"):
        get_embedding("remoteclip", spatial=roi, temporal=WINDOW, sensor=sensor, backend="tensor")
    with pytest.raises(SpecError, match="bands"):
        get_embedding(
            "remoteclip", spatial=roi, temporal=WINDOW, sensor=SensorSpec(bands=("B8", "B4", "B3")), backend="synthetic"
        )
    with pytest.raises(SpecError, match="input_prep"):
        get_embedding("remoteclip", spatial=roi, temporal=WINDOW, sensor=sensor, backend="synthetic", input_prep="crop")
    with pytest.raises(SpecError, match="data"):
        get_embedding_from_data("remoteclip", data=np.zeros((4, 10, 10), np.uint16), sensor=sensor)
