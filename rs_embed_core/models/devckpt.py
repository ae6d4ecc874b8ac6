"""Random-weight checkpoints of the real architectures, for demos, tests and benchmarks.

They are saved with ``save_pretrained`` (byte-for-byte the hub layout) and loaded
through the real loading path. Their ``config.json`` and ``README.md`` say loudly that
they are NOT RemoteCLIP weights; embeddings made with them carry
``meta["weights_are_random"] = True``.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

TINY_ARCH = "RSEmbed-Tiny-ViT-32"
# A ~2M-parameter CLIP whose vision tower still sees 224 px in 32 px patches, so its
# grid is 7 x 7 like ViT-B/32: fast tests exercise the real shapes and geometry.
TINY_OPEN_CLIP_CFG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
NOT_REAL = "NOT REAL REMOTECLIP WEIGHTS"


def make_dev_checkpoint(out_dir: str | os.PathLike[str], arch: str = "ViT-B-32", seed: int = 0) -> Path:
    """Write a random-weight RemoteCLIP checkpoint to ``out_dir`` and return the folder.

    Args:
        out_dir: target folder (created).
        arch: an open_clip architecture ("ViT-B-32", "ViT-L-14", "RN50", ...) or "tiny".
        seed: torch seed of the random init (same seed -> same weights).
    """
    import torch

    from .checkpoints import register_open_clip_config
    from .remoteclip import import_rshf_remoteclip, quiet_build

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mod = import_rshf_remoteclip()
    config: dict[str, Any] = {
        "model_name": arch,
        "weights_are_random": True,
        "rs_embed_dev_checkpoint": f"{NOT_REAL}: random initialisation (torch seed {seed}) for tests and demos",
        "seed": seed,
    }
    if arch == "tiny":
        register_open_clip_config(TINY_ARCH, TINY_OPEN_CLIP_CFG)
        config["model_name"] = TINY_ARCH
        # Carried in the checkpoint so any process can register the architecture on load.
        config["open_clip_cfg"] = copy.deepcopy(TINY_OPEN_CLIP_CFG)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with quiet_build():
            wrapper = mod.RemoteCLIP(config={"model_name": config["model_name"]})
    (out / "README.md").write_text(
        f"# {NOT_REAL}\n\nRandomly initialised `{config['model_name']}` (torch seed {seed}) in the "
        "RemoteCLIP hub layout, made by rs_embed_core.models.make_dev_checkpoint for tests and demos.\n"
        "Embeddings computed with it are meaningless; the real weights are MVRL/remote-clip-*.\n"
    )
    wrapper.save_pretrained(out, config=config)
    return out
