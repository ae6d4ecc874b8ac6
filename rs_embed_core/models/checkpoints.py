"""Finding a RemoteCLIP checkpoint and describing it (path, revision, sha256, architecture).

A checkpoint is a folder in the Hugging Face "hub mixin" layout: ``config.json``
(``{"model_name": "<open_clip architecture>", ...}``) and ``model.safetensors``.
It is named either by a local path or by a hub repo id (optionally ``id@revision``).
Hub ids are looked up in the Hugging Face cache first; the cache location and
offline mode are read from the environment at call time (``HF_HUB_CACHE``,
``HUGGINGFACE_HUB_CACHE``, ``HF_HOME``, ``HF_HUB_OFFLINE``), not when
``huggingface_hub`` was first imported, so a process can point at another cache.

Checkpoints made by :func:`rs_embed_core.models.make_dev_checkpoint` carry
``weights_are_random: true`` and, for architectures open_clip does not ship, the
open_clip model config itself (``open_clip_cfg``), which is registered with open_clip
before the model is built. That is what lets any process (a Prefect worker, the CLI)
load such a checkpoint with no set-up.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, CheckpointNotFoundError
from ..specs import HF_PREFIX

DEFAULT_CHECKPOINT = "MVRL/remote-clip-vit-base-patch32"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_TRUE = ("1", "true", "yes", "on")

_sha_lock = threading.Lock()
_sha_cache: dict[tuple[str, int, int], str] = {}
_cfg_lock = threading.Lock()
_cfg_dir: Path | None = None


@dataclass(frozen=True)
class ResolvedCheckpoint:
    """A checkpoint found on disk.

    Attributes:
        spec: what was asked for (repo id or path, without ``hf:``).
        path: the folder holding ``config.json`` and ``model.safetensors``.
        weights_file: the weight file inside ``path``.
        config: the parsed ``config.json``.
        arch: the open_clip architecture name (``config["model_name"]``).
        revision: the hub commit of a cached snapshot, else ``None``.
        source: ``"local"`` (a folder) or ``"hub"`` (found in / fetched into the HF cache).
    """

    spec: str
    path: Path
    weights_file: Path
    config: dict[str, Any]
    arch: str
    revision: str | None
    source: str

    @property
    def weights_are_random(self) -> bool:
        return bool(self.config.get("weights_are_random", False))

    @property
    def sha256(self) -> str:
        return sha256_file(self.weights_file)


def hf_cache_dir() -> Path:
    """The hub cache folder, following huggingface_hub's precedence, read now."""
    env = os.environ
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(var):
            return Path(env[var]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    xdg = env.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path("~/.cache").expanduser()
    return base / "huggingface" / "hub"


def hf_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set to a true value."""
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def sha256_file(path: Path) -> str:
    """sha256 of a file, memoised per (path, size, mtime) so a 600 MB file is hashed once per process."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    with _sha_lock:
        if key in _sha_cache:
            return _sha_cache[key]
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    digest = h.hexdigest()
    with _sha_lock:
        _sha_cache[key] = digest
    return digest


def normalize_spec(checkpoint: str | os.PathLike[str] | None) -> str:
    """``None`` -> the default repo id; strips an ``hf:`` prefix."""
    if checkpoint is None:
        return DEFAULT_CHECKPOINT
    spec = os.fspath(checkpoint).strip()
    if spec.lower().startswith(HF_PREFIX):
        spec = spec[len(HF_PREFIX) :].strip()
    if not spec:
        raise CheckpointNotFoundError("checkpoint is empty: give a Hugging Face repo id or a local folder")
    return spec


def _looks_like_path(spec: str) -> bool:
    return spec.startswith(("/", "./", "../", "~", "\\")) or os.path.exists(os.path.expanduser(spec))


def resolve_checkpoint(checkpoint: str | os.PathLike[str] | None = None) -> ResolvedCheckpoint:
    """Find a checkpoint folder; never builds a model.

    Raises:
        CheckpointNotFoundError: nothing found; the message says what was looked for and where.
        CheckpointError: found, but ``config.json`` is unusable.
    """
    spec = normalize_spec(checkpoint)
    if _looks_like_path(spec):
        folder = Path(os.path.expanduser(spec))
        if not folder.is_dir():
            raise CheckpointNotFoundError(
                f"checkpoint {spec!r}: local folder {str(folder.resolve())!r} does not exist "
                f"(expected a folder with {CONFIG_NAME} and {WEIGHTS_NAME}, as written by save_pretrained)"
            )
        return _describe(spec, folder, revision=_revision_from_snapshot_path(folder), source="local")
    if not _HUB_ID.match(spec.split("@", 1)[0]):
        raise CheckpointNotFoundError(
            f"checkpoint {spec!r} is neither an existing local folder nor a Hugging Face repo id 'owner/name'"
        )
    return _resolve_hub(spec)


def _resolve_hub(spec: str) -> ResolvedCheckpoint:
    from huggingface_hub import try_to_load_from_cache

    repo_id, _, revision = spec.partition("@")
    revision = revision or None
    cache = hf_cache_dir()
    found: dict[str, str] = {}
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        hit = try_to_load_from_cache(repo_id, name, cache_dir=str(cache), revision=revision)
        if isinstance(hit, str) and os.path.isfile(hit):
            found[name] = hit
    if len(found) == 2:
        folder = Path(found[CONFIG_NAME]).parent
        return _describe(spec, folder, revision=folder.name, source="hub")

    where = f"the Hugging Face cache {str(cache)!r} (repo folder models--{repo_id.replace('/', '--')})"
    missing = [n for n in (CONFIG_NAME, WEIGHTS_NAME) if n not in found]
    if hf_offline():
        raise CheckpointNotFoundError(
            f"checkpoint {spec!r}: {', '.join(missing)} not found in {where} at revision {revision or 'main'}, and "
            "HF_HUB_OFFLINE is set so the hub was not asked. Download it once with network access, point "
            "HF_HOME/HF_HUB_CACHE at a cache that holds it, or pass a local folder (SensorSpec(collection='hf:/path'))."
        )
    from huggingface_hub import snapshot_download

    try:
        folder = Path(
            snapshot_download(
                repo_id,
                revision=revision,
                cache_dir=str(cache),
                allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, "README.md"],
            )
        )
    except Exception as exc:  # network, auth, unknown repo: all mean "not found here"
        raise CheckpointNotFoundError(
            f"checkpoint {spec!r}: {', '.join(missing)} not in {where}, and downloading from the hub failed: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return _describe(spec, folder, revision=folder.name, source="hub")


def _revision_from_snapshot_path(folder: Path) -> str | None:
    """A folder inside an HF cache (``.../snapshots/<40 hex>``) knows its revision."""
    folder = folder.resolve()
    if folder.parent.name == "snapshots" and re.fullmatch(r"[0-9a-f]{40}", folder.name):
        return folder.name
    return None


def _describe(spec: str, folder: Path, *, revision: str | None, source: str) -> ResolvedCheckpoint:
    cfg_file, weights = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    missing = [p.name for p in (cfg_file, weights) if not p.is_file()]
    if missing:
        extra = (
            " (only pytorch_model.bin is present: convert it to safetensors)"
            if (folder / "pytorch_model.bin").is_file()
            else ""
        )
        raise CheckpointNotFoundError(
            f"checkpoint {spec!r}: {', '.join(missing)} missing in {str(folder)!r}{extra}; expected {CONFIG_NAME} "
            f"with the open_clip 'model_name' and {WEIGHTS_NAME}"
        )
    try:
        config = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {spec!r}: {cfg_file} is not valid JSON ({exc})") from exc
    arch = config.get("model_name") if isinstance(config, dict) else None
    if not isinstance(arch, str) or not arch:
        raise CheckpointError(
            f"checkpoint {spec!r}: {cfg_file} has no 'model_name' (the open_clip architecture, e.g. 'ViT-B-32')"
        )
    return ResolvedCheckpoint(
        spec=spec,
        path=folder.resolve(),
        weights_file=weights.resolve(),
        config=config,
        arch=arch,
        revision=revision,
        source=source,
    )


def register_open_clip_config(name: str, cfg: dict[str, Any]) -> None:
    """Make architecture ``name`` known to open_clip (idempotent).

    A checkpoint may not redefine an architecture open_clip already knows under
    another definition: that would silently change the network other code builds.
    """
    import open_clip

    if not all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise CheckpointError(f"open_clip_cfg of {name!r} needs embed_dim, vision_cfg and text_cfg")
    if not re.fullmatch(r"[\w.-]+", name):
        raise CheckpointError(f"architecture name {name!r} must be letters, digits, '.', '_' or '-'")
    global _cfg_dir
    with _cfg_lock:
        known = open_clip.get_model_config(name)
        if known is not None:
            if known == cfg:
                return
            raise CheckpointError(
                f"checkpoint defines architecture {name!r}, which open_clip already knows with a different config"
            )
        if _cfg_dir is None:
            _cfg_dir = Path(tempfile.mkdtemp(prefix="rs_embed_open_clip_cfgs_"))
        path = _cfg_dir / f"{name}.json"
        path.write_text(json.dumps(cfg, sort_keys=True))
        open_clip.add_model_config(path)
