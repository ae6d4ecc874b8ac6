"""The RemoteCLIP adapter: load through rshf, preprocess, forward, tokens + joint vector.

Outputs of one forward pass (no extra cost over ``encode_image``):

* ViT towers: the final-layer patch tokens AFTER the tower's final LayerNorm
  (``ln_post``), class token dropped, reshaped row-major to (D, H, W) (768 x 7 x 7 for
  ViT-B/32, 1024 x 16 x 16 for ViT-L/14), and the projected CLS vector, which is
  exactly ``encode_image`` (512 / 768).
* ResNet towers (RN50): the final conv feature map (layer4, 2048 x 7 x 7; there is no
  LayerNorm in a ResNet) as the grid, and the attention-pool output (1024) as the joint
  vector.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import logging
import os
import ssl
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ..errors import CheckpointError, SpecError
from .checkpoints import ResolvedCheckpoint, register_open_clip_config
from .preprocess import clip_fallback, fallback_params

log = logging.getLogger("rs_embed_core.models")

_quiet_lock = threading.RLock()
_NO_PRETRAINED = "No pretrained weights loaded"


class _DropNoPretrained(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_NO_PRETRAINED)


@contextlib.contextmanager
def quiet_build() -> Iterator[None]:
    """Silence rshf's stdout prints and open_clip's "No pretrained weights loaded" warning.

    open_clip logs through the ROOT logger with ``logging.warning``, which also calls
    ``basicConfig()`` when the root logger has no handler; a temporary NullHandler
    avoids that side effect. Both changes are undone on exit.
    """
    root = logging.getLogger()
    flt = _DropNoPretrained()
    with _quiet_lock:
        added = None
        if not root.handlers:
            added = logging.NullHandler()
            root.addHandler(added)
        root.addFilter(flt)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                yield
        finally:
            root.removeFilter(flt)
            if added is not None:
                root.removeHandler(added)


def import_rshf_remoteclip() -> Any:
    """Import ``rshf.remoteclip`` and undo rshf's process-wide switch-off of TLS verification.

    ``rshf/utils.py`` sets ``ssl._create_default_https_context`` to the unverified
    context on import; we put the verifying default back every time (cheap, and it
    also repairs the switch if rshf was first imported elsewhere).
    """
    import rshf.remoteclip as mod

    ssl._create_default_https_context = ssl.create_default_context
    return mod


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def library_versions() -> dict[str, str | None]:
    import torch

    from .. import __version__

    return {
        "rs_embed_core": __version__,
        "torch": torch.__version__,
        "open_clip": _version("open_clip_torch"),
        "rshf": _version("rshf"),
        "transformers": _version("transformers"),
        "huggingface_hub": _version("huggingface_hub"),
        "numpy": np.__version__,
    }


def auto_device(device: str | None) -> str:
    """``None``/``"auto"`` -> ``"cuda"`` when available, else ``"cpu"``; other names are checked."""
    import torch

    if device is None or device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not isinstance(device, str):
        raise SpecError("device", device, "must be 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SpecError("device", device, "CUDA is not available on this machine; use 'cpu' or 'auto'")
        return device
    if device in ("cpu", "mps"):
        return device
    raise SpecError("device", device, "must be 'auto', 'cpu', 'cuda' or 'cuda:N'")


def default_batch_size(device: str) -> int:
    """``RS_EMBED_REMOTECLIP_BATCH_SIZE`` or 64 on CUDA / 8 elsewhere."""
    raw = os.environ.get("RS_EMBED_REMOTECLIP_BATCH_SIZE")
    if raw:
        try:
            value = int(raw)
        except ValueError:
            raise SpecError("RS_EMBED_REMOTECLIP_BATCH_SIZE", raw, "must be a positive integer") from None
        if value < 1:
            raise SpecError("RS_EMBED_REMOTECLIP_BATCH_SIZE", raw, "must be a positive integer")
        return value
    return 64 if device.startswith("cuda") else 8


class RemoteClipAdapter:
    """A loaded RemoteCLIP wrapper plus everything needed to run and describe it.

    Build it with :func:`rs_embed_core.models.load_model` (cached) or
    :meth:`from_checkpoint`; :meth:`from_wrapper` wraps an already built
    ``rshf.remoteclip.RemoteCLIP`` (tests of architectures too big to save).
    """

    name = "remoteclip"

    def __init__(self, wrapper: Any, *, device: str, half: bool, checkpoint_meta: dict[str, Any]) -> None:
        import open_clip
        import torch

        self.wrapper = wrapper
        self.device = device
        self.half = bool(half)
        self.dtype = torch.float16 if self.half else torch.float32
        clip = wrapper.model
        visual = clip.visual
        self.visual = visual
        self.clip = clip
        if isinstance(visual, open_clip.transformer.VisionTransformer):
            self.tower = "vit"
            # Ask the tower for its tokens too: pooled (projected CLS == encode_image) and
            # tokens after ln_post, class token excluded (see VisionTransformer._pool).
            visual.output_tokens = True
            self.grid_hw = tuple(int(v) for v in visual.grid_size)
            self.grid_dim = int(visual.conv1.out_channels)
            self.image_size = int(visual.image_size[0])
        elif isinstance(visual, open_clip.modified_resnet.ModifiedResNet):
            self.tower = "resnet"
            self.image_size = int(visual.image_size)
            self.grid_hw = (self.image_size // 32, self.image_size // 32)
            self.grid_dim = int(visual.layer4[-1].conv3.out_channels)
        else:
            raise CheckpointError(
                f"unsupported vision tower {type(visual).__name__}: the adapter handles open_clip "
                "VisionTransformer and ModifiedResNet towers"
            )
        self.embed_dim = int(clip.text_projection.shape[1]) if clip.text_projection is not None else None
        if self.embed_dim is None:
            raise CheckpointError("the checkpoint's CLIP model has no text projection; cannot infer the joint size")

        # Preprocessing path. A wrapper-specific ``transform(rgb_u8_hwc, image_size)`` (the
        # reference rs-embed's hook) wins when present. rshf's ``preprocess`` is NOT used:
        # it is open_clip's generic eval transform (the same math as our fallback) on
        # one PIL image at a time, so taking it would be slower and would record
        # "transform" for what is in fact the generic pipeline. The reference rs-embed
        # also ends up on the generic path with rshf (no ``transform`` attribute).
        tf = getattr(wrapper, "transform", None)
        self.transform = tf if callable(tf) else None
        self.preprocess_path = "transform" if self.transform is not None else "fallback"
        self.preprocess_params = (
            {"callable": f"{type(wrapper).__name__}.transform(rgb_u8_hwc, image_size)", "image_size": self.image_size}
            if self.transform is not None
            else fallback_params(self.image_size)
        )

        wrapper.to(device=device, dtype=self.dtype)
        wrapper.eval()
        self.meta: dict[str, Any] = {
            "model": self.name,
            **checkpoint_meta,
            "preprocess_path": self.preprocess_path,
            "preprocess": self.preprocess_params,
            "image_size": self.image_size,
            "grid_tokens_hw": list(self.grid_hw),
            "grid_dim": self.grid_dim,
            "embed_dim": self.embed_dim,
            "grid_source": "ln_post patch tokens, CLS dropped" if self.tower == "vit" else "layer4 feature map",
            "image_embedding": "encode_image output (not L2-normalised)",
            "device": device,
            "dtype": "float16" if self.half else "float32",
            "versions": library_versions(),
        }
        log.info(
            "remoteclip %s loaded on %s (%s); preprocess_path=%s",
            self.meta.get("model_arch"),
            device,
            self.meta["dtype"],
            self.preprocess_path,
        )

    # -- construction -------------------------------------------------------------------

    @classmethod
    def from_checkpoint(cls, ckpt: ResolvedCheckpoint, *, device: str, half: bool = False) -> RemoteClipAdapter:
        """Build the architecture named in the checkpoint and load its weights strictly."""
        mod = import_rshf_remoteclip()
        if isinstance(ckpt.config.get("open_clip_cfg"), dict):
            register_open_clip_config(ckpt.arch, ckpt.config["open_clip_cfg"])
        _check_arch(ckpt.arch, ckpt.spec)
        try:
            with quiet_build():
                # The explicit config is required with transformers 5 (PreTrainedConfig lacks
                # model_name otherwise); strict=True turns wrong keys into an error instead
                # of silently random weights. We always pass a local folder (already
                # resolved), so rshf never goes to the network itself.
                wrapper = mod.RemoteCLIP.from_pretrained(
                    str(ckpt.path), config={"model_name": ckpt.arch}, strict=True, map_location="cpu"
                )
        except RuntimeError as exc:
            raise CheckpointError(_key_error_message(ckpt, exc)) from exc
        return cls(wrapper, device=device, half=half, checkpoint_meta=checkpoint_meta(ckpt))

    @classmethod
    def from_wrapper(cls, wrapper: Any, *, device: str = "cpu", half: bool = False, **meta: Any) -> RemoteClipAdapter:
        hub_cfg = getattr(wrapper, "_hub_mixin_config", None)
        arch = meta.pop("model_arch", None) or (hub_cfg.get("model_name") if isinstance(hub_cfg, dict) else None)
        base = {
            "model_arch": arch,
            "checkpoint": None,
            "checkpoint_path": None,
            "checkpoint_revision": None,
            "checkpoint_sha256": None,
            "weights_are_random": True,
        }
        base.update(meta)
        return cls(wrapper, device=device, half=half, checkpoint_meta=base)

    # -- inference ----------------------------------------------------------------------

    def prepare(self, images_u8: Sequence[Any]) -> Any:
        """Model inputs for a batch of uint8-valued images (each a (3, H, W) tensor).

        Fallback path: images of equal size are processed together as one tensor op.
        Transform path: the wrapper's transform, one image at a time.
        """
        import torch

        if self.transform is not None:
            outs = []
            for img in images_u8:
                hwc = img.to(torch.uint8).permute(1, 2, 0).cpu().numpy()
                outs.append(torch.as_tensor(self.transform(hwc, self.image_size), dtype=torch.float32))
            return torch.stack(outs)
        out: list[Any] = [None] * len(images_u8)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(images_u8):
            groups.setdefault(tuple(img.shape[-2:]), []).append(i)
        for idx in groups.values():
            batch = clip_fallback(torch.stack([images_u8[i] for i in idx]), self.image_size)
            for j, i in enumerate(idx):
                out[i] = batch[j]
        return torch.stack(out)

    def forward(self, x: Any) -> tuple[Any, Any]:
        """Normalised input (B, 3, S, S) -> (tokens (B, D, h, w), joint (B, E)), float32 on CPU."""
        import torch

        with torch.inference_mode():
            x = x.to(device=self.device, dtype=self.dtype, non_blocking=True)
            if self.tower == "vit":
                joint, tokens = self.visual(x)
                b, n, d = tokens.shape
                h, w = self.grid_hw
                if n != h * w:
                    raise CheckpointError(f"expected {h * w} patch tokens, got {n}")
                grid = tokens.reshape(b, h, w, d).permute(0, 3, 1, 2)
            else:
                v = self.visual
                f = v.layer4(v.layer3(v.layer2(v.layer1(v.stem(x)))))
                joint = v.attnpool(f)
                grid = f
            return grid.float().cpu(), joint.float().cpu()

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """Joint-space text vectors (N, E), L2-normalised, float32."""
        import torch

        tokens = self.wrapper.tokenizer(list(texts)).to(self.device)
        with torch.inference_mode():
            feats = self.clip.encode_text(tokens, normalize=True)
        return feats.float().cpu().numpy()

    def project_tokens(self, tokens: np.ndarray) -> np.ndarray:
        """Grid tokens (D, H, W) -> joint space (E, H, W) with the tower's projection (ViT only)."""
        import torch

        if self.tower != "vit" or self.visual.proj is None:
            raise CheckpointError(
                f"project_tokens needs a ViT tower with a projection; {self.meta.get('model_arch')} has none "
                "(ResNet grids are layer4 features, not in the joint space)"
            )
        t = torch.as_tensor(np.asarray(tokens), dtype=torch.float32)
        d, h, w = t.shape
        proj = self.visual.proj.detach().float().cpu()
        out = t.reshape(d, h * w).T @ proj
        return out.T.reshape(-1, h, w).numpy()


