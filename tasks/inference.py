"""Inference tasks: model identity and one mapped task per batch of chips.

Two ways to cap GPU use across runs, both Prefect's own: the ``gpu`` tag (a tag
concurrency limit, ``prefect concurrency-limit create gpu 1``: whole task runs wait,
re-checked every 10 s by default), or a global concurrency limit named by
``RS_EMBED_GPU_CONCURRENCY`` in the worker's environment (``prefect gcl create gpu
--limit 1``; held around the forward pass only, lease-based, so a dead worker's slot
comes back when its lease expires; hand-off ~1 s). Unset, no global limit is asked for. The model is loaded once per worker process
(``rs_embed_core.models.load_model`` caches adapters), not per task. Batch results
are staged on disk and only references come back, so nothing big is pickled into
Prefect result storage.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.sync import concurrency

from rs_embed_core import pipeline
from rs_embed_core.specs import OutputSpec, SensorSpec

GPU_TAG = "gpu"
GPU_CONCURRENCY_ENV = "RS_EMBED_GPU_CONCURRENCY"


def gpu_slot() -> Callable[[], AbstractContextManager[Any]] | None:
    """A factory for one slot of the global concurrency limit named by ``RS_EMBED_GPU_CONCURRENCY``, or None."""
    name = os.environ.get(GPU_CONCURRENCY_ENV, "").strip()
    if not name:
        return None
    # strict: a limit that was asked for but not created is a configuration error, not "no limit".
    return lambda: concurrency(name, occupy=1, strict=True)


@task(name="model-identity", cache_policy=NO_CACHE, persist_result=False, result_serializer="json")
def model_identity_task(sensor: SensorSpec, model: str = "remoteclip", device: str | None = None) -> dict[str, Any]:
    """Model name, architecture, weight sha256 and preprocessing path (what entry digests use)."""
    return pipeline.model_identity_for(sensor, model=model, device=device)


@task(
    name="embed-batch",
    task_run_name="embed batch {batch[key]:.12}",
    cache_policy=NO_CACHE,  # idempotence comes from the staging area (a staged batch is not recomputed)
    persist_result=False,
    result_serializer="json",
    tags=[GPU_TAG],
)
def infer_batch_task(
    batch: dict[str, Any],
    sensor: SensorSpec,
    output: OutputSpec,
    input_prep: str,
    staging_dir: str,
    model: str = "remoteclip",
    device: str | None = None,
) -> list[dict[str, Any]]:
    """Embed one batch of chips and stage the results; returns staged-entry references."""
    return pipeline.infer_batch(
        batch,
        sensor=sensor,
        output=output,
        input_prep=input_prep,
        staging_dir=staging_dir,
        model=model,
        device=device,
        slot=gpu_slot(),
    )
