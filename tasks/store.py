"""Store tasks: one write-and-commit per run; collecting batches staged by other runs."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from rs_embed_core import pipeline


@task(name="commit-entries", cache_policy=NO_CACHE, persist_result=False, result_serializer="json")
def publish_task(
    store: str,
    staged: list[dict[str, Any]],
    staging_dir: str,
    message: str,
    metadata: dict[str, Any],
    tag: str | None = None,
) -> dict[str, Any]:
    """Write all staged entries and commit once (metadata = run facts); tag if asked.

    Not retried: a failed commit leaves the store unchanged and the run failed, and a
    retry of the run redoes this step with everything else cached or staged.
    """
    return pipeline.publish(store, staged, staging_dir=staging_dir, message=message, metadata=metadata, tag=tag)


@task(name="collect-staged", cache_policy=NO_CACHE, persist_result=False, result_serializer="json")
def collect_staged_task(batch_keys: list[str], staging_dir: str) -> list[dict[str, Any]]:
    """References of batches staged by dispatched inference runs (fails if one is missing)."""
    return pipeline.collect_staged(batch_keys, staging_dir)
