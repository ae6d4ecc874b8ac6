"""Shared test set-up.

The hub is never contacted: ``HF_HUB_OFFLINE=1`` is set here, at import, before any
test module can import huggingface_hub (which reads it once). Model fixtures are
random-weight checkpoints of real architectures, saved with ``save_pretrained`` and
loaded through the real loading path.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
# Keep the model code quiet about thread counts on the shared 2-core machines.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Chips fetched in tests never land in (or come from) the user's chip cache.
os.environ["RS_EMBED_CACHE_DIR"] = _chip_dir = __import__("tempfile").mkdtemp(prefix="rs-embed-test-chips-")
__import__("atexit").register(__import__("shutil").rmtree, _chip_dir, True)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    online = os.environ.get("RS_EMBED_ONLINE", "").lower() in ("1", "true", "yes")
    skip_online = pytest.mark.skip(reason="online test: set RS_EMBED_ONLINE=1 to run it")
    gpu_items = [i for i in items if "gpu" in i.keywords]
    has_cuda = False
    if gpu_items:
        import torch

        has_cuda = torch.cuda.is_available()
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "online" in item.keywords and not online:
            item.add_marker(skip_online)
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ~2M-parameter random RemoteCLIP-layout checkpoint (7 x 7 grid, 64-d tokens, 32-d joint)."""
    from rs_embed_core.models import make_dev_checkpoint

    return make_dev_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", arch="tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint: Path):
    """The loaded (cached) adapter of ``tiny_checkpoint`` on CPU."""
    from rs_embed_core.models import load_model

    return load_model("remoteclip", checkpoint=str(tiny_checkpoint), device="cpu")


@pytest.fixture(scope="session")
def vitb32_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random ViT-B-32 checkpoint in the exact hub layout (~600 MB; use from slow tests only)."""
    from rs_embed_core.models import make_dev_checkpoint

    return make_dev_checkpoint(tmp_path_factory.mktemp("ckpt") / "vitb32", arch="ViT-B-32", seed=0)


def seed_hf_cache(
    cache_dir: Path, repo_id: str, src: Path, revision: str = "0123456789abcdef0123456789abcdef01234567"
) -> Path:
    """Lay ``src`` out in a Hugging Face hub cache as ``repo_id`` at ``revision`` (as a download would).

    Files go to ``blobs/<sha256>`` with relative symlinks from ``snapshots/<rev>/``, and
    ``refs/main`` names the revision. Returns the snapshot folder.
    """
    import hashlib

    repo = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    snap = repo / "snapshots" / revision
    snap.mkdir(parents=True, exist_ok=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for name in ("config.json", "model.safetensors"):
        data = (Path(src) / name).read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snap / name
        if link.exists() or link.is_symlink():
            link.unlink()
        link.symlink_to(Path("..") / ".." / "blobs" / blob.name)
    return snap


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty, private HF hub cache (``HF_HUB_CACHE``) for this test."""
    cache = tmp_path / "hf-hub-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory: pytest.TempPathFactory):
    """ONE temporary Prefect server for the whole test session (startup costs 10-15 s).

    ``PREFECT_HOME`` (result storage, cache records) goes to a temp folder: the harness
    isolates only the database, so cached results would otherwise leak between sessions.
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("prefect_harness")``.
    """
    from prefect.settings import PREFECT_HOME, PREFECT_SERVER_ANALYTICS_ENABLED, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    home = tmp_path_factory.mktemp("prefect-home")
    with (
        temporary_settings({PREFECT_HOME: str(home), PREFECT_SERVER_ANALYTICS_ENABLED: False}),
        prefect_test_harness(server_startup_timeout=90),
    ):
        yield home
