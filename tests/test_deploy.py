"""Deployment checks: prefect.yaml content, and one end-to-end run against a real Prefect server.

The integration test starts ``prefect server start`` on a free loopback port,
creates the two process work pools named in deployments/prefect.yaml, deploys
everything from that file with ``prefect deploy --all``, starts one worker per pool,
and triggers ``embed-rois`` twice through the CLI: once with inference dispatched to
the ``embed-batches`` GPU-pool deployment (``dispatch="deployment"``) and once with
local inference. Both stores must hold identical entries. Every process it starts is
stopped at the end.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PREFECT_YAML = REPO / "deployments" / "prefect.yaml"
K8S_TEMPLATE = REPO / "deployments" / "k8s-gpu-base-job-template.json"
PREFECT = str(Path(sys.executable).parent / "prefect")


def test_prefect_yaml_declares_the_deployments() -> None:
    cfg = yaml.safe_load(PREFECT_YAML.read_text())
    deps = {d["name"]: d for d in cfg["deployments"]}
    assert set(deps) == {"monthly-refresh", "embed-batches-gpu", "embed-rois"}
    monthly = deps["monthly-refresh"]
    assert monthly["schedules"] == [{"cron": "0 3 1 * *", "timezone": "UTC", "active": True}]
    assert monthly["entrypoint"] == "flows/refresh.py:monthly_refresh"
    assert monthly["parameters"]["dispatch"] == "deployment"
    assert monthly["parameters"]["inference_deployment"] == "embed-batches/embed-batches-gpu"
    gpu = deps["embed-batches-gpu"]
    assert "gpu" in gpu["work_pool"]["name"] and "CUDA_VISIBLE_DEVICES" in gpu["work_pool"]["job_variables"]["env"]
    for d in deps.values():
        path, func = d["entrypoint"].split(":")
        assert (REPO / path).is_file() and f"def {func}(" in (REPO / path).read_text()
    template = json.loads(K8S_TEMPLATE.read_text())
    container = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu_count }}"
    assert template["variables"]["properties"]["gpu_count"]["default"] == 1


def test_flows_use_the_default_inference_deployment_name() -> None:
    from flows.embed import DEFAULT_INFERENCE_DEPLOYMENT

    cfg = yaml.safe_load(PREFECT_YAML.read_text())
    names = {d["name"] for d in cfg["deployments"]}
    flow_name, dep_name = DEFAULT_INFERENCE_DEPLOYMENT.split("/")
    assert flow_name == "embed-batches" and dep_name in names


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_health(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # the process group of a process this test started
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture
def prefect_server(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A real Prefect server on a free port; yields the environment for CLI calls and workers."""
    port = _free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}",
        "PREFECT_UI_ENABLED": "false",
        "HF_HUB_OFFLINE": "1",
    }
    env.pop("PREFECT_API_URL", None)
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _wait_health(f"http://127.0.0.1:{port}/api/health", server)
        yield {**env, "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
    finally:
        _stop(server)
        log.close()


def _cli(args: list[str], env: dict[str, str], timeout: float = 300) -> str:
    out = subprocess.run([PREFECT, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise AssertionError(f"prefect {' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out.stdout


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_deploy_and_run_against_a_real_server(
    prefect_server: dict[str, str], tmp_path: Path, tiny_checkpoint: Path
) -> None:
    env = {
        **prefect_server,
        "RS_EMBED_ROIS": str(tmp_path / "rois.csv"),
        "RS_EMBED_STORE": str(tmp_path / "monthly-store"),
        "RS_EMBED_GPU_DEVICES": "",
        "RS_EMBED_WORKDIR": str(REPO),
        "RS_EMBED_CACHE_DIR": str(tmp_path / "chips"),
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "0",
    }
    (tmp_path / "rois.csv").write_text("label,lon,lat,buffer_m\na,2.30,48.80,320\nb,2.31,48.80,320\nc,2.32,48.80,320\n")
    _cli(["work-pool", "create", "rs-embed-cpu", "--type", "process"], env)
    _cli(["work-pool", "create", "rs-embed-gpu", "--type", "process"], env)
    out = _cli(["--no-prompt", "deploy", "--all", "--prefect-file", str(PREFECT_YAML)], env)
    assert "embed-rois/embed-rois" in out or "embed-rois" in out
    inspect = _cli(["deployment", "inspect", "monthly-refresh/monthly-refresh"], env)
    assert "0 3 1 * *" in inspect and "UTC" in inspect

    logs = []
    workers = []
    try:
        for pool in ("rs-embed-cpu", "rs-embed-gpu"):
            log = (tmp_path / f"worker-{pool}.log").open("w")
            logs.append(log)
            workers.append(
                subprocess.Popen(
                    [PREFECT, "worker", "start", "--pool", pool, "--type", "process"],
                    env=env,
                    cwd=tmp_path,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        params = {
            "rois": str(tmp_path / "rois.csv"),
            "months": ["2024-05", "2024-06"],
            "backend": "synthetic",
            "checkpoint": str(tiny_checkpoint),
            "device": "cpu",
            "batch_size": 2,
            "batches_per_run": 2,
            "cache_dir": str(tmp_path / "chips"),
        }
        for dispatch in ("deployment", "local"):
            run_params = {**params, "store": str(tmp_path / f"store-{dispatch}"), "dispatch": dispatch}
            out = _cli(
                [
                    "deployment",
                    "run",
                    "embed-rois/embed-rois",
                    "--params",
                    json.dumps(run_params),
                    "--watch",
                    "--watch-interval",
                    "2",
                    "--watch-timeout",
                    "400",
                ],
                env,
                timeout=450,
            )
            assert "Completed" in out, out
    except BaseException:
        for log in logs:
            log.flush()
        for p in tmp_path.glob("worker-*.log"):
            sys.stderr.write(f"--- {p.name}\n{p.read_text()[-6000:]}\n")
        raise
    finally:
        for w in workers:
            _stop(w)
        for log in logs:
            log.close()

    from rs_embed_core.store import EmbeddingStore

    dispatched = EmbeddingStore.open(str(tmp_path / "store-deployment"), create=False)
    local = EmbeddingStore.open(str(tmp_path / "store-local"), create=False)
    assert len(dispatched.entry_digests()) == 6
    assert dispatched.entry_digests() == local.entry_digests()
    meta = dispatched.history()[0]["metadata"]
    assert meta["dispatch"] == "deployment" and meta["deployment"] == "embed-rois" and meta["counts"]["written"] == 6
    a, b = dispatched.open_dataset(), local.open_dataset()
    a = a.sortby("roi")
    b = b.sortby("roi")
    for var in ("grid", "pooled", "image_embedding"):
        np.testing.assert_array_equal(np.asarray(a[var].values), np.asarray(b[var].values))
    # The dispatched run's inference happened in child runs of the GPU deployment: 6 entries / 2 per batch / 2 per run.
    worker_log = (tmp_path / "worker-rs-embed-gpu.log").read_text()
    assert worker_log.count("Completed") >= 2, worker_log[-3000:]
