"""Dispatch task: run a group of inference batches as a run of the GPU deployment."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.deployments import run_deployment


@task(name="dispatch-batches", cache_policy=NO_CACHE, persist_result=False)
def dispatch_batches_task(deployment: str, parameters: dict[str, Any], poll_interval: float = 2.0) -> str:
    """Start ``deployment`` (e.g. ``embed-batches/gpu``) for a group of batches and wait for it.

    Returns the child flow run id; raises when the child run does not complete.
    """
    run = run_deployment(deployment, parameters=parameters, timeout=None, poll_interval=poll_interval, as_subflow=True)
    if run.state is None or not run.state.is_completed():
        raise RuntimeError(f"inference run {run.name} ({run.id}) of {deployment} ended {run.state and run.state.name}")
    return str(run.id)
