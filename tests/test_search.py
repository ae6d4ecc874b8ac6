"""Caption search, patch heatmaps, image search and change reports over a real store.

Entries are planted with known vectors (hand-built Embeddings written through the real
store writer), so nearest neighbours and change distances are known exactly; the text
tower is the real tiny dev checkpoint loaded through the real loading path.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from rs_embed_core import search
from rs_embed_core.embedding import Embedding
from rs_embed_core.errors import (
    CheckpointMismatchError,
    EmptyStoreError,
    SpecError,
    StoreLookupError,
)
from rs_embed_core.grid import roi_grid
from rs_embed_core.provenance import entry_digest
from rs_embed_core.specs import PointBuffer
from rs_embed_core.store import EmbeddingStore, entry_grid

# Real places in different UTM zones (31N, 33N, 37S, 30N, 56S).
CENTRES = [(2.35, 48.85), (13.40, 52.52), (36.82, -1.29), (-3.70, 40.42), (151.21, -33.87)]
OTHER_SHA = "cd" * 32


def planted(
    k: int,
    month: str,
    *,
    image: np.ndarray,
    pooled: np.ndarray | None = None,
    sha: str,
    checkpoint: str = "dev-checkpoint",
    dim: int = 64,
) -> Embedding:
    """An entry of ROI ``k`` at ``month`` with the given vectors (7 x 7 token grid in the ROI's UTM zone)."""
    lon, lat = CENTRES[k]
    roi = PointBuffer(lon, lat, 1000.0, label=f"site-{k}")
    pixel = roi_grid(roi, 10.0)
    minx, _, _, maxy = pixel.bounds
    step_x, step_y = pixel.width * 10.0 / 7, pixel.height * 10.0 / 7
    transform = (step_x, 0.0, minx, 0.0, -step_y, maxy)
    xs, ys = minx + step_x * (np.arange(7) + 0.5), maxy - step_y * (np.arange(7) + 0.5)
    tokens = np.full((dim, 7, 7), 0.1, np.float32)
    grid = xr.DataArray(tokens, dims=("dim", "y", "x"), coords={"x": xs, "y": ys}, attrs={"crs": pixel.crs})
    pooled = np.asarray(pooled if pooled is not None else tokens.mean(axis=(1, 2)), np.float32)
    meta = {
        "model": "remoteclip",
        "model_arch": "RSEmbed-Tiny-ViT-32",
        "checkpoint": checkpoint,
        "checkpoint_path": checkpoint,
        "checkpoint_sha256": sha,
        "weights_are_random": True,
        "preprocess_path": "fallback",
        "input_prep": "resize",
        "pooling": "mean",
        "roi": roi.to_dict(),
        "roi_id": roi.id,
        "time": f"{month}-01",
        "provider": {"provider": "planted", "scene_ids": [], "dates": [], "n_scenes": 1, "valid_fraction": 1.0},
        "fetch_key": f"{k:02d}{month}".ljust(64, "0"),
        "grid_crs": pixel.crs,
        "grid_transform": list(transform),
    }
    meta["entry_digest"] = entry_digest(meta)
    return Embedding(data=pooled, meta=meta, grid=grid, pooled=pooled, image_embedding=np.asarray(image, np.float32))


def write(location, entries, message="planted") -> str:
    store = EmbeddingStore.open(location)
    with store.writer() as w:
        for e in entries:
            w.write(e)
        return w.commit(message)


def roi_id(k: int) -> str:
    return PointBuffer(*CENTRES[k], 1000.0).id


def orthonormal(t: np.ndarray, seed: int = 0) -> np.ndarray:
    """A unit vector orthogonal to unit ``t``."""
    u = np.random.default_rng(seed).standard_normal(t.shape[0]).astype(np.float64)
    u -= (u @ t) * t
    return (u / np.linalg.norm(u)).astype(np.float32)


@pytest.fixture(scope="module")
def tiny(tiny_model, tiny_checkpoint):
    return tiny_model, str(tiny_checkpoint), tiny_model.meta["checkpoint_sha256"]


# -- text search ---------------------------------------------------------------------------


def test_text_search_ranks_planted_vectors_with_filters(tmp_path, tiny):
    model, ckpt, sha = tiny
    t = model.encode_text(["an airport with runways"])[0]
    u = orthonormal(t)
    # Scores by construction (norms vary on purpose: ranking is by cosine, not dot product).
    nov = {0: 3.0 * t, 1: 0.5 * (0.8 * t + 0.6 * u), 2: 2.0 * u, 3: -t}  # 1.0, 0.8, 0.0, -1.0
    oct_ = {0: 0.6 * t + 0.8 * u, 1: -(0.5 * t + np.sqrt(0.75) * u)}  # 0.6, -0.5
    entries = [planted(k, "2026-11", image=v, sha=sha, checkpoint=ckpt) for k, v in nov.items()]
    entries += [planted(k, "2026-10", image=v, sha=sha, checkpoint=ckpt) for k, v in oct_.items()]
    loc = tmp_path / "emb"
    snap = write(loc, entries)

    df = search.text_search(loc, "an airport with runways", k=None, device="cpu")  # checkpoint resolved from the store
    assert tuple(df.columns) == search.RESULT_COLUMNS
    expected = [(0, "2026-11", 1.0), (1, "2026-11", 0.8), (0, "2026-10", 0.6), (2, "2026-11", 0.0)]
    expected += [(1, "2026-10", -0.5), (3, "2026-11", -1.0)]
    assert list(zip(df.roi_id, df.time.dt.strftime("%Y-%m"), strict=True)) == [(roi_id(k), m) for k, m, _ in expected]
    np.testing.assert_allclose(df.score, [s for _, _, s in expected], atol=1e-5)
    assert list(df.label) == [f"site-{k}" for k, _, _ in expected]
    np.testing.assert_allclose(df[["lon", "lat"]].to_numpy(), np.array([CENTRES[k] for k, _, _ in expected]))
    assert df.attrs["checkpoint_sha256"] == sha and df.attrs["weights_are_random"] is True
    assert len(search.text_search(loc, "an airport with runways", k=2, model=model)) == 2

    only_oct = search.text_search(loc, "an airport with runways", months=["2026-10"], model=model)
    assert set(only_oct.time) == {np.datetime64("2026-10-01")}
    assert list(only_oct.roi_id) == [roi_id(0), roi_id(1)]
    # The per-snapshot vector cache gives the same answer; a new snapshot gets a new file.
    cache = tmp_path / "cache"
    first = search.text_search(loc, "an airport with runways", k=None, model=model, cache_dir=cache)
    again = search.text_search(loc, "an airport with runways", k=None, model=model, cache_dir=cache)
    assert len(list(cache.glob("*.npz"))) == 1
    for frame in (first, again):
        assert frame[["roi_id", "label", "time", "lon", "lat"]].equals(df[["roi_id", "label", "time", "lon", "lat"]])
        np.testing.assert_allclose(frame.score, df.score, atol=1e-6)
    write(loc, [planted(4, "2026-11", image=-u, sha=sha, checkpoint=ckpt)])
    assert len(search.text_search(loc, "an airport with runways", k=None, model=model, cache_dir=cache)) == 7
    assert len(list(cache.glob("*.npz"))) == 2
    at_snapshot = search.text_search(loc, "an airport with runways", k=None, model=model, ref=snap)
    assert len(at_snapshot) == 6 and at_snapshot.attrs["snapshot_id"] == snap

    by_label = search.text_search(loc, "an airport with runways", rois=["site-2", roi_id(3)], k=1, model=model)
    assert list(by_label.roi_id) == [roi_id(2)]


def test_text_encoding_is_deterministic_for_a_random_weight_checkpoint(tmp_path, tiny_model):
    from rs_embed_core.models import load_model, make_dev_checkpoint

    captions = ["an airport", "a harbour with ships"]
    a = tiny_model.encode_text(captions)
    b = tiny_model.encode_text(list(reversed(captions)))[::-1]
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(a[0], a[1])
    # The same seed written again elsewhere and loaded from disk gives the same text vectors.
    again = load_model("remoteclip", checkpoint=str(make_dev_checkpoint(tmp_path / "again", arch="tiny")), device="cpu")
    assert again is not tiny_model
    assert again.meta["checkpoint_sha256"] == tiny_model.meta["checkpoint_sha256"]
    np.testing.assert_array_equal(again.encode_text(captions), a)


def test_refuses_entries_of_mixed_checkpoints(tmp_path, tiny):
    model, ckpt, sha = tiny
    rng = np.random.default_rng(1)
    loc = tmp_path / "emb"
    write(loc, [planted(0, "2026-10", image=rng.standard_normal(32), sha=sha, checkpoint=ckpt)])
    write(loc, [planted(1, "2026-11", image=rng.standard_normal(32), sha=OTHER_SHA, checkpoint="other/ckpt")])
    with pytest.raises(CheckpointMismatchError) as err:
        search.text_search(loc, "a forest", model=model)
    assert sha in str(err.value) and OTHER_SHA in str(err.value) and "other/ckpt" in str(err.value)
    with pytest.raises(CheckpointMismatchError):
        search.image_search(loc, roi_id(0), "2026-10")
    with pytest.raises(CheckpointMismatchError):  # the query's checkpoint differs from the candidates'
        search.image_search(loc, roi_id(0), "2026-10", months=["2026-11"])
    # A selection of one checkpoint is fine.
    assert len(search.text_search(loc, "a forest", months=["2026-10"], model=model)) == 1


def test_refuses_a_text_encoder_of_other_weights(tmp_path, tiny):
    from rs_embed_core.models import load_model, make_dev_checkpoint

    model, ckpt, sha = tiny
    loc = tmp_path / "emb"
    write(loc, [planted(0, "2026-11", image=np.ones(32), sha=sha, checkpoint=ckpt)])
    other = make_dev_checkpoint(tmp_path / "seed1", arch="tiny", seed=1)
    other_sha = load_model("remoteclip", checkpoint=str(other), device="cpu").meta["checkpoint_sha256"]
    assert other_sha != sha
    for kwargs in (
        {"checkpoint": str(other)},
        {"model": load_model("remoteclip", checkpoint=str(other), device="cpu")},
    ):
        with pytest.raises(CheckpointMismatchError) as err:
            search.text_search(loc, "a road", device="cpu", **kwargs)
        assert sha in str(err.value) and other_sha in str(err.value)
    with pytest.raises(CheckpointMismatchError, match="sha256"):
        search.patch_heatmap(loc, roi_id(0), "2026-11", "a road", checkpoint=str(other), device="cpu")
    # Entries that do not record their weights cannot be verified: refused too.
    loc2 = tmp_path / "unrecorded"
    write(loc2, [planted(0, "2026-11", image=np.ones(32), sha="", checkpoint=ckpt)])
    with pytest.raises(CheckpointMismatchError, match="do not record"):
        search.text_search(loc2, "a road", model=model)


def test_empty_store_unknown_month_and_roi(tmp_path, tiny):
    model, ckpt, sha = tiny
    empty = tmp_path / "empty"
    EmbeddingStore.open(empty)
    for call in (
        lambda: search.text_search(empty, "a lake", model=model),
        lambda: search.change_report(empty),
        lambda: search.image_search(empty, roi_id(0), "2026-11"),
        lambda: search.patch_heatmap(empty, roi_id(0), "2026-11", "a lake", model=model),
    ):
        with pytest.raises(EmptyStoreError, match="no entries"):
            call()
    loc = tmp_path / "emb"
    write(loc, [planted(0, "2026-11", image=np.ones(32), sha=sha, checkpoint=ckpt)])
    write(loc, [planted(1, "2026-10", image=np.ones(32), sha=sha, checkpoint=ckpt)])
    with pytest.raises(StoreLookupError, match=r"2020-01.*months stored: 2026-10, 2026-11"):
        search.text_search(loc, "a lake", months=["2020-01"], model=model)
    with pytest.raises(StoreLookupError, match="2020-01"):
        search.change_report(loc, "2020-01")
    with pytest.raises(EmptyStoreError, match="no entries"):  # both exist, but not together
        search.text_search(loc, "a lake", months=["2026-10"], rois=[roi_id(0)], model=model)
    with pytest.raises(StoreLookupError, match="nowhere"):
        search.text_search(loc, "a lake", rois=["nowhere"], model=model)
    with pytest.raises(StoreLookupError, match="its months: 2026-11"):  # the cell exists but is empty
        search.image_search(loc, roi_id(0), "2026-10")
    with pytest.raises(SpecError, match="month"):
        search.change_report(loc, "November")
    with pytest.raises(SpecError, match="caption"):
        search.text_search(loc, "  ", model=model)
    with pytest.raises(SpecError, match="k="):
        search.text_search(loc, "a lake", k=0, model=model)


# -- patch heatmap -------------------------------------------------------------------------


def test_patch_heatmap_is_georeferenced_and_uses_ln_post_tokens(tmp_path, tiny):
    import torch

    from rs_embed_core.api import embed_chips
    from rs_embed_core.models.preprocess import dn_to_uint8
    from rs_embed_core.providers.synthetic import SyntheticProvider
    from rs_embed_core.specs import OutputSpec, SensorSpec, TemporalSpec

    model, _, sha = tiny
    roi = PointBuffer(36.82, -1.29, 1200.0, label="nairobi")  # UTM 37S
    month = TemporalSpec.parse_month("2026-07")
    sensor = SensorSpec()
    chip = SyntheticProvider(seed=3).fetch(roi, month, sensor)
    (emb,) = embed_chips(model, [chip], rois=[roi], temporal=month, sensor=sensor, output=OutputSpec.grid())
    loc = tmp_path / "emb"
    write(loc, [emb])

    caption = "a runway next to a town"
    heat = search.patch_heatmap(loc, "nairobi", "2026-07", caption, device="cpu")
    assert heat.dims == ("y", "x") and heat.shape == model.grid_hw
    stored = entry_grid(search._open(loc, "main"), roi.id, "2026-07")
    np.testing.assert_array_equal(heat.x.values, stored.x.values)
    np.testing.assert_array_equal(heat.y.values, stored.y.values)
    np.testing.assert_allclose(heat.x.values, emb.grid.x.values)
    np.testing.assert_allclose(heat.y.values, emb.grid.y.values)
    assert heat.attrs["crs"] == emb.meta["grid_crs"] == "EPSG:32737"
    np.testing.assert_allclose(heat.attrs["transform"], emb.meta["grid_transform"])
    assert heat.attrs["checkpoint_sha256"] == sha and heat.attrs["roi_id"] == roi.id

    # Independent reference: open_clip's own post-ln_post tokens, projected, cosine with the caption.
    x = model.prepare([torch.from_numpy(dn_to_uint8(chip.dn))])
    with torch.inference_mode():
        out = model.visual.forward_intermediates(x, indices=1, normalize_intermediates=True)
        tok = out["image_intermediates"][-1][0]  # (D, H, W), after ln_post
        joint = torch.einsum("dhw,de->ehw", tok, model.visual.proj).numpy()
    np.testing.assert_allclose(out["image_features"][0].numpy(), emb.image_embedding, rtol=1e-4, atol=1e-5)
    text = model.encode_text([caption])[0]
    expected = np.einsum("ehw,e->hw", joint, text) / np.linalg.norm(joint, axis=0)
    np.testing.assert_allclose(heat.values, expected, atol=2e-5)


# -- image search --------------------------------------------------------------------------


def test_image_search_finds_planted_neighbours(tmp_path):
    rng = np.random.default_rng(7)
    base = rng.standard_normal(16)
    noise = [rng.standard_normal(16) for _ in range(5)]
    # Distance to the query grows with the noise weight: ROI 2 is nearest, then 4, 1, 3.
    weights = {1: 0.6, 2: 0.1, 3: 1.5, 4: 0.3}
    entries = [planted(0, "2026-11", image=base, sha=OTHER_SHA, dim=8)]
    entries += [planted(k, "2026-11", image=base + w * noise[k], sha=OTHER_SHA, dim=8) for k, w in weights.items()]
    entries.append(planted(0, "2026-10", image=base + 0.05 * noise[0], sha=OTHER_SHA, dim=8))
    loc = tmp_path / "emb"
    write(loc, entries)

    df = search.image_search(loc, roi_id(0), "2026-11", k=3)
    assert tuple(df.columns) == search.RESULT_COLUMNS
    assert list(zip(df.roi_id, df.time.dt.strftime("%Y-%m"), strict=True)) == [
        (roi_id(0), "2026-10"),
        (roi_id(2), "2026-11"),
        (roi_id(4), "2026-11"),
    ]
    assert df.score.is_monotonic_decreasing and df.score.iloc[0] < 1.0  # the query itself is left out
    others = search.image_search(loc, "site-0", "2026-11", k=None, exclude_same_roi=True)
    assert list(others.roi_id) == [roi_id(2), roi_id(4), roi_id(1), roi_id(3)]
    q = base / np.linalg.norm(base)
    v = base + 0.1 * noise[2]
    assert others.score.iloc[0] == pytest.approx(float(q @ v / np.linalg.norm(v)), abs=1e-6)


# -- change report -------------------------------------------------------------------------


def test_change_report_ranks_planted_changes_at_any_ref(tmp_path):
    e = np.eye(8, dtype=np.float32)
    p0 = {0: e[0], 1: e[0], 2: e[0], 3: e[0]}
    # 2026-11 vs 2026-10 by construction: ROI 0 unchanged (0), ROI 1 turned 60 degrees (0.5),
    # ROI 2 turned 90 degrees (1.0), ROI 3 reversed (2.0).
    p1 = {0: 2 * e[0], 1: 0.5 * e[0] + np.sqrt(0.75) * e[1], 2: e[2], 3: -e[0]}
    img = np.ones(4, np.float32)
    sep = [planted(k, "2026-09", image=img, pooled=p0[k], sha=OTHER_SHA, dim=8) for k in (0, 1, 2)]
    oct_ = [planted(k, "2026-10", image=img, pooled=p0[k], sha=OTHER_SHA, dim=8) for k in (0, 1, 2, 3)]
    nov = [planted(k, "2026-11", image=img, pooled=p1[k], sha=OTHER_SHA, dim=8) for k in (0, 1, 2, 3)]
    loc = tmp_path / "emb"
    write(loc, sep + oct_ + nov)
    store = EmbeddingStore.open(loc)
    store.tag("2026-11")

    df = search.change_report(loc)  # latest month
    assert tuple(df.columns) == search.CHANGE_COLUMNS
    assert list(df.roi_id) == [roi_id(3), roi_id(2), roi_id(1), roi_id(0)]
    np.testing.assert_allclose(df.distance, [2.0, 1.0, 0.5, 0.0], atol=1e-6)
    assert (df.previous_time == np.datetime64("2026-10-01")).all() and df.attrs["month"] == "2026-11"
    assert list(search.change_report(loc, "2026-11", k=2).roi_id) == [roi_id(3), roi_id(2)]
    # 2026-10 vs 2026-09: nothing changed; ROI 3 has no September entry.
    octo = search.change_report(loc, "2026-10")
    np.testing.assert_allclose(octo.distance, 0.0, atol=1e-6)
    assert octo.attrs["no_previous"] == [roi_id(3)]
    # First month of the store: no pairs, an empty but well-typed frame; rows are JSON-ready.
    assert search.change_report(loc, "2026-09").empty
    rows = search.change_report_rows(loc, "2026-11", k=3)
    assert [r["rank"] for r in rows] == [1, 2, 3] and rows[0]["month"] == "2026-11"
    json.dumps(rows)

    # Rewrite November on main: the tag still reports the old changes; a gap of 2 months bridges a hole.
    write(loc, [planted(k, "2026-11", image=img, pooled=e[0], sha=OTHER_SHA, dim=8) for k in (0, 1, 2, 3)])
    np.testing.assert_allclose(search.change_report(loc).distance, 0.0, atol=1e-6)
    np.testing.assert_allclose(search.change_report(loc, ref="2026-11").distance, [2.0, 1.0, 0.5, 0.0], atol=1e-6)
    write(loc, [planted(4, "2026-09", image=img, pooled=e[0], sha=OTHER_SHA, dim=8)])
    write(loc, [planted(4, "2026-11", image=img, pooled=e[1], sha=OTHER_SHA, dim=8)])
    assert roi_id(4) in search.change_report(loc).attrs["no_previous"]
    gap = search.change_report(loc, max_gap_months=2, rois=["site-4"])
    assert list(gap.previous_time.dt.strftime("%Y-%m")) == ["2026-09"]
    assert gap.distance.iloc[0] == pytest.approx(1.0)