def _check_arch(arch: str, spec: str) -> None:
    import open_clip

    if open_clip.get_model_config(arch) is None:
        raise CheckpointError(
            f"checkpoint {spec!r} names architecture {arch!r}, which open_clip does not know "
            "(and the checkpoint carries no open_clip_cfg to register)"
        )


def _key_error_message(ckpt: ResolvedCheckpoint, exc: BaseException) -> str:
    text = str(exc)
    hint = ""
    if "Missing key" in text and "model." in text:
        hint = (
            " The weights may be a plain open_clip state dict (keys without the 'model.' prefix, as in the "
            "original chendelong/RemoteCLIP release); re-save them with RemoteCLIP.save_pretrained."
        )
    short = text if len(text) < 1200 else text[:1200] + " ..."
    return (
        f"checkpoint {ckpt.spec!r} ({ckpt.weights_file}) does not match architecture {ckpt.arch!r}; strict "
        f"loading refused it rather than run with random weights: {short}{hint}"
    )


def checkpoint_meta(ckpt: ResolvedCheckpoint) -> dict[str, Any]:
    return {
        "model_arch": ckpt.arch,
        "checkpoint": ckpt.spec,
        "checkpoint_path": str(ckpt.path),
        "checkpoint_source": ckpt.source,
        "checkpoint_revision": ckpt.revision,
        "checkpoint_sha256": ckpt.sha256,
        "weights_are_random": ckpt.weights_are_random,
    }
