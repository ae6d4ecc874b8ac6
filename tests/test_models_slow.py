"""Full-size architectures with random weights (slow: ViT-B-32 save/load, ViT-L-14, RN50)."""

from __future__ import annotations

import gc
import hashlib
import json

import numpy as np
import pytest
import torch
from conftest import seed_hf_cache

from rs_embed_core.models import clear_model_cache, load_model
from rs_embed_core.models.remoteclip import RemoteClipAdapter, import_rshf_remoteclip, quiet_build

pytestmark = pytest.mark.slow
DEFAULT_ID = "MVRL/remote-clip-vit-base-patch32"


def test_vitb32_hub_layout_loads_from_path_and_from_seeded_hf_cache(vitb32_checkpoint, hf_cache):
    from safetensors import safe_open

    with safe_open(str(vitb32_checkpoint / "model.safetensors"), "pt") as fh:
        keys = list(fh.keys())
    # The hub checkpoint's layout: 302 tensors keyed model.* (text tower included).
    assert len(keys) == 302 and all(k.startswith("model.") for k in keys)
    assert json.loads((vitb32_checkpoint / "config.json").read_text())["model_name"] == "ViT-B-32"
    sha = hashlib.sha256((vitb32_checkpoint / "model.safetensors").read_bytes()).hexdigest()

    by_path = load_model("remoteclip", checkpoint=f"hf:{vitb32_checkpoint}", device="cpu")
    assert (by_path.grid_dim, by_path.embed_dim, by_path.grid_hw) == (768, 512, (7, 7))
    assert by_path.meta["checkpoint_sha256"] == sha and by_path.meta["model_arch"] == "ViT-B-32"

    rev = "f" * 40
    seed_hf_cache(hf_cache, DEFAULT_ID, vitb32_checkpoint, revision=rev)
    by_id = load_model("remoteclip", checkpoint=None, device="cpu")  # the default repo id
    m = by_id.meta
    assert m["checkpoint"] == DEFAULT_ID and m["checkpoint_revision"] == rev and m["checkpoint_source"] == "hub"
    assert m["checkpoint_sha256"] == sha and m["weights_are_random"] is True
    assert m["checkpoint_path"].startswith(str(hf_cache))

    x = torch.randn(2, 3, 224, 224)
    g1, j1 = by_path.forward(x)
    g2, j2 = by_id.forward(x)
    assert g1.shape == (2, 768, 7, 7) and j1.shape == (2, 512)
    torch.testing.assert_close(g1, g2)
    torch.testing.assert_close(j1, j2)
    with torch.inference_mode():
        ref = by_path.visual.forward_intermediates(x, indices=1, normalize_intermediates=True)
    torch.testing.assert_close(g1, ref["image_intermediates"][-1], atol=1e-4, rtol=1e-4)
    del by_path, by_id
    clear_model_cache()
    gc.collect()


def _built(arch: str) -> RemoteClipAdapter:
    mod = import_rshf_remoteclip()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        with quiet_build():
            wrapper = mod.RemoteCLIP(config={"model_name": arch})
    return RemoteClipAdapter.from_wrapper(wrapper, device="cpu", model_arch=arch)


def test_vitl14_shapes():
    # Built in memory rather than saved (1.7 GB): the adapter code path is the same.
    adapter = _built("ViT-L-14")
    grid, joint = adapter.forward(torch.randn(1, 3, 224, 224))
    assert grid.shape == (1, 1024, 16, 16) and joint.shape == (1, 768)
    assert adapter.project_tokens(grid[0].numpy()).shape == (768, 16, 16)
    del adapter
    gc.collect()


def test_rn50_pooled_and_grid():
    from rs_embed_core.api import _embed_items, _Item
    from rs_embed_core.errors import CheckpointError
    from rs_embed_core.specs import OutputSpec, SensorSpec

    adapter = _built("RN50")
    grid, joint = adapter.forward(torch.randn(2, 3, 224, 224))
    assert grid.shape == (2, 2048, 7, 7) and joint.shape == (2, 1024)
    with torch.inference_mode():
        ref = adapter.clip.encode_image(torch.randn(1, 3, 224, 224) * 0 + 0.1)
        ours = adapter.forward(torch.randn(1, 3, 224, 224) * 0 + 0.1)[1]
    torch.testing.assert_close(ours, ref.float(), atol=1e-4, rtol=1e-4)
    item = _Item(
        u8=np.random.default_rng(0).integers(0, 255, (3, 300, 300)).astype(np.uint8),
        transform=(10.0, 0.0, 0.0, 0.0, -10.0, 0.0),
        crs="EPSG:32631",
        roi=None,
        roi_id="x",
        temporal=None,
        provider={},
        fetch_key="k",
    )
    (emb,) = _embed_items(adapter, [item], sensor=SensorSpec(), output=OutputSpec.pooled(), input_prep="tile")
    assert emb.pooled.shape == (2048,) and emb.image_embedding.shape == (1024,) and emb.grid.shape == (2048, 10, 10)
    with pytest.raises(CheckpointError, match="project_tokens"):
        adapter.project_tokens(emb.grid.values)
