"""Quicklook pictures: the array helpers, the PNG renderers and the store -> PNG path.

The store is filled by the real pipeline without Prefect (``run_direct``: synthetic
provider, chip cache, tiny random checkpoint), so the RGB can be read back from the
chip cache and fetched again from the recorded provenance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rs_embed_core.errors import StoreInputError, StoreLookupError
from rs_embed_core.quicklook import (
    chip_for_entry,
    cosine_matrix,
    entry_caption,
    make_quicklooks,
    pca_rgb,
    render_entry,
    render_similarity,
    resolve_roi_id,
    rgb_image,
    transform_extent,
)


def _png_stats(path: Path) -> tuple[tuple[int, int], float, int]:
    """(size, pixel std, number of distinct colours) of a PNG."""
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"))
        size = im.size
    return size, float(arr.std()), len(np.unique(arr.reshape(-1, 3), axis=0))


# -- array helpers ---------------------------------------------------------------------------


def test_rgb_image_picks_bands_by_name_and_greys_out_missing_pixels() -> None:
    dn = np.zeros((4, 8, 8), np.uint16)
    bands = ("B8", "B2", "B3", "B4")  # not in display order: picked by name
    dn[3] = 3000  # B4 (red) bright everywhere
    dn[1, :, :4] = 500  # B2 (blue) on the left half
    valid = np.ones((8, 8), np.uint16)
    valid[0, 0] = 0
    rgb = rgb_image(dn, bands, valid)
    assert rgb.shape == (8, 8, 3) and rgb.dtype == np.float32
    assert rgb.min() >= 0 and rgb.max() <= 1
    assert rgb[4, 6, 0] > rgb[4, 6, 2]  # red dominates where there is no blue
    assert rgb[4, 1, 2] > rgb[4, 6, 2]  # blue only on the left
    np.testing.assert_allclose(rgb[0, 0], [0.35, 0.35, 0.35])  # no observation: grey


def test_rgb_image_without_named_bands_uses_the_first_three() -> None:
    dn = np.random.default_rng(0).integers(0, 3000, (2, 5, 5), dtype=np.uint16)
    rgb = rgb_image(dn, ("X", "Y"))
    assert rgb.shape == (5, 5, 3)
    np.testing.assert_array_equal(rgb[..., 1], rgb[..., 2])  # band 2 repeats when only two exist
    with pytest.raises(StoreInputError):
        rgb_image(dn[0], ("X",))


def test_pca_rgb_first_component_separates_two_regions() -> None:
    rng = np.random.default_rng(1)
    d, h, w = 16, 6, 6
    direction = rng.normal(size=d)
    grid = rng.normal(scale=0.05, size=(d, h, w))
    grid[:, :, :3] += direction[:, None, None]  # left half differs strongly along one direction
    img, ratio = pca_rgb(grid)
    assert img.shape == (h, w, 3) and img.min() >= 0 and img.max() <= 1
    assert ratio[0] > 0.8 and ratio[0] >= ratio[1] >= ratio[2]
    left, right = img[:, :3, 0].mean(), img[:, 3:, 0].mean()
    assert abs(left - right) > 0.7
    # Deterministic colours (SVD signs are fixed by the largest loading).
    np.testing.assert_allclose(pca_rgb(grid)[0], img)
    np.testing.assert_allclose(pca_rgb(grid.astype(np.float32))[0], img, atol=1e-4)


def test_pca_rgb_of_a_constant_grid_is_grey() -> None:
    img, ratio = pca_rgb(np.ones((8, 7, 7)))
    np.testing.assert_allclose(img, 0.5)
    np.testing.assert_allclose(ratio, 0)
    with pytest.raises(StoreInputError):
        pca_rgb(np.ones((7, 7)))


def test_cosine_matrix_values_and_empty_rows() -> None:
    v = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [0.0, 0.0]])
    m = cosine_matrix(v)
    assert m.shape == (4, 4)
    np.testing.assert_allclose(np.diag(m)[:3], 1.0)
    assert m[0, 1] == pytest.approx(0.0)
    assert m[0, 2] == pytest.approx(2**-0.5)
    assert np.isnan(m[3]).all()


def test_transform_extent_of_a_north_up_grid() -> None:
    assert transform_extent((10.0, 0, 500_000.0, 0, -10.0, 5_000_000.0), 20, 30) == (
        500_000.0,
        500_300.0,
        4_999_800.0,
        5_000_000.0,
    )


# -- rendering -------------------------------------------------------------------------------


def test_render_entry_and_similarity_write_non_uniform_pngs(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    rgb = rng.random((40, 40, 3)).astype(np.float32)
    pca = rng.random((7, 7, 3)).astype(np.float32)
    ext = (0.0, 400.0, 0.0, 400.0)
    p = render_entry(tmp_path / "a" / "e.png", rgb, ext, pca, (20, 380, 20, 380), ["line one", "line two"])
    size, std, colours = _png_stats(p)
    assert size[0] > 800 and size[1] > 500 and std > 20 and colours > 1000
    q = render_entry(tmp_path / "q.png", rgb, ext, pca, ext, ["x"], heatmap=rng.random((7, 7)), query="a river")
    assert _png_stats(q)[0][0] > size[0]  # the heatmap adds a panel
    s = render_similarity(
        tmp_path / "s.png", ["2024-05", "2024-06", "2024-07"], cosine_matrix(rng.random((3, 5))), title="t"
    )
    size, std, _ = _png_stats(s)
    assert size[0] > 800 and std > 20
    assert not list(tmp_path.rglob(".*.tmp"))  # written atomically, no leftovers


def test_caption_names_roi_month_checkpoint_and_preprocess_path() -> None:
    meta = {
        "roi_id": "pb-1",
        "roi": {"type": "PointBuffer", "lon": 11.0, "lat": 48.0, "buffer_m": 1120.0},
        "time": "2024-05-01",
        "checkpoint": "/ckpt/tiny",
        "checkpoint_sha256": "ab" * 32,
        "model_arch": "RSEmbed-Tiny-ViT-32",
        "weights_are_random": True,
        "preprocess_path": "fallback",
        "input_prep": "resize",
        "pooling": "mean",
        "provider": {"provider": "synthetic", "synthetic": True, "n_scenes": 5, "valid_fraction": 0.5},
    }
    text = "\n".join(entry_caption(meta, roi_label="site", chip_source="cache"))
    for needle in ("site (pb-1)", "2024-05", "/ckpt/tiny", "NOT REAL", "preprocess path: fallback", "SYNTHETIC", "50%"):
        assert needle in text


# -- from a real store -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store_ds(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path):
    """Two labelled ROIs x two months, written by the real pipeline (no Prefect)."""
    from rs_embed_core.pipeline import run_direct
    from rs_embed_core.planning import build_request
    from rs_embed_core.store import open_embeddings

    root = tmp_path_factory.mktemp("ql-store")
    request = build_request(
        [{"lon": 11.0, "lat": 48.0, "buffer_m": 700, "label": "alpha"}, [11.2, 48.1, 500]],
        months=["2024-05", "2024-06"],
        checkpoint=str(tiny_checkpoint),
        batch_size=4,
    )
    run_direct(
        request,
        store=root / "store",
        staging_dir=root / "staging",
        backend="synthetic",
        cache=str(root / "chips"),
        device="cpu",
    )
    return open_embeddings(str(root / "store")), root / "chips"


def test_quicklooks_from_the_store(store_ds, tmp_path: Path) -> None:
    ds, chips = store_ds
    res = make_quicklooks(ds, "alpha", "2024-05", tmp_path, cache=str(chips))
    assert res.chip_source == "cache" and res.notes == ()
    assert res.month == "2024-05" and res.roi_label == "alpha"
    size, std, colours = _png_stats(res.entry_png)
    assert size[0] > 800 and size[1] > 500 and std > 20 and colours > 500
    size, std, _ = _png_stats(res.similarity_png)
    assert size[0] > 800 and std > 20
    # No month given: the ROI's latest.
    assert make_quicklooks(ds, "alpha", None, tmp_path / "latest", cache=str(chips)).month == "2024-06"


def test_refetched_chip_is_the_embedded_one(store_ds) -> None:
    ds, chips = store_ds
    import json

    meta = json.loads(str(ds["meta_json"].isel(roi=0, time=0).values))
    cached, src_a, notes_a = chip_for_entry(meta, cache=str(chips))
    again, src_b, notes_b = chip_for_entry(meta, cache=False)
    assert (src_a, src_b) == ("cache", "refetched") and notes_a == notes_b == []
    np.testing.assert_array_equal(cached.dn, again.dn)
    # Another provider setting gives other pixels, and the quicklook says so.
    from rs_embed_core.providers.synthetic import SyntheticProvider

    _, src, notes = chip_for_entry(meta, backend=SyntheticProvider(seed=7))
    assert src == "refetched" and notes and "differs" in notes[0]


def test_unknown_roi_or_month_name_what_is_stored(store_ds, tmp_path: Path) -> None:
    ds, chips = store_ds
    with pytest.raises(StoreLookupError, match="alpha"):
        make_quicklooks(ds, "nope", None, tmp_path, cache=str(chips))
    with pytest.raises(StoreLookupError, match="2024-05"):
        make_quicklooks(ds, "alpha", "2023-01", tmp_path, cache=str(chips))
    with pytest.raises(StoreInputError, match="YYYY-MM"):
        make_quicklooks(ds, "alpha", "May", tmp_path, cache=str(chips))
    with pytest.raises(StoreLookupError, match="2 ROIs"):
        resolve_roi_id(ds, None)
