"""Scheduled and bulk flows on top of ``embed_rois``: monthly refresh and backfill."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from flows.embed import DEFAULT_INFERENCE_DEPLOYMENT, embed_rois
from rs_embed_core.planning import month_range, previous_month
from rs_embed_core.specs import OutputSpec, SensorSpec, TemporalSpec
from tasks.changes import change_report_task


@flow(name="monthly-refresh", result_serializer="json")
def monthly_refresh(
    rois: list[Any] | str,
    store: str,
    month: str | None = None,
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
    inference_deployment: str = DEFAULT_INFERENCE_DEPLOYMENT,
    tag: bool = True,
) -> dict[str, Any]:
    """Embed one calendar month (default: the previous month in UTC) and tag it ``YYYY-MM``.

    Args:
        rois: the deployment's ROI list (a CSV/GeoJSON path or inline ROIs).
        store: store location.
        month: ``'YYYY-MM'``; ``None`` means the month before today (UTC).
        tag: tag the commit with the month label (a release).
        (the rest as in ``embed_rois``)
    """
    window = TemporalSpec.parse_month(month) if month else previous_month()
    label = window.label()
    get_run_logger().info("monthly refresh of %s", label)
    result = embed_rois(
        rois=rois,
        store=store,
        months=[label],
        sensor=sensor,
        output=output,
        input_prep=input_prep,
        batch_size=batch_size,
        backend=backend,
        force=force,
        dispatch=dispatch,
        checkpoint=checkpoint,
        device=device,
        cache_dir=cache_dir,
        staging_dir=staging_dir,
        tag=label if tag else None,
        inference_deployment=inference_deployment,
    )
    # The release's top changes vs the previous month, as a table artifact in the UI.
    result["changes"] = change_report_task(store, label, ref=result.get("snapshot_id") or "main")
    return result


@flow(name="backfill", result_serializer="json")
def backfill(
    rois: list[Any] | str,
    store: str,
    start: str,
    end: str,
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
    inference_deployment: str = DEFAULT_INFERENCE_DEPLOYMENT,
    tag_months: bool = False,
) -> list[dict[str, Any]]:
    """Embed every month from ``start`` to ``end`` (inclusive, ``'YYYY-MM'``), one commit per month.

    Resumable: a month that was committed is skipped entry by entry (identical
    digests) on a rerun, and fetches come from the cache, so rerunning a failed
    backfill only does the work that is missing.
    """
    months = month_range(start, end)
    logger = get_run_logger()
    logger.info("backfill of %d months: %s .. %s", len(months), months[0].label(), months[-1].label())
    results = []
    for window in months:
        label = window.label()
        results.append(
            embed_rois(
                rois=rois,
                store=store,
                months=[label],
                sensor=sensor,
                output=output,
                input_prep=input_prep,
                batch_size=batch_size,
                backend=backend,
                force=force,
                dispatch=dispatch,
                checkpoint=checkpoint,
                device=device,
                cache_dir=cache_dir,
                staging_dir=staging_dir,
                tag=label if tag_months else None,
                inference_deployment=inference_deployment,
            )
        )
    return results
