"""The steps of an embedding run, one function per orchestration task.

Each function is the single core call a Prefect task makes (see ``tasks/``), and
each is usable without Prefect: :func:`run_direct` chains them in-process, which is
what the benchmark compares the flow against. Values crossing step boundaries are
small JSON-ready dicts (chip references, staged-entry references), never arrays.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata
import logging
import os
import platform
import socket
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from .errors import NoImageryError, PermanentProviderError, StoreError
from .planning import (
    Plan,
    RunRequest,
    WorkItem,
    expected_digest,
    make_batches,
    model_identity,
    plan_entries,
    time_iso,
)
from .providers.base import fetch_key, resolve_backend
from .specs import ROI, OutputSpec, SensorSpec, TemporalSpec, parse_roi, spec_from_dict
from .staging import StagedRef, StagingArea

log = logging.getLogger(__name__)

PACKAGES = (
    "rs-embed-product",
    "prefect",
    "torch",
    "open_clip_torch",
    "rshf",
    "transformers",
    "icechunk",
    "zarr",
    "xarray",
    "numpy",
    "earthengine-api",
)
# Fetch outcomes recorded per entry (the run summary and the store metadata count them).
FETCHED, NO_IMAGERY, FAILED = "fetched", "no_imagery", "failed"


# -- identity and keys -----------------------------------------------------------------------


def load_model_for(sensor: SensorSpec, *, model: str = "remoteclip", device: str | None = None) -> Any:
    """The model adapter for this sensor's checkpoint (cached per process by ``load_model``)."""
    from .models import load_model

    return load_model(model, checkpoint=sensor.checkpoint, device=device)


def model_identity_for(
    sensor: SensorSpec, *, model: str = "remoteclip", device: str | None = None, load: bool = False
) -> dict[str, Any]:
    """The digest-relevant identity (model, arch, weight sha256, preprocess path) of the model to run.

    For RemoteCLIP it is read from the checkpoint alone (config + weight hash), so a
    run that skips everything never builds the model. The rshf wrapper has no
    ``transform`` hook, so its adapter always takes the "fallback" preprocessing path;
    if that ever changes, the planned digest no longer matches the computed one,
    inference logs it, and entries are recomputed (never wrongly skipped).
    ``load=True`` (or another model) asks the loaded adapter instead.
    """
    if model == "remoteclip" and not load:
        from .models.checkpoints import resolve_checkpoint
        from .models.remoteclip import checkpoint_meta

        return model_identity(
            {"model": model, "preprocess_path": "fallback", **checkpoint_meta(resolve_checkpoint(sensor.checkpoint))}
        )
    return model_identity(load_model_for(sensor, model=model, device=device).meta)


def fetch_keys_for(request: RunRequest, backend: Any) -> dict[tuple[str, str], str]:
    """(roi id, time iso) -> fetch key, without fetching anything."""
    provider = resolve_backend(backend)
    return {
        (roi.id, time_iso(w)): fetch_key(provider, roi, w, request.sensor)
        for w in request.windows
        for roi in request.rois
    }


def plan_run(
    request: RunRequest,
    backend: Any,
    identity: Mapping[str, Any],
    existing: Mapping[tuple[str, str], str],
    force: bool = False,
) -> Plan:
    """Decide the work: every (ROI, window) not already stored with the same digest."""
    return plan_entries(request, fetch_keys_for(request, backend), identity, existing, force=force)


# -- fetch -------------------------------------------------------------------------------------


def fetch_entry(roi: Any, temporal: Any, sensor: SensorSpec, backend: Any, cache: Any = None) -> dict[str, Any]:
    """Fetch one (ROI, window) into the chip cache.

    Returns:
        ``{"status": "fetched", "chip": <ChipRef dict>}``, or ``{"status":
        "no_imagery"|"failed", "reason": ...}`` for permanent provider errors (a
        recorded outcome, not a crash). Transient errors propagate so the caller can
        retry them.
    """
    from .cache import fetch_chip_ref

    roi_spec: ROI = parse_roi(roi)
    window: TemporalSpec = temporal if isinstance(temporal, TemporalSpec) else spec_from_dict(temporal)
    provider = resolve_backend(backend)
    try:
        ref = fetch_chip_ref(provider, roi_spec, window, sensor, cache)
    except NoImageryError as exc:
        return {"status": NO_IMAGERY, "reason": str(exc)}
    except PermanentProviderError as exc:
        return {"status": FAILED, "reason": f"{type(exc).__name__}: {exc}"}
    return {"status": FETCHED, "chip": ref.to_dict()}


# -- inference ---------------------------------------------------------------------------------

