"""Scale-out: one embed-rois run dispatching inference to two workers of the GPU pool, store on S3.

Everything runs on 127.0.0.1 with real components: ``prefect server start``, a
process work pool ``rs-embed-gpu`` with TWO workers (``--limit 1`` each, so both get
child runs), the ``embed-batches-gpu`` deployment from deployments/prefect.yaml, a
moto S3 server holding the Icechunk store, the synthetic provider and a tiny random
checkpoint. The parent ``embed-rois`` run is a separate process (as on a CPU worker)
talking to the same server.

* Both workers run child ``embed-batches`` runs; the children only stage; the parent
  commits once; the store equals a single-process run (values compared).
* A worker (and its flow-run process) is SIGKILLed mid-run: its child run stops
  heartbeating, the zombie automation (deployments/automations.py) marks it Crashed,
  the dispatch task's retry runs the share again on the surviving worker, and the
  run completes with one commit and no batch computed twice.

One server and one S3 server serve the whole module (about 3-4 minutes on 2 cores).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _servers import moto_s3
from _servers import s3_env as s3_env_for
from test_deploy import PREFECT, PREFECT_YAML, REPO, _cli, _free_port, _stop, _wait_health

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

POOL = "rs-embed-gpu"
DEPLOYMENT = "embed-batches/embed-batches-gpu"
MONTH = "2024-05"
# Zombie detection: heartbeats every 30 s (Prefect's minimum); Crashed after 45 s of silence.
HEARTBEAT_S = 30
ZOMBIE_WITHIN_S = 45

PARENT = """
import json, sys
from flows.embed import embed_rois
params = json.loads(sys.argv[1])
print("RESULT " + json.dumps(embed_rois(**params), default=str), flush=True)
"""


# ---------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def s3_env() -> Iterator[dict[str, str]]:
    """A moto S3 server on loopback with bucket ``embeddings``; yields the env that reaches it."""
    with moto_s3() as (endpoint, _), pytest.MonkeyPatch.context() as mp:  # this process reads the store too
        env = s3_env_for(endpoint)
        for k, v in env.items():
            mp.setenv(k, v)
        mp.delenv("AWS_SESSION_TOKEN", raising=False)
        yield env


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, s3_env: dict[str, str]) -> Iterator[dict[str, Any]]:
    """Prefect server + GPU pool + embed-batches deployment + zombie automation + two workers."""
    root = tmp_path_factory.mktemp("scale")
    port = _free_port()
    env = {
        **os.environ,
        **s3_env,
        "PREFECT_HOME": str(root / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{root / 'prefect.db'}",
        "PREFECT_UI_ENABLED": "false",
        "HF_HUB_OFFLINE": "1",
        "RS_EMBED_WORKDIR": str(REPO),
        "RS_EMBED_GPU_DEVICES": "",
        "RS_EMBED_CACHE_DIR": str(root / "shared" / "chips"),  # the "shared filesystem" of the workers
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "0",
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_S),
        "PREFECT_LOGGING_LEVEL": "INFO",
    }
    env.pop("PREFECT_API_URL", None)
    server_log = (root / "server.log").open("w")
    server = subprocess.Popen(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=server_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    workers: dict[str, subprocess.Popen] = {}
    logs = []
    try:
        _wait_health(f"http://127.0.0.1:{port}/api/health", server)
        env["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
        _cli(["work-pool", "create", POOL, "--type", "process"], env)
        _cli(["--no-prompt", "deploy", "--name", "embed-batches-gpu", "--prefect-file", str(PREFECT_YAML)], env)
        subprocess.run(
            [sys.executable, str(REPO / "deployments" / "automations.py"), "--within", str(ZOMBIE_WITHIN_S)],
            env=env,
            cwd=REPO,
            check=True,
            capture_output=True,
            timeout=120,
        )
        for name in ("gpu-w1", "gpu-w2"):
            log = (root / f"worker-{name}.log").open("w")
            logs.append(log)
            workers[name] = subprocess.Popen(
                [PREFECT, "worker", "start", "--pool", POOL, "--type", "process", "--name", name, "--limit", "1"],
                env=env,
                cwd=root,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        yield {"env": env, "root": root, "workers": workers, "api": env["PREFECT_API_URL"]}
    finally:
        for w in workers.values():
            _stop(w)
        for log in logs:
            log.close()
        _stop(server)
        server_log.close()


# ---------------------------------------------------------------------------------- helpers


def _api(api: str, path: str, body: dict[str, Any] | None = None) -> Any:
    req = urllib.request.Request(
        f"{api}{path}",
        data=json.dumps(body or {}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def _child_runs(api: str) -> dict[str, dict[str, Any]]:
    """Flow runs of the embed-batches deployment, by id."""
    deps = _api(api, "/deployments/filter", {"deployments": {"name": {"any_": ["embed-batches-gpu"]}}})
    runs = _api(api, "/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [deps[0]["id"]]}}, "limit": 200})
    return {r["id"]: r for r in runs}


def _worker_of(root: Path, run_id: str) -> str | None:
    """Which worker submitted a flow run (from the workers' own logs)."""
    for name in ("gpu-w1", "gpu-w2"):
        if f"submitting flow run '{run_id}'" in (root / f"worker-{name}.log").read_text():
            return name
    return None


def _rois(n: int, lon0: float) -> list[list[float]]:
    return [[lon0 + 0.01 * i, 48.8, 320.0] for i in range(n)]


def _params(rois: list[list[float]], store: str, staging: Path, checkpoint: Path, batches_per_run: int) -> dict:
    return {
        "rois": rois,
        "months": [MONTH],
        "store": store,
        "backend": "synthetic",
        "checkpoint": str(checkpoint),
        "device": "cpu",
        "batch_size": 1,
        "dispatch": "deployment",
        "inference_deployment": DEPLOYMENT,
        "batches_per_run": batches_per_run,
        "staging_dir": str(staging),
    }


def _start_parent(cluster: dict[str, Any], params: dict[str, Any], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", PARENT, json.dumps(params)],
        env=cluster["env"],
        cwd=REPO,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _finish_parent(proc: subprocess.Popen, log: Path, cluster: dict[str, Any], timeout: float) -> dict[str, Any]:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop(proc)
    out = log.read_text()
    if proc.returncode != 0 or "RESULT " not in out:
        for p in sorted(cluster["root"].glob("worker-*.log")):
            sys.stderr.write(f"--- {p.name}\n{p.read_text()[-5000:]}\n")
        raise AssertionError(f"parent run ended {proc.returncode}:\n{out[-8000:]}")
    return json.loads(out.split("RESULT ", 1)[1].splitlines()[0])


def _reference_store(rois: list[list[float]], checkpoint: Path, tmp: Path) -> Any:
    """The same work in one process (no Prefect), into a local store."""
    from rs_embed_core.pipeline import run_direct
    from rs_embed_core.planning import build_request
    from rs_embed_core.store import EmbeddingStore

    request = build_request(rois, months=[MONTH], batch_size=1, checkpoint=str(checkpoint))
    run_direct(
        request, store=tmp / "ref-store", staging_dir=tmp / "ref-staging", backend="synthetic", cache=tmp / "ref-chips"
    )
    return EmbeddingStore.open(str(tmp / "ref-store"), create=False)


def _assert_same_entries(store: Any, reference: Any) -> None:
    assert store.entry_digests() == reference.entry_digests()
    a, b = store.open_dataset().sortby("roi"), reference.open_dataset().sortby("roi")
    assert list(a["roi"].values) == list(b["roi"].values)
    assert bool(a["present"].values.all())
    for var in ("grid", "pooled", "image_embedding"):
        np.testing.assert_array_equal(np.asarray(a[var].values), np.asarray(b[var].values))


def _computed(staging: Path) -> list[str]:
    log = staging / "computed.log"
    return log.read_text().split() if log.exists() else []


# ---------------------------------------------------------------------------------- tests


def test_one_run_uses_both_workers_and_commits_once(
    cluster: dict[str, Any], tiny_checkpoint: Path, tmp_path: Path
) -> None:
    from rs_embed_core.store import EmbeddingStore

    store_loc = f"s3://embeddings/scale/{uuid.uuid4().hex[:8]}"
    store = EmbeddingStore.open(store_loc)  # created empty first: every later version is the run's
    before = [h["snapshot_id"] for h in store.history()]
    rois = _rois(6, 2.30)
    staging = tmp_path / "staging"
    known = set(_child_runs(cluster["api"]))
    log = tmp_path / "parent.log"
    # 6 batches of 1 entry, 2 batches per child run -> 3 child runs over 2 workers with --limit 1.
    proc = _start_parent(cluster, _params(rois, store_loc, staging, tiny_checkpoint, 2), log)
    summary = _finish_parent(proc, log, cluster, timeout=300)

    children = {k: v for k, v in _child_runs(cluster["api"]).items() if k not in known}
    assert len(children) == 3 and all(c["state_type"] == "COMPLETED" for c in children.values())
    by_worker = {cid: _worker_of(cluster["root"], cid) for cid in children}
    assert set(by_worker.values()) == {"gpu-w1", "gpu-w2"}, by_worker  # both workers ran child runs
    assert len({c["infrastructure_pid"] for c in children.values()}) == 3  # three separate processes

    store = EmbeddingStore.open(store_loc, create=False)
    history = store.history()
    new = [h for h in history if h["snapshot_id"] not in before]
    assert len(new) == 1 and new[0]["snapshot_id"] == summary["snapshot_id"]  # the parent's commit only
    meta = new[0]["metadata"]
    assert meta["dispatch"] == "deployment" and meta["counts"]["written"] == 6
    assert sorted(_computed(staging)) == sorted(set(_computed(staging))) and len(_computed(staging)) == 6
    _assert_same_entries(store, _reference_store(rois, tiny_checkpoint, tmp_path))


def _kill_first_running_child(cluster: dict[str, Any], known: set[str], stop: threading.Event, out: dict) -> None:
    """SIGKILL the worker (and its flow-run process) of the first child run seen Running for >= 3 s."""
    seen: dict[str, float] = {}
    while not stop.is_set():
        for cid, run in _child_runs(cluster["api"]).items():
            if cid in known or run["state_type"] != "RUNNING":
                continue
            seen.setdefault(cid, time.monotonic())
            worker = _worker_of(cluster["root"], cid)
            # Wait a little so the run has sent its first heartbeat and is mid-way through its batches.
            if worker and time.monotonic() - seen[cid] >= 3:
                proc = cluster["workers"][worker]
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                pid = str(run.get("infrastructure_pid") or "").rsplit(":", 1)[-1]
                if pid.isdigit():  # the flow-run process may live in its own session
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
                proc.wait(timeout=10)
                out.update(run_id=cid, worker=worker)
                return
        time.sleep(0.5)


def test_killing_a_worker_mid_run_still_completes_without_duplicates(
    cluster: dict[str, Any], tiny_checkpoint: Path, tmp_path: Path
) -> None:
    from rs_embed_core.store import EmbeddingStore

    store_loc = f"s3://embeddings/scale/{uuid.uuid4().hex[:8]}"
    store = EmbeddingStore.open(store_loc)
    before = [h["snapshot_id"] for h in store.history()]
    rois = _rois(8, 2.40)
    staging = tmp_path / "staging"
    known = set(_child_runs(cluster["api"]))
    log = tmp_path / "parent.log"
    killed: dict[str, str] = {}
    stop = threading.Event()
    killer = threading.Thread(target=_kill_first_running_child, args=(cluster, known, stop, killed), daemon=True)
    # 8 batches of 1 entry, 2 per child run -> 4 child runs.
    proc = _start_parent(cluster, _params(rois, store_loc, staging, tiny_checkpoint, 2), log)
    killer.start()
    try:
        summary = _finish_parent(proc, log, cluster, timeout=330)
    finally:
        stop.set()
        killer.join(timeout=10)
    assert killed, "no child run was seen running"

    children = {k: v for k, v in _child_runs(cluster["api"]).items() if k not in known}
    crashed = children[killed["run_id"]]
    assert crashed["state_type"] == "CRASHED"
    assert "No heartbeat" in ((crashed.get("state") or {}).get("message") or "")  # the zombie automation did it
    completed = [c for c in children.values() if c["state_type"] == "COMPLETED"]
    assert len(completed) == 4  # the crashed share was run again by a new child run
    assert {_worker_of(cluster["root"], c["id"]) for c in completed} <= {"gpu-w1", "gpu-w2"}

    store = EmbeddingStore.open(store_loc, create=False)
    new = [h for h in store.history() if h["snapshot_id"] not in before]
    assert len(new) == 1 and new[0]["snapshot_id"] == summary["snapshot_id"]
    assert new[0]["metadata"]["counts"]["written"] == 8
    computed = _computed(staging)
    assert len(computed) == len(set(computed)) == 8  # no batch computed twice
    assert not re.search(r"duplicate", log.read_text(), re.I)
    _assert_same_entries(store, _reference_store(rois, tiny_checkpoint, tmp_path))


LOCKED_FETCH = """
import json, sys
from prefect import flow
from prefect.locking.filesystem import FileSystemLockManager
from tasks.fetch import fetch_chip_task
from rs_embed_core.specs import SensorSpec, TemporalSpec

@flow
def two_fetches_of_one_chip():
    roi = {"type": "PointBuffer", "lon": 2.5, "lat": 48.8, "buffer_m": 320.0}
    window = TemporalSpec.parse_month("2024-07").to_dict()
    futs = [fetch_chip_task.submit(roi, window, SensorSpec(), "synthetic", sys.argv[1]) for _ in range(2)]
    return [(f.result()["chip"]["key"], f.state.name) for f in futs]

policy = fetch_chip_task.cache_policy
print("RESULT " + json.dumps({
    "isolation": str(policy.isolation_level), "manager": isinstance(policy.lock_manager, FileSystemLockManager),
    "runs": two_fetches_of_one_chip()}))
"""


def test_fetch_cache_records_are_locked_across_workers_by_configuration(
    cluster: dict[str, Any], tmp_path: Path
) -> None:
    """RS_EMBED_FETCH_LOCKS=<shared folder>: two concurrent fetches of one chip -> one runs, one is Cached."""
    env = {**cluster["env"], "RS_EMBED_FETCH_LOCKS": str(tmp_path / "locks")}
    out = subprocess.run(
        [sys.executable, "-c", LOCKED_FETCH, str(tmp_path / "chips")],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0 and "RESULT " in out.stdout, out.stdout[-3000:] + out.stderr[-3000:]
    res = json.loads(out.stdout.split("RESULT ", 1)[1].splitlines()[0])
    assert res["isolation"].endswith("SERIALIZABLE") and res["manager"] is True
    keys, states = zip(*res["runs"], strict=True)
    assert len(set(keys)) == 1
    assert sorted(states) == ["Cached", "Completed"], states


def test_gpu_global_concurrency_limit_is_taken_when_configured(
    cluster: dict[str, Any], tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """RS_EMBED_GPU_CONCURRENCY=<gcl>: every computed batch holds a slot of that global limit (events say so)."""
    name = f"gpu-{uuid.uuid4().hex[:6]}"
    _cli(["gcl", "create", name, "--limit", "1"], cluster["env"])
    env = {**cluster["env"], "RS_EMBED_GPU_CONCURRENCY": name}
    params = {**_params(_rois(2, 2.60), str(tmp_path / "store"), tmp_path / "staging", tiny_checkpoint, 1)}
    params["dispatch"] = "local"
    out = subprocess.run(
        [sys.executable, "-c", PARENT, json.dumps(params)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0 and "RESULT " in out.stdout, out.stdout[-3000:] + out.stderr[-3000:]
    events: list[dict[str, Any]] = []
    for _ in range(20):  # events reach the server asynchronously
        page = _api(
            cluster["api"],
            "/events/filter",
            {"filter": {"event": {"prefix": ["prefect.concurrency-limit.acquired"]}}, "limit": 50},
        )
        events = [e for e in page["events"] if e["resource"].get("prefect.resource.name") == name]
        if len(events) >= 2:
            break
        time.sleep(1)
    assert len(events) == 2  # two batches of one entry, one slot each
