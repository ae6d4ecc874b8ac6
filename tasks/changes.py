"""Change-report task: the top changes of a month, published as a Prefect table artifact."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from rs_embed_core.errors import StoreLookupError
from rs_embed_core.search import change_report_rows


@task(name="change-report", cache_policy=NO_CACHE, persist_result=False, result_serializer="json")
def change_report_task(
    store: str,
    month: str,
    ref: str = "main",
    vector: str = "pooled",
    k: int = 20,
    max_gap_months: int = 1,
) -> list[dict[str, Any]]:
    """Rank the ROIs of ``month`` by cosine distance to their previous month; publish the top ``k``.

    A month with no entries (nothing was written) or no previous month (the store's
    first month) publishes nothing and returns ``[]``: a report must not fail a refresh
    that committed. Mixed checkpoints still raise (the report would be meaningless).
    """
    try:
        rows = change_report_rows(store, month, vector=vector, ref=ref, k=k, max_gap_months=max_gap_months)
    except StoreLookupError as exc:
        get_run_logger().warning("no change report for %s: %s", month, exc)
        return []
    if rows:
        create_table_artifact(
            rows,
            key="monthly-changes",
            description=f"Top {len(rows)} changes of {month} vs the previous month ({vector} cosine distance, {ref})",
        )
    return rows
