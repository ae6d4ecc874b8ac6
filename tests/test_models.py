"""The RemoteCLIP adapter on a tiny random checkpoint (real open_clip/rshf code paths)."""

from __future__ import annotations

import hashlib
import json
import logging
import ssl
import subprocess
import sys

import numpy as np
import pytest
import torch

from rs_embed_core.errors import CheckpointError, CheckpointNotFoundError, SpecError, UnknownModelError
from rs_embed_core.models import list_models, load_model, make_dev_checkpoint, model_info
from rs_embed_core.models.checkpoints import resolve_checkpoint


def test_registry_names_aliases_and_unknown():
    assert list_models() == ["remoteclip"]
    assert "remoteclip_s2rgb" in list_models(include_aliases=True)
    assert model_info("remoteclip_s2rgb").name == "remoteclip"
    assert model_info("RemoteCLIP").name == "remoteclip"
    with pytest.raises(UnknownModelError) as err:
        model_info("satmae")
    assert "remoteclip" in str(err.value) and "remoteclip_s2rgb" in str(err.value)


def test_dev_checkpoint_is_labelled_and_loads_with_full_meta(tiny_checkpoint, tiny_model):
    cfg = json.loads((tiny_checkpoint / "config.json").read_text())
    assert cfg["weights_are_random"] is True and "NOT REAL REMOTECLIP WEIGHTS" in cfg["rs_embed_dev_checkpoint"]
    assert "NOT REAL REMOTECLIP WEIGHTS" in (tiny_checkpoint / "README.md").read_text()
    m = tiny_model.meta
    assert m["weights_are_random"] is True
    assert m["model"] == "remoteclip" and m["model_arch"] == cfg["model_name"]
    assert m["checkpoint_path"] == str(tiny_checkpoint.resolve())
    sha = hashlib.sha256((tiny_checkpoint / "model.safetensors").read_bytes()).hexdigest()
    assert m["checkpoint_sha256"] == sha
    assert m["preprocess_path"] == "fallback" and m["dtype"] == "float32" and m["device"] == "cpu"
    assert set(m["versions"]) >= {"rs_embed_core", "torch", "open_clip", "rshf"}
    assert (tiny_model.grid_dim, tiny_model.embed_dim, tiny_model.grid_hw) == (64, 32, (7, 7))


def test_models_are_cached_per_checkpoint_device_and_shared_across_spellings(tiny_checkpoint, tiny_model):
    assert load_model("remoteclip", checkpoint=f"hf:{tiny_checkpoint}", device="cpu") is tiny_model
    assert load_model("remoteclip_s2rgb", checkpoint=str(tiny_checkpoint) + "/", device="cpu") is tiny_model
    if not torch.cuda.is_available():
        assert load_model("remoteclip", checkpoint=str(tiny_checkpoint)) is tiny_model  # auto -> cpu


def test_rshf_tls_switch_is_undone(tiny_model):
    # rshf sets the unverified context on import; loading must leave verification on.
    import rshf.remoteclip  # noqa: F401

    assert ssl._create_default_https_context is ssl.create_default_context


def test_load_is_quiet(tmp_path, capsys, caplog):
    path = make_dev_checkpoint(tmp_path / "quiet", arch="tiny", seed=7)
    capsys.readouterr()
    with caplog.at_level(logging.WARNING):
        load_model("remoteclip", checkpoint=str(path), device="cpu")
    assert capsys.readouterr().out == ""
    assert not [r for r in caplog.records if "No pretrained weights" in r.getMessage()]


