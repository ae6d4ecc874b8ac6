"""Inference tasks: model identity and one mapped task per batch of chips.

Tagged ``gpu`` so a Prefect tag concurrency limit (``prefect concurrency-limit create
gpu 1``) caps GPU use across runs. The model is loaded once per worker process
(``rs_embed_core.models.load_model`` caches adapters), not per task. Batch results
are staged on disk and only references come back, so nothing big is pickled into
Prefect result storage.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from rs_embed_core import pipeline
from rs_embed_core.specs import OutputSpec, SensorSpec

GPU_TAG = "gpu"


@task(name="model-identity", cache_policy=NO_CACHE, persist_result=False)
def model_identity_task(sensor: SensorSpec, model: str = "remoteclip", device: str | None = None) -> dict[str, Any]:
    """Model name, architecture, weight sha256 and preprocessing path (what entry digests use)."""
    return pipeline.model_identity_for(sensor, model=model, device=device)


@task(
    name="embed-batch",
    task_run_name="embed batch {batch[key]:.12}",
    cache_policy=NO_CACHE,  # idempotence comes from the staging area (a staged batch is not recomputed)
    persist_result=False,
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
        batch, sensor=sensor, output=output, input_prep=input_prep, staging_dir=staging_dir, model=model, device=device
    )