INFER_CONCURRENCY_ENV = "RS_EMBED_INFER_CONCURRENCY"
_slots_lock = threading.Lock()
_slots: dict[str, tuple[threading.Semaphore, threading.Semaphore]] = {}


def batch_run(fetched: Sequence[dict[str, Any]], request: RunRequest, identity: dict[str, Any]) -> list[dict[str, Any]]:
    """Group a run's fetched chips into inference batches of ``request.batch_size`` forward slots."""
    return make_batches(
        fetched,
        batch_size=request.batch_size,
        sensor=request.sensor,
        output=request.output,
        input_prep=request.input_prep,
        identity=identity,
    )


def _device_slots(adapter: Any) -> tuple[threading.Semaphore, threading.Semaphore]:
    """(in-flight, forward) semaphores for the adapter's device in this process.

    Mapped batch tasks run in threads. Concurrent forwards on one device gain nothing
    (torch already uses every core / the whole GPU) and multiply activation memory,
    so one forward runs at a time (``RS_EMBED_INFER_CONCURRENCY`` raises it). One more
    batch may hold its chips in memory meanwhile (reading overlaps the forward);
    the others wait before reading, so memory stays flat however many batches a run has.
    """
    device = str(getattr(adapter, "device", "cpu"))
    with _slots_lock:
        if device not in _slots:
            n = max(1, int(os.environ.get(INFER_CONCURRENCY_ENV, "1")))
            _slots[device] = (threading.Semaphore(n + 1), threading.Semaphore(n))
        return _slots[device]


def infer_batch(
    batch: Mapping[str, Any],
    *,
    sensor: SensorSpec,
    output: OutputSpec,
    input_prep: str,
    staging_dir: str | Path,
    model: str = "remoteclip",
    device: str | None = None,
    slot: Callable[[], AbstractContextManager[Any]] | None = None,
) -> list[dict[str, Any]]:
    """Embed one batch of fetched chips and stage the results; returns staged refs.

    A batch already staged (same content key) is returned as is: no chip is read
    and no model is loaded, which is what makes a retried run cheap. ``slot`` (a
    context-manager factory, e.g. an orchestrator's concurrency limit) is held around
    the forward pass only, so a cross-run GPU cap is not held while reading chips.
    """
    from .api import embed_chips
    from .cache import load_chip

    staging = StagingArea(staging_dir)
    key = batch["key"]
    if staging.has_batch(key):
        return [r.to_dict() for r in staging.batch_refs(key)]
    items = [WorkItem.from_dict(e["item"]) for e in batch["entries"]]
    adapter = load_model_for(sensor, model=model, device=device)
    in_flight, forward = _device_slots(adapter)
    with in_flight:
        chips = [load_chip(e["chip"]) for e in batch["entries"]]
        with forward, slot() if slot is not None else contextlib.nullcontext():
            embeddings = embed_chips(
                adapter,
                chips,
                rois=[i.roi for i in items],
                temporals=[i.temporal for i in items],
                sensor=sensor,
                output=output,
                input_prep=input_prep,
                fetch_keys=[i.fetch_key for i in items],
            )
        del chips  # before the next batch may load its chips
    mismatched = [
        i.key for i, e in zip(items, embeddings, strict=True) if i.digest and e.meta["entry_digest"] != i.digest
    ]
    if mismatched:
        # The planner's digest disagrees with the model's: reruns would not skip these.
        log.warning("entry digest differs from the planned one for %s", mismatched)
    refs = staging.stage(key, embeddings, extra={"n": len(items)})
    return [r.to_dict() for r in refs]


def collect_staged(batch_keys: Sequence[str], staging_dir: str | Path) -> list[dict[str, Any]]:
    """References of batches staged elsewhere (dispatched runs); raises if one is missing."""
    staging = StagingArea(staging_dir)
    return [r.to_dict() for key in batch_keys for r in staging.batch_refs(key)]


# -- store -------------------------------------------------------------------------------------


def open_store(location: str | Path, *, create: bool = True) -> Any:
    from .store import EmbeddingStore

    return EmbeddingStore.open(str(location), create=create)


def existing_digests(location: str | Path, *, branch: str = "main") -> dict[tuple[str, str], str]:
    """(roi id, time iso) -> entry digest of what the store holds; empty for a new store."""
    store = open_store(location, create=True)
    return {(str(r), _time_str(t)): str(d) for (r, t), d in store.entry_digests(branch).items() if d}


def _time_str(t: Any) -> str:
    if isinstance(t, (dt.date, dt.datetime)):
        return t.isoformat()[:10]
    text = str(t)
    return text[:10]


