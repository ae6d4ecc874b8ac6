"""Pixels -> model input, and where each model input sits on the chip.

Two steps, as in the reference rs-embed adapter:

1. DN -> uint8: ``clip(DN / 10000, 0, 1) * 255`` truncated (float64, in that order, so
   the bytes equal the reference's).
2. uint8 -> normalised float tensor, either by the wrapper's own ``transform`` or by the
   generic CLIP pipeline. The fallback here is a batched tensor version of open_clip's
   eval transform (bicubic antialiased resize of the short side to ``size``, centre
   crop, /255, CLIP mean/std). The resized values are rounded and clamped to 0..255 like
   PIL's uint8 output, so it tracks the PIL pipeline closely (see tests/test_preprocess.py
   for the measured tolerance).

Geometry helpers return, for each model input, the part of the chip it covers, so the
token grid can be georeferenced to the area the model actually saw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DN_SCALE = 10000.0


def dn_to_uint8(dn: np.ndarray) -> np.ndarray:
    """Surface-reflectance DN (C, H, W) -> uint8 (C, H, W): ``clip(DN/10000, 0, 1) * 255``, truncated."""
    x = np.clip(np.asarray(dn, dtype=np.float64) / DN_SCALE, 0.0, 1.0) * 255.0
    return x.astype(np.uint8)


def resized_size(h: int, w: int, size: int) -> tuple[int, int]:
    """Output (h, w) of torchvision's ``Resize(size)``: short side -> size, long side truncated."""
    short, long = (h, w) if h <= w else (w, h)
    if short == size:
        return h, w
    new_long = int(size * long / short)
    return (size, new_long) if h <= w else (new_long, size)


def center_crop_offset(h: int, w: int, size: int) -> tuple[int, int]:
    """(top, left) of torchvision's ``CenterCrop(size)`` on an (h, w) image (h, w >= size)."""
    return int(round((h - size) / 2.0)), int(round((w - size) / 2.0))


def fallback_params(size: int) -> dict[str, Any]:
    """What the fallback does, for provenance."""
    return {
        "dn_to_uint8": "clip(DN/10000, 0, 1) * 255, truncated",
        "resize": f"short side -> {size}, bicubic, antialias, rounded to uint8 levels",
        "crop": f"center {size}x{size}",
        "scale": "1/255",
        "mean": list(CLIP_MEAN),
        "std": list(CLIP_STD),
    }


