"""The embedding flows: ``embed_rois`` (the main job) and ``embed_batches`` (the GPU deployment target).

Composition only; every decision lives in rs_embed_core (planning, pipeline,
reporting) and every unit of work is a task from ``tasks/``.

Run shape::

    plan (skip entries already stored with the same digest, unless force)
      -> fetch-chip x (ROI, window)      cached on the fetch request, retried on transient errors
      -> make-batches                    batch_size forward slots per batch
      -> embed-batch x batch             local (this process) or dispatched to the GPU deployment
      -> commit-entries                  one write + ONE commit with run metadata, optional tag
      -> artifacts                       summary markdown, ROI x month table
"""

from __future__ import annotations

import os
from typing import Any

from prefect import flow, get_run_logger, runtime, unmapped
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from rs_embed_core import reporting
from rs_embed_core.cache import chip_ref_ok
from rs_embed_core.pipeline import run_facts
from rs_embed_core.planning import build_request, check_dispatch
from rs_embed_core.specs import OutputSpec, SensorSpec, spec_from_dict
from rs_embed_core.staging import default_staging_dir
from tasks.dispatch import dispatch_batches_task
from tasks.fetch import fetch_chip_task
from tasks.inference import infer_batch_task, model_identity_task
from tasks.planning import batches_task, existing_digests_task, plan_task
from tasks.store import collect_staged_task, publish_task

DEFAULT_INFERENCE_DEPLOYMENT = "embed-batches/embed-batches-gpu"
# Threads per flow run for mapped tasks. Prefect's default is unbounded: 1000 ROIs
# meant 1000 threads. 16 keeps Earth Engine under its default quota of 40
# concurrent requests and leaves room for the inference threads.
FLOW_WORKERS = int(os.environ.get("RS_EMBED_FLOW_WORKERS", "16"))


def _progress(artifact_id: Any, done: int, total: int) -> None:
    update_progress_artifact(artifact_id, progress=100.0 * done / max(total, 1))


@flow(name="embed-batches", task_runner=ThreadPoolTaskRunner(max_workers=FLOW_WORKERS), result_serializer="json")
def embed_batches(
    batches: list[dict[str, Any]],
    sensor: dict[str, Any],
    output: dict[str, Any],
    input_prep: str = "resize",
    staging_dir: str = "",
    model: str = "remoteclip",
    device: str | None = None,
) -> list[str]:
    """Embed batches of cached chips and stage the results (the GPU work-pool deployment).

    Args:
        batches: batches as built by ``make-batches`` (chip references, not pixels).
        sensor: ``SensorSpec`` dict (carries the checkpoint).
        output: ``OutputSpec`` dict.
        input_prep: ``'resize'`` or ``'tile'``.
        staging_dir: staging folder shared with the dispatching run.
        model: model name.
        device: torch device (``None`` = CUDA when present).

    Returns:
        The keys of the staged batches.
    """
    sensor_spec = spec_from_dict({"type": "SensorSpec", **sensor})
    output_spec = spec_from_dict({"type": "OutputSpec", **output})
    progress = create_progress_artifact(progress=0.0, description=f"inference: {len(batches)} batches")
    futures = infer_batch_task.map(
        batches,
        sensor=unmapped(sensor_spec),
        output=unmapped(output_spec),
        input_prep=unmapped(input_prep),
        staging_dir=unmapped(staging_dir),
        model=unmapped(model),
        device=unmapped(device),
    )
    for done, _ in enumerate(as_completed(futures), start=1):
        _progress(progress, done, len(batches))
    for fut in futures:
        fut.result()
    return [b["key"] for b in batches]