def publish(
    location: str | Path,
    staged: Sequence[Mapping[str, Any]],
    *,
    staging_dir: str | Path,
    message: str,
    metadata: Mapping[str, Any],
    tag: str | None = None,
    branch: str = "main",
    cleanup: bool = True,
) -> dict[str, Any]:
    """Write every staged entry and commit once; optionally tag the snapshot.

    Nothing is committed when ``staged`` is empty (a rerun that skipped everything
    leaves the history as it was). A failure before the commit discards the
    session: the store stays exactly as it was.

    Returns:
        ``{"snapshot_id", "written", "tag", "tag_note"}``.
    """
    staging = StagingArea(staging_dir)
    store = open_store(location, create=True)
    snapshot = None
    if staged:
        with store.writer(branch=branch) as writer:
            for ref in staged:
                writer.write(staging.load(ref))
            snapshot = writer.commit(message, dict(metadata))
    tag_note = None
    if tag:
        tag_note = _tag(store, tag, snapshot, branch)
    if cleanup and staged:
        staging.remove(StagedRef.from_dict(dict(r)).batch_key for r in staged)
    return {"snapshot_id": snapshot, "written": len(staged), "tag": tag, "tag_note": tag_note}


def _tag(store: Any, tag: str, snapshot: str | None, branch: str) -> str:
    """Tag the new snapshot; tags are immutable, so an existing tag is reported, not moved."""
    try:
        existing = store.tags() if hasattr(store, "tags") else {}
    except StoreError:
        existing = {}
    if tag in existing:
        return f"tag {tag} already exists (at {existing[tag]}); left unchanged"
    if snapshot is None:
        history = store.history(branch)
        if not history:
            return f"tag {tag} not created: branch {branch} is empty"
        snapshot = history[0].get("id") or history[0].get("snapshot_id")
    store.tag(tag, snapshot)
    return f"tagged {snapshot} as {tag}"


# -- run facts -------------------------------------------------------------------------------


def package_versions(names: Sequence[str] = PACKAGES) -> dict[str, str]:
    """Installed versions (read from metadata; nothing is imported)."""
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def code_version() -> str:
    """Package version plus the git commit of the source tree when there is one."""
    from . import __version__

    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{sha}{'.dirty' if dirty else ''}"


def run_facts() -> dict[str, Any]:
    """Facts about the process doing a run, for commit metadata."""
    return {
        "code_version": code_version(),
        "packages": package_versions(),
        "python": platform.python_version(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }


# -- the whole run without an orchestrator -------------------------------------------------


def run_direct(
    request: RunRequest,
    *,
    store: str | Path,
    staging_dir: str | Path,
    backend: Any = "synthetic",
    cache: Any = None,
    force: bool = False,
    device: str | None = None,
    tag: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Plan, fetch, embed, stage and commit in this process (same steps as the flow)."""
    identity = model_identity_for(request.sensor, model=request.model, device=device)
    existing = {} if force else existing_digests(store)
    plan = plan_run(request, backend, identity, existing, force=force)
    fetched, outcomes = [], {}
    for item in plan.todo:
        res = fetch_entry(item.roi, item.temporal, request.sensor, backend, cache)
        outcomes[item.key] = res
        if res["status"] == FETCHED:
            fetched.append({"item": item.to_dict(), "chip": res["chip"]})
    batches = batch_run(fetched, request, identity)
    staged: list[dict[str, Any]] = []
    for i, batch in enumerate(batches):
        staged.extend(
            infer_batch(
                batch,
                sensor=request.sensor,
                output=request.output,
                input_prep=request.input_prep,
                staging_dir=staging_dir,
                model=request.model,
                device=device,
            )
        )
        if progress:
            progress(i + 1, len(batches))
    counts = {
        "written": len(staged),
        "skipped": len(plan.skipped),
        "no_imagery": sum(o["status"] == NO_IMAGERY for o in outcomes.values()),
        "failed": sum(o["status"] == FAILED for o in outcomes.values()),
    }
    result = publish(
        store,
        staged,
        staging_dir=staging_dir,
        message=f"direct run: {counts['written']} entries",
        metadata={"counts": counts, "request": request.to_dict(), **run_facts()},
        tag=tag,
    )
    return {**result, "counts": counts, "batches": len(batches)}


__all__ = [
    "FAILED",
    "FETCHED",
    "NO_IMAGERY",
    "existing_digests",
    "expected_digest",
    "fetch_entry",
    "fetch_keys_for",
    "infer_batch",
    "model_identity_for",
    "plan_run",
    "publish",
    "run_direct",
    "run_facts",
]
