"""Dispatch task: run a group of inference batches as a run of the GPU deployment.

A child run whose infrastructure dies (worker or machine lost, container evicted)
ends ``Crashed``: reported by the worker when the process exits, or by the zombie
automation (deployments/automations.py) when its heartbeats stop. Only that case is
retried: the retry starts a new child run for the same batches, which finds the
batches its predecessor already staged and computes only the rest (staged batches
are keyed by content, so nothing is computed or written twice). A child that fails
in its own code fails the same way again and is not retried.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.deployments import run_deployment

DISPATCH_RETRIES = 2


class ChildRunCrashed(RuntimeError):
    """The dispatched inference run lost its infrastructure (retryable)."""


def retry_crashed_only(task: Any, task_run: Any, state: Any) -> bool:
    """Retry when the child run crashed (infrastructure), not when its code failed."""
    try:
        state.result()
    except ChildRunCrashed:
        return True
    except Exception:  # noqa: BLE001 - any other failure is final
        return False
    return False


@task(
    name="dispatch-batches",
    cache_policy=NO_CACHE,
    persist_result=False,
    result_serializer="json",
    retries=DISPATCH_RETRIES,
    retry_delay_seconds=5,
    retry_condition_fn=retry_crashed_only,
)
def dispatch_batches_task(deployment: str, parameters: dict[str, Any], poll_interval: float = 2.0) -> str:
    """Start ``deployment`` (e.g. ``embed-batches/gpu``) for a group of batches and wait for it.

    Returns the child flow run id; raises when the child run does not complete
    (:class:`ChildRunCrashed` when its infrastructure died, which is retried).
    """
    run = run_deployment(deployment, parameters=parameters, timeout=None, poll_interval=poll_interval, as_subflow=True)
    if run.state is not None and run.state.is_crashed():
        raise ChildRunCrashed(f"inference run {run.name} ({run.id}) of {deployment} crashed: {run.state.message}")
    if run.state is None or not run.state.is_completed():
        raise RuntimeError(f"inference run {run.name} ({run.id}) of {deployment} ended {run.state and run.state.name}")
    return str(run.id)