def test_tokens_are_post_ln_patch_tokens_and_joint_is_encode_image(tiny_model):
    x = torch.randn(2, 3, 224, 224)
    grid, joint = tiny_model.forward(x)
    assert grid.shape == (2, 64, 7, 7) and joint.shape == (2, 32)
    with torch.inference_mode():
        ref = tiny_model.visual.forward_intermediates(x, indices=1, normalize_intermediates=True)
        ref_grid = ref["image_intermediates"][-1]
        # forward_intermediates' image_features is the projected CLS vector, i.e. encode_image.
        ref_joint = ref["image_features"]
    torch.testing.assert_close(grid, ref_grid.float(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(joint, ref_joint.float(), atol=1e-5, rtol=1e-5)
    # Row-major: token (r, c) of the 49 is grid[:, :, r, c].
    v = tiny_model.visual
    with torch.inference_mode():
        _, tokens = v(x)
    torch.testing.assert_close(grid[:, :, 2, 5], tokens[:, 2 * 7 + 5].float())


def test_text_and_token_projection(tiny_model):
    t = tiny_model.encode_text(["a river", "farm fields"])
    assert t.shape == (2, 32)
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-5)
    grid, _ = tiny_model.forward(torch.randn(1, 3, 224, 224))
    assert tiny_model.project_tokens(grid[0].numpy()).shape == (32, 7, 7)


def test_tiny_architecture_registers_itself_in_a_fresh_process(tiny_checkpoint):
    code = (
        "import os; os.environ['HF_HUB_OFFLINE']='1'\n"
        "from rs_embed_core.models import load_model\n"
        f"m = load_model('remoteclip', checkpoint={str(tiny_checkpoint)!r}, device='cpu')\n"
        "print(m.grid_dim, m.grid_hw, m.meta['weights_are_random'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "64 (7, 7) True"


def test_missing_local_checkpoint_names_the_path(tmp_path):
    with pytest.raises(CheckpointNotFoundError) as err:
        load_model("remoteclip", checkpoint=f"hf:{tmp_path}/nope", device="cpu")
    assert str(tmp_path / "nope") in str(err.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointNotFoundError, match=r"model\.safetensors"):
        resolve_checkpoint(str(empty))


def test_uncached_hub_id_offline_names_repo_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hfcache"))
    with pytest.raises(CheckpointNotFoundError) as err:
        load_model("remoteclip", checkpoint="MVRL/remote-clip-vit-base-patch32", device="cpu")
    msg = str(err.value)
    assert "MVRL/remote-clip-vit-base-patch32" in msg and str(tmp_path / "hfcache") in msg and "HF_HUB_OFFLINE" in msg
    assert isinstance(err.value, FileNotFoundError)


def test_checkpoint_with_wrong_keys_is_refused(tiny_checkpoint, tmp_path):
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((tiny_checkpoint / "config.json").read_text())
    state = load_file(str(tiny_checkpoint / "model.safetensors"))
    # The original release's layout: plain open_clip keys, no "model." prefix.
    save_file({k.removeprefix("model."): v for k, v in state.items()}, str(bad / "model.safetensors"))
    with pytest.raises(CheckpointError, match="strict loading refused") as err:
        load_model("remoteclip", checkpoint=str(bad), device="cpu")
    assert "model." in str(err.value)
    # One extra (unexpected) key is refused too.
    save_file({**state, "model.extra.weight": torch.zeros(1)}, str(bad / "model.safetensors"))
    with pytest.raises(CheckpointError, match="extra"):
        load_model("remoteclip", checkpoint=str(bad), device="cpu")


def test_config_without_model_name_is_an_error(tiny_checkpoint, tmp_path):
    bad = tmp_path / "nomodel"
    bad.mkdir()
    (bad / "config.json").write_text("{}")
    (bad / "model.safetensors").write_bytes((tiny_checkpoint / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="model_name"):
        load_model("remoteclip", checkpoint=str(bad), device="cpu")


def test_half_needs_cuda_and_device_names_are_checked(tiny_checkpoint):
    if torch.cuda.is_available():
        pytest.skip("CUDA present: half precision is allowed")
    with pytest.raises(SpecError, match="half"):
        load_model("remoteclip", checkpoint=str(tiny_checkpoint), device="cpu", half=True)
    with pytest.raises(SpecError, match="device"):
        load_model("remoteclip", checkpoint=str(tiny_checkpoint), device="tpu")


def test_wrapper_transform_path_is_used_and_recorded(tiny_checkpoint):
    from rs_embed_core.models.preprocess import CLIP_MEAN, CLIP_STD
    from rs_embed_core.models.remoteclip import RemoteClipAdapter, import_rshf_remoteclip, quiet_build

    mod = import_rshf_remoteclip()
    cfg = json.loads((tiny_checkpoint / "config.json").read_text())
    with quiet_build():
        wrapper = mod.RemoteCLIP.from_pretrained(
            str(tiny_checkpoint), config={"model_name": cfg["model_name"]}, strict=True
        )
    calls = []

    def transform(rgb_u8_hwc: np.ndarray, image_size: int) -> torch.Tensor:
        calls.append(rgb_u8_hwc.shape)
        x = torch.from_numpy(np.ascontiguousarray(rgb_u8_hwc)).permute(2, 0, 1).float()[None] / 255
        x = torch.nn.functional.interpolate(x, size=(image_size, image_size), mode="bilinear")[0]
        return (x - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)

    wrapper.transform = transform
    adapter = RemoteClipAdapter.from_wrapper(wrapper, device="cpu", model_arch=cfg["model_name"])
    assert adapter.preprocess_path == "transform" and adapter.meta["preprocess_path"] == "transform"
    x = adapter.prepare([torch.randint(0, 256, (3, 300, 260), dtype=torch.uint8)])
    assert x.shape == (1, 3, 224, 224) and calls == [(300, 260, 3)]