# result_serializer="json": Prefect persists a failed run's exception in result
# storage even without result persistence; JSON keeps pickle out of that folder.
@flow(name="embed-rois", task_runner=ThreadPoolTaskRunner(max_workers=FLOW_WORKERS), result_serializer="json")
def embed_rois(
    rois: list[Any] | str,
    store: str,
    months: list[str] | None = None,
    window: Any = None,
    sensor: SensorSpec | dict[str, Any] | None = None,
    output: OutputSpec | dict[str, Any] | None = None,
    input_prep: str = "resize",
    batch_size: int = 64,
    backend: Any = "auto",
    force: bool = False,
    dispatch: str = "local",
    checkpoint: str | None = None,
    device: str | None = None,
    cache_dir: str | None = None,
    staging_dir: str | None = None,
    tag: str | None = None,
    inference_deployment: str = DEFAULT_INFERENCE_DEPLOYMENT,
    batches_per_run: int = 8,
    default_buffer_m: float | None = None,
    refresh_fetch: bool = False,
) -> dict[str, Any]:
    """Embed ROIs x months into the versioned store, one commit per run.

    Args:
        rois: ROIs inline (specs, dicts, ``[lon, lat, buffer_m]``) or a path to a CSV/GeoJSON file.
        store: store location (a local folder or ``s3://bucket/prefix``).
        months: ``['YYYY-MM', ...]``; or give ``window`` instead.
        window: ``'YYYY-MM'``, ``'START..END'`` or ``[start, end]`` (whole months are split per month).
        sensor: imagery settings (``SensorSpec`` or its dict); ``collection='hf:<ckpt>'`` picks the checkpoint.
        output: ``OutputSpec`` (``{"mode": "grid"|"pooled", "pooling": "mean"|"max"}``).
        input_prep: ``'resize'`` (default) or ``'tile'``.
        batch_size: forward slots per inference batch.
        backend: ``'auto'``, ``'gee'``, ``'synthetic'``, ``'local:<folder>'`` or a provider instance.
        force: recompute and rewrite entries even when identical ones are stored.
        dispatch: ``'local'`` (inference in this run) or ``'deployment'`` (runs of ``inference_deployment``).
        checkpoint: model checkpoint (overrides ``sensor.checkpoint``).
        device: torch device for local inference.
        cache_dir: chip cache folder (default ``RS_EMBED_CACHE_DIR`` or the user cache).
        staging_dir: staging folder (default next to a local store; must be shared with dispatched runs).
        tag: tag the commit (monthly releases use ``YYYY-MM``).
        inference_deployment: ``flow-name/deployment-name`` of the GPU deployment.
        batches_per_run: batches per dispatched inference run.
        default_buffer_m: buffer for ROI-file points that give none.
        refresh_fetch: ignore cached fetch results (after pruning the chip cache).
    """
    logger = get_run_logger()
    request = build_request(
        rois,
        months=months,
        window=window,
        sensor=sensor,
        output=output,
        input_prep=input_prep,
        batch_size=batch_size,
        checkpoint=checkpoint,
        default_buffer_m=default_buffer_m,
    )
    check_dispatch(dispatch)
    staging = str(staging_dir or default_staging_dir(store))
    logger.info("%d ROIs x %d windows; store %s; staging %s", len(request.rois), len(request.windows), store, staging)

    # The identity comes from the checkpoint (config + weight hash); no model is built
    # unless a batch has to be computed.
    identity = model_identity_task(request.sensor, request.model, device if dispatch == "local" else "cpu")
    existing = {} if force else existing_digests_task(store)
    plan = plan_task(request, backend, identity, existing, force)
    logger.info("plan: %d to compute, %d already stored (identical)", len(plan.todo), len(plan.skipped))

    fetch = fetch_chip_task.with_options(refresh_cache=True) if refresh_fetch else fetch_chip_task
    fetch_futures = fetch.map(
        [i.roi.to_dict() for i in plan.todo],
        [i.temporal.to_dict() for i in plan.todo],
        sensor=unmapped(request.sensor),
        backend=unmapped(backend),
        cache=unmapped(cache_dir),
    )
    outcomes: dict[tuple[str, str], dict[str, Any]] = {}
    fetched = []
    transient = 0
    for item, fut in zip(plan.todo, fetch_futures, strict=True):
        try:
            res = fut.result()
            if res["status"] == "fetched" and not chip_ref_ok(res["chip"]):
                # A cached fetch result whose chip was since pruned or corrupted: fetch it again.
                logger.warning(
                    "%s %s: cached chip missing or corrupt; fetching again", item.roi.id, item.temporal.label()
                )
                res = fetch.with_options(refresh_cache=True)(
                    item.roi.to_dict(), item.temporal.to_dict(), sensor=request.sensor, backend=backend, cache=cache_dir
                )
        except Exception as exc:  # retries exhausted: recorded, the run fails after committing the rest
            transient += 1
            res = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
        outcomes[item.key] = res
        if res["status"] == "fetched":
            fetched.append({"item": item.to_dict(), "chip": res["chip"]})
        else:
            logger.warning(
                "%s %s: %s (%s)", item.roi.label or item.roi.id, item.temporal.label(), res["status"], res["reason"]
            )

    batches = batches_task(fetched, request, identity) if fetched else []
    staged: list[dict[str, Any]] = []
    if batches and dispatch == "local":
        progress = create_progress_artifact(progress=0.0, description=f"inference: {len(batches)} batches")
        futures = infer_batch_task.map(
            batches,
            sensor=unmapped(request.sensor),
            output=unmapped(request.output),
            input_prep=unmapped(request.input_prep),
            staging_dir=unmapped(staging),
            model=unmapped(request.model),
            device=unmapped(device),
        )
        for done, _ in enumerate(as_completed(futures), start=1):
            _progress(progress, done, len(batches))
        staged = [ref for fut in futures for ref in fut.result()]
    elif batches:
        groups = [batches[i : i + max(1, batches_per_run)] for i in range(0, len(batches), max(1, batches_per_run))]
        logger.info("dispatching %d batches as %d runs of %s", len(batches), len(groups), inference_deployment)
        child = {
            "sensor": request.sensor.to_dict(),
            "output": request.output.to_dict(),
            "input_prep": request.input_prep,
            "staging_dir": staging,
            "model": request.model,
            "device": device,
        }
        progress = create_progress_artifact(progress=0.0, description=f"inference: {len(groups)} dispatched runs")
        runs = dispatch_batches_task.map(
            unmapped(inference_deployment), [{"batches": g, **child} for g in groups], unmapped(2.0)
        )
        for done, _ in enumerate(as_completed(runs), start=1):
            _progress(progress, done, len(groups))
        for fut in runs:
            fut.result()
        staged = collect_staged_task([b["key"] for b in batches], staging)

    written = {(r["roi_id"], r["time"]) for r in staged}
    rows = reporting.outcome_rows(plan, outcomes, written)
    counts = reporting.counts(rows)
    metadata = {
        "flow_run_id": str(runtime.flow_run.id),
        "flow_run_name": runtime.flow_run.name,
        "deployment": runtime.deployment.name,
        "deployment_id": runtime.deployment.id,
        "parameters": reporting.jsonable(runtime.flow_run.parameters),
        "counts": counts,
        "dispatch": dispatch,
        "model_identity": identity,
        **run_facts(),
    }
    result = publish_task(
        store,
        staged,
        staging,
        f"embed-rois {runtime.flow_run.name}: {counts['written']} written, {counts['skipped']} skipped, "
        f"{counts['failed'] + counts['no_imagery']} not written",
        metadata,
        tag,
    )
    summary = {**result, "counts": counts, "batches": len(batches), "store": store, "staging_dir": staging}
    create_markdown_artifact(
        reporting.summary_markdown(
            request,
            rows,
            result,
            store=store,
            dispatch=dispatch,
            run_name=runtime.flow_run.name,
            weights_are_random=bool(identity.get("weights_are_random")),
        ),
        key="embed-rois-summary",
        description="What was asked, written, skipped, failed and why",
    )
    create_table_artifact(rows, key="embed-rois-entries", description="One row per ROI x month")
    logger.info("done: %s", summary)
    if transient:
        raise RuntimeError(
            f"{transient} fetches failed after retries (transient errors); the other entries were committed "
            f"({result.get('snapshot_id')}); retry the run to fill them in"
        )
    return summary
