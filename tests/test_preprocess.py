"""Preprocessing: DN -> uint8, the batched CLIP fallback vs open_clip's PIL pipeline, layouts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rs_embed_core.models.preprocess import (
    CLIP_STD,
    clip_fallback,
    dn_to_uint8,
    pil_reference,
    resize_layout,
    resized_size,
    tile_inputs,
    tile_layout,
)


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth structure plus noise, like a real scene (pure noise exaggerates resampling differences)."""
    rng = np.random.default_rng(seed)
    base = torch.from_numpy(rng.integers(0, 256, (1, 3, h // 8 + 2, w // 8 + 2)).astype(np.float32))
    img = torch.nn.functional.interpolate(base, size=(h, w), mode="bilinear")[0].numpy()
    return np.clip(img + rng.normal(0, 20, img.shape), 0, 255).astype(np.uint8)


def test_dn_to_uint8_matches_reference_formula():
    dn = np.array([[[0, 1, 39, 40, 2000, 5000, 9999, 10000, 12000, 65535]]], dtype=np.uint16)
    out = dn_to_uint8(dn)
    assert out.dtype == np.uint8
    assert out.tolist() == [[[0, 0, 0, 1, 51, 127, 254, 255, 255, 255]]]
    expected = (np.clip(dn / 10000.0, 0, 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("hw", [(410, 410), (300, 500), (225, 700), (100, 150), (37, 41), (679, 964)])
def test_resized_size_matches_torchvision(hw):
    from torchvision.transforms import functional as TF

    img = torch.zeros(3, *hw)
    assert resized_size(*hw, 224) == tuple(TF.resize(img, 224, antialias=True).shape[-2:])


# Tolerance of the batched fallback against open_clip's PIL pipeline, in uint8 levels
# (1 level = 1/255/std ~ 0.015 in normalised units): mean |diff| <= 0.35 level, at least
# 99.5% of values within 1 level, none off by more than 8 levels. Measured: mean
# 0.12-0.22, max 1-6 levels at a handful of edge pixels (PIL resamples in fixed point).
@pytest.mark.parametrize("hw", [(410, 410), (300, 500), (224, 224), (100, 150), (225, 700), (679, 964)])
def test_fallback_matches_pil_pipeline(hw):
    img = _image(*hw)
    ours = clip_fallback(torch.from_numpy(img)[None], 224)[0]
    ref = pil_reference(img, 224)
    assert ours.shape == ref.shape == (3, 224, 224)
    levels = (ours - ref).abs() * torch.tensor(CLIP_STD).view(3, 1, 1) * 255
    assert float(levels.mean()) <= 0.35
    assert float((levels <= 1.01).float().mean()) >= 0.995
    assert float(levels.max()) <= 8.01
    if hw == (224, 224):
        assert float(levels.max()) < 1e-3  # no resize: only the exact normalisation remains


def test_fallback_is_batched_and_per_image_identical():
    imgs = np.stack([_image(300, 500, seed=s) for s in range(4)])
    batch = clip_fallback(torch.from_numpy(imgs), 224)
    for k in range(4):
        single = clip_fallback(torch.from_numpy(imgs[k : k + 1]), 224)[0]
        torch.testing.assert_close(batch[k], single, atol=1e-5, rtol=0)


def test_resize_layout_georeferences_the_centre_crop_of_a_wide_chip():
    # 300 x 600 px: resized to 224 x 448, the crop keeps columns 112..336 of the resized
    # image, i.e. chip columns 150..450; the token cells are 300/7 chip px.
    lay = resize_layout(300, 600, 224, (7, 7))
    assert lay.resized_hw == (224, 448) and lay.crop_yx == (0, 112)
    a, _, c, _, e, f = lay.token_transform((10.0, 0.0, 500_000.0, 0.0, -10.0, 4_000_000.0))
    assert a == pytest.approx(10 * 300 / 7) and e == pytest.approx(-10 * 300 / 7)
    assert c == pytest.approx(500_000 + 150 * 10) and f == pytest.approx(4_000_000)
    assert lay.to_dict()["seen_window_px"] == pytest.approx([0, 150, 300, 450])


def test_tile_layout_for_sizes_not_multiple_of_224():
    lay = tile_layout(500, 300, 224, (7, 7))
    assert lay.padded_hw == (512, 320) and lay.cell == 32
    assert lay.starts_y == (0, 224, 288) and lay.starts_x == (0, 96)  # last tiles flush with the padded edge
    assert all(s % 32 == 0 for s in lay.starts_y + lay.starts_x)  # every tile on one token lattice
    assert lay.lattice_hw == (16, 10) and lay.n_tiles == 6
    w = lay.cell_weights()
    assert w.shape == (16, 10)
    assert w[-1, 0] == pytest.approx((500 - 15 * 32) / 32) and w[0, -1] == pytest.approx((300 - 9 * 32) / 32)
    assert w.sum() * 32 * 32 == pytest.approx(500 * 300)  # weights cover exactly the chip area
    tiles = tile_inputs(torch.from_numpy(_image(500, 300)), lay)
    assert tiles.shape == (6, 3, 224, 224)


def test_tile_layout_upsamples_a_chip_smaller_than_the_model_input():
    lay = tile_layout(100, 300, 224, (7, 7))
    assert lay.upsampled and lay.work_hw == (224, 672)
    assert lay.starts_y == (0,) and lay.starts_x == (0, 224, 448)
    a, *_ = lay.token_transform((10.0, 0.0, 0.0, 0.0, -10.0, 0.0))
    assert a == pytest.approx(10 * 32 * 300 / 672)
