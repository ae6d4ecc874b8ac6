"""Planning tasks: what the store already has, what to compute, how to batch it."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from rs_embed_core import pipeline
from rs_embed_core.planning import Plan, RunRequest


@task(name="store-digests", cache_policy=NO_CACHE, persist_result=False, retries=2, retry_delay_seconds=5)
def existing_digests_task(store: str) -> dict[tuple[str, str], str]:
    """Entry digests already in the store (for skip-if-identical)."""
    return pipeline.existing_digests(store)


@task(name="plan-entries", cache_policy=NO_CACHE, persist_result=False, result_serializer="json")
def plan_task(
    request: RunRequest,
    backend: Any,
    identity: dict[str, Any],
    existing: dict[tuple[str, str], str],
    force: bool,
) -> Plan:
    """Which (ROI, window) entries to compute and which to skip."""
    return pipeline.plan_run(request, backend, identity, existing, force=force)


@task(name="make-batches", cache_policy=NO_CACHE, persist_result=False, result_serializer="json")
def batches_task(fetched: list[dict[str, Any]], request: RunRequest, identity: dict[str, Any]) -> list[dict[str, Any]]:
    """Group fetched chips into inference batches of ``request.batch_size`` forward slots."""
    return pipeline.batch_run(fetched, request, identity)