def resize_u8(x: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """Batched bicubic antialiased resize of uint8-valued images (B, C, H, W) -> float (B, C, h, w), 0..255 levels."""
    import torch
    import torch.nn.functional as F

    if tuple(x.shape[-2:]) == tuple(out_hw):
        return x.float()
    y = F.interpolate(x.float(), size=out_hw, mode="bicubic", align_corners=False, antialias=True)
    # PIL resizes uint8 to uint8; rounding here keeps us on the same value lattice.
    return torch.clamp(torch.round(y), 0.0, 255.0)


def clip_fallback(x_u8: torch.Tensor, size: int) -> torch.Tensor:
    """Generic CLIP eval preprocessing of a batch of same-sized uint8 images (B, 3, H, W).

    Returns normalised float32 (B, 3, size, size).
    """
    import torch

    h, w = int(x_u8.shape[-2]), int(x_u8.shape[-1])
    nh, nw = resized_size(h, w, size)
    y = resize_u8(x_u8, (nh, nw))
    top, left = center_crop_offset(nh, nw, size)
    y = y[..., top : top + size, left : left + size]
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32, device=y.device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(CLIP_STD, dtype=torch.float32, device=y.device).view(1, 3, 1, 1) * 255.0
    # (y/255 - mean) / std == (y - 255*mean) / (255*std): one fewer pass over the batch.
    return (y - mean) / std


def pil_reference(rgb_u8_chw: np.ndarray, size: int = 224) -> torch.Tensor:
    """open_clip's own eval transform on a PIL image: the reference the fallback is tested against."""
    import open_clip
    from PIL import Image

    tf = open_clip.image_transform(size, is_train=False)
    return tf(Image.fromarray(np.ascontiguousarray(np.transpose(rgb_u8_chw, (1, 2, 0)))))


@dataclass(frozen=True)
class ResizeLayout:
    """What ``input_prep="resize"`` shows the model: the centre crop of the resized chip.

    Offsets and cell sizes are in chip pixels (floats: resizing is not integral).
    """

    in_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    crop_yx: tuple[int, int]
    size: int
    grid_hw: tuple[int, int]

    @property
    def scale_yx(self) -> tuple[float, float]:
        """Chip pixels per resized pixel."""
        return self.in_hw[0] / self.resized_hw[0], self.in_hw[1] / self.resized_hw[1]

    def token_transform(self, transform: tuple[float, ...]) -> tuple[float, ...]:
        """Affine transform of the token cells, given the chip's pixel transform."""
        a, b, c, d, e, f = transform
        sy, sx = self.scale_yx
        cell_y = self.size / self.grid_hw[0] * sy
        cell_x = self.size / self.grid_hw[1] * sx
        off_y, off_x = self.crop_yx[0] * sy, self.crop_yx[1] * sx
        return (a * cell_x, b * cell_y, c + a * off_x + b * off_y, d * cell_x, e * cell_y, f + d * off_x + e * off_y)

    def to_dict(self) -> dict[str, Any]:
        sy, sx = self.scale_yx
        return {
            "mode": "resize",
            "input_hw": list(self.in_hw),
            "resized_hw": list(self.resized_hw),
            "crop_offset_yx": list(self.crop_yx),
            "image_size": self.size,
            # The chip window the model saw, in chip pixels (top, left, bottom, right).
            "seen_window_px": [
                self.crop_yx[0] * sy,
                self.crop_yx[1] * sx,
                (self.crop_yx[0] + self.size) * sy,
                (self.crop_yx[1] + self.size) * sx,
            ],
            "grid_hw": list(self.grid_hw),
        }


def resize_layout(h: int, w: int, size: int, grid_hw: tuple[int, int]) -> ResizeLayout:
    nh, nw = resized_size(h, w, size)
    return ResizeLayout((h, w), (nh, nw), center_crop_offset(nh, nw, size), size, grid_hw)


@dataclass(frozen=True)
class TileLayout:
    """How ``input_prep="tile"`` cuts a chip into model inputs.

    Rule: tiles of ``size`` x ``size`` at native resolution with stride ``size``.
    The image is first padded (reflect) on the bottom/right by less than one token
    cell so its sides are whole token cells; the last tile in each direction is then
    shifted flush with that edge, so it overlaps its neighbour by a whole number of
    cells and every tile's tokens fall on ONE lattice of cells anchored at the chip's
    upper-left corner. Overlapping cells are the mean of the tiles that saw them. A chip
    whose short side is below ``size`` is first upsampled (bicubic) so the short side
    equals ``size`` (the reference's resize rule), then tiled along its long side.

    ``cell`` is the token cell in working pixels (32 for ViT-B/32, 14 for ViT-L/14).
    """

    in_hw: tuple[int, int]
    work_hw: tuple[int, int]
    padded_hw: tuple[int, int]
    size: int
    cell: int
    starts_y: tuple[int, ...]
    starts_x: tuple[int, ...]

    @property
    def upsampled(self) -> bool:
        return self.work_hw != self.in_hw

    @property
    def scale_yx(self) -> tuple[float, float]:
        """Chip pixels per working pixel (1 unless upsampled)."""
        return self.in_hw[0] / self.work_hw[0], self.in_hw[1] / self.work_hw[1]

    @property
    def lattice_hw(self) -> tuple[int, int]:
        return self.padded_hw[0] // self.cell, self.padded_hw[1] // self.cell

    @property
    def n_tiles(self) -> int:
        return len(self.starts_y) * len(self.starts_x)

    def tiles(self) -> list[tuple[int, int]]:
        return [(y, x) for y in self.starts_y for x in self.starts_x]

    def cell_weights(self) -> np.ndarray:
        """(ny, nx) fraction of each token cell inside the real (unpadded) image: the pooling weights."""
        ny, nx = self.lattice_hw
        wy = np.clip(self.work_hw[0] - np.arange(ny) * self.cell, 0, self.cell) / self.cell
        wx = np.clip(self.work_hw[1] - np.arange(nx) * self.cell, 0, self.cell) / self.cell
        return np.outer(wy, wx).astype(np.float64)

    def token_transform(self, transform: tuple[float, ...]) -> tuple[float, ...]:
        a, b, c, d, e, f = transform
        sy, sx = self.scale_yx
        cy, cx = self.cell * sy, self.cell * sx
        return (a * cx, b * cy, c, d * cx, e * cy, f)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": "tile",
            "input_hw": list(self.in_hw),
            "upsampled_hw": list(self.work_hw) if self.upsampled else None,
            "padded_hw": list(self.padded_hw),
            "pad": "reflect, bottom/right, < 1 token cell",
            "tile_px": self.size,
            "stride_px": self.size,
            "edge": "last tile shifted flush with the padded edge; overlapping cells averaged",
            "cell_px": self.cell,
            "starts_y": list(self.starts_y),
            "starts_x": list(self.starts_x),
            "n_tiles": self.n_tiles,
            "grid_hw": list(self.lattice_hw),
            "pooling_weights": "fraction of each cell inside the chip",
        }


def _starts(n: int, size: int) -> tuple[int, ...]:
    out = list(range(0, n - size + 1, size))
    if out[-1] + size < n:
        out.append(n - size)
    return tuple(out)


def tile_layout(h: int, w: int, size: int, grid_hw: tuple[int, int]) -> TileLayout:
    if size % grid_hw[0] or size % grid_hw[1] or grid_hw[0] != grid_hw[1]:
        raise ValueError(f"tiling needs square token cells dividing the image size {size}, got grid {grid_hw}")
    cell = size // grid_hw[0]
    work = (h, w) if min(h, w) >= size else resized_size(h, w, size)
    padded = (math.ceil(work[0] / cell) * cell, math.ceil(work[1] / cell) * cell)
    return TileLayout((h, w), work, padded, size, cell, _starts(padded[0], size), _starts(padded[1], size))


def tile_inputs(img_u8: torch.Tensor, layout: TileLayout) -> torch.Tensor:
    """uint8-valued (3, H, W) -> float (n_tiles, 3, size, size) at 0..255 levels (not yet normalised)."""
    import torch.nn.functional as F

    x = img_u8.unsqueeze(0).float()
    if layout.upsampled:
        x = resize_u8(x, layout.work_hw)
    pad_y = layout.padded_hw[0] - layout.work_hw[0]
    pad_x = layout.padded_hw[1] - layout.work_hw[1]
    if pad_y or pad_x:
        x = F.pad(x, (0, pad_x, 0, pad_y), mode="reflect")
    s = layout.size
    return torch_stack([x[0, :, y : y + s, xx : xx + s] for y, xx in layout.tiles()])


def torch_stack(items: list[torch.Tensor]) -> torch.Tensor:
    import torch

    return torch.stack(items)


def normalize_255(x: torch.Tensor) -> torch.Tensor:
    """0..255-level float (B, 3, H, W) -> CLIP-normalised."""
    import torch

    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32, device=x.device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(CLIP_STD, dtype=torch.float32, device=x.device).view(1, 3, 1, 1) * 255.0
    return (x - mean) / std
