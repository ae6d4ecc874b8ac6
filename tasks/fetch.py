"""Fetch task: one (ROI, window) into the chip cache, cached across flow runs.

The cache policy keys on exactly what determines the pixels: the ROI geometry (not
its label), the time window, the pixel-changing sensor settings (collection, bands,
scale, cloud filter, compositing, masking) and the provider's name, version and
settings. That is the chip cache's fetch key, prefixed with this task's own
namespace so no other task can ever share a key. The flow run id is not part of it,
so a rerun (or a UI retry) of a run does not fetch again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from prefect import runtime, task
from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from prefect.tasks import exponential_backoff
from prefect.transactions import IsolationLevel

from rs_embed_core import pipeline
from rs_embed_core.errors import TransientProviderError
from rs_embed_core.providers.base import fetch_key, resolve_backend
from rs_embed_core.specs import SensorSpec, TemporalSpec, parse_roi, spec_from_dict

FETCH_KEY_NAMESPACE = "rs-embed/fetch-chip/v1"


@dataclass
class FetchCachePolicy(CachePolicy):
    """Cache key = namespace + fetch key of (ROI geometry, window, sensor imagery settings, provider).

    Other inputs (the chip cache folder) are deliberately not part of the key. If
    chips were pruned from the chip cache after a cached fetch, inference reports the
    missing chip; rerun with ``refresh_fetch=True`` to fetch again.
    """

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        return fetch_cache_key(inputs["roi"], inputs["temporal"], inputs["sensor"], inputs["backend"])


def fetch_cache_key(roi: Any, temporal: Any, sensor: SensorSpec, backend: Any) -> str:
    """The fetch task's cache key for these inputs."""
    window = temporal if isinstance(temporal, TemporalSpec) else spec_from_dict(temporal)
    return f"{FETCH_KEY_NAMESPACE}:{fetch_key(resolve_backend(backend), parse_roi(roi), window, sensor)}"


FETCH_LOCKS_ENV = "RS_EMBED_FETCH_LOCKS"


def fetch_cache_policy(locks: str | None = None) -> CachePolicy:
    """The fetch cache policy, with cross-worker key locking when ``RS_EMBED_FETCH_LOCKS`` is set.

    Unset: two workers asking for the same chip at once both run the task; the chip
    cache's per-key file lock still makes the second wait and read the first one's
    chip (one provider call), provided the cache is on a shared POSIX filesystem with
    working locks. Set, the Prefect cache record itself is serialised
    (``isolation_level=SERIALIZABLE``): the second task run waits for the first and
    comes back ``Cached``. The value picks Prefect's lock manager:

    * a folder on a shared filesystem -> ``FileSystemLockManager`` (Prefect core);
    * ``redis://[user:password@]host[:port][/db]`` (or ``rediss://``) ->
      ``prefect_redis.locking.RedisLockManager`` (``pip install prefect-redis``).
    """
    policy = FetchCachePolicy()
    where = (os.environ.get(FETCH_LOCKS_ENV, "") if locks is None else locks).strip()
    if not where:
        return policy
    if where.startswith(("redis://", "rediss://")):
        try:
            from prefect_redis.locking import RedisLockManager
        except ImportError as exc:
            raise ImportError(f"{FETCH_LOCKS_ENV}={where!r} needs prefect-redis: pip install prefect-redis") from exc
        url = urlparse(where)
        manager: Any = RedisLockManager(
            host=url.hostname or "localhost",
            port=url.port or 6379,
            db=int(url.path.strip("/") or 0),
            username=url.username,
            password=url.password,
            ssl=url.scheme == "rediss",
        )
    else:
        root = Path(where).expanduser()
        # Keys hold "/" (the namespace), which becomes folders under the lock directory;
        # Prefect's manager does not create them, so do it here once.
        (root / FETCH_KEY_NAMESPACE).parent.mkdir(parents=True, exist_ok=True)
        manager = _file_lock_manager(root)
    return policy.configure(isolation_level=IsolationLevel.SERIALIZABLE, lock_manager=manager)


def _file_lock_manager(root: Path) -> Any:
    """Prefect's ``FileSystemLockManager``, tolerant of lock files caught mid-write.

    Prefect 3.9 writes a lock file in place (``open(path, "wb")`` then ``write``), so a
    concurrent reader can see it empty and fail with "EOF while parsing". Such a read is
    retried briefly: the holder finishes writing within milliseconds.
    """
    import asyncio
    import time

    from prefect.locking.filesystem import FileSystemLockManager

    class _Manager(FileSystemLockManager):
        def _get_lock_info(self, key: str, use_cache: bool = True) -> Any:
            for _ in range(50):
                try:
                    return super()._get_lock_info(key, use_cache=use_cache)
                except ValueError:
                    time.sleep(0.01)
            return super()._get_lock_info(key, use_cache=use_cache)

        async def _aget_lock_info(self, key: str, use_cache: bool = True) -> Any:
            for _ in range(50):
                try:
                    return await super()._aget_lock_info(key, use_cache=use_cache)
                except ValueError:
                    await asyncio.sleep(0.01)
            return await super()._aget_lock_info(key, use_cache=use_cache)

    return _Manager(root)


def retry_transient_only(task: Any, task_run: Any, state: Any) -> bool:
    """Retry transient provider errors (quota, 5xx, network); auth / bad request / no imagery fail at once."""
    return isinstance(state.data, TransientProviderError)


def _run_name() -> str:
    params = runtime.task_run.parameters
    roi, window = params["roi"], params["temporal"]
    return f"fetch {roi.get('label') or parse_roi(roi).id} {window.get('start', '')[:7]}"


@task(
    name="fetch-chip",
    task_run_name=_run_name,
    cache_policy=fetch_cache_policy(),  # read once, at import: workers configure it by environment
    persist_result=True,
    result_serializer="json",  # results are small dicts; no pickle in result storage
    retries=4,
    retry_delay_seconds=exponential_backoff(backoff_factor=5),
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_transient_only,
    tags=["fetch"],
)
def fetch_chip_task(
    roi: dict[str, Any], temporal: dict[str, Any], sensor: SensorSpec, backend: Any, cache: str | None = None
) -> dict[str, Any]:
    """Fetch one chip; returns a chip reference or a recorded no-imagery/failed outcome."""
    return pipeline.fetch_entry(roi, temporal, sensor, backend, cache)
