"""Security hygiene: secrets never leak, TLS stays verified, user text cannot escape or inject, no pickle.

* Secrets: runs with fake credentials in the environment (AWS keys and session token,
  an HF token, an Earth Engine service-account key file) through the real command line
  and flow (Prefect test server, store on a local S3 server), then every output is
  searched: captured stdout/stderr, every log record, the Prefect server's flow-run
  parameters, logs and artifacts, the store's commit metadata and every string
  variable, and every file under the chip cache, staging area, Prefect home and the S3
  bucket.
* TLS: in a fresh interpreter, ``import rshf`` switches certificate checks off for the
  process (shown against a local HTTPS server with a self-signed certificate); our
  model loading path switches them back on.
* User text: ROI labels (and the ``id``/``name`` columns, which are label aliases)
  never become paths, so they cannot escape the store, cache or staging folders or the
  quicklook folder; labels in the run summary markdown must not inject markup.
* Pickle: cached chips and staged entries holding pickled objects are refused without
  being unpickled; Prefect's result records are JSON.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import pickle
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest
from _servers import moto_s3

pytestmark = pytest.mark.timeout(300)

SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIAFAKEACCESSKEY7Q2W",
    "AWS_SECRET_ACCESS_KEY": "fake-aws-secret-9f8e7d6c5b4a3921",
    "AWS_SESSION_TOKEN": "fake-session-token-5a4b3c2d1e0f",
    "HF_TOKEN": "hf_fakeHuggingFaceToken0123456789",
}
KEY_MATERIAL = "FAKEPRIVATEKEYMATERIAL0123456789abcdefXYZ"
KEY_ID = "fakeprivatekeyid0a1b2c3d4e5f"
NEEDLES = [*SECRETS.values(), KEY_MATERIAL, KEY_ID]


# ---------------------------------------------------------------------- fixtures


@pytest.fixture()
def prefect_home(prefect_harness):
    """The session's Prefect test server (tests/conftest.py); its PREFECT_HOME holds result storage."""
    return prefect_harness


@pytest.fixture()
def moto_endpoint(monkeypatch):
    with moto_s3(SECRETS["AWS_ACCESS_KEY_ID"], SECRETS["AWS_SECRET_ACCESS_KEY"]) as (endpoint, client):
        monkeypatch.setenv("RS_EMBED_S3_ENDPOINT", endpoint)
        monkeypatch.setenv("AWS_REGION", "us-east-1")
        for key, value in SECRETS.items():
            monkeypatch.setenv(key, value)
        yield client


class _Collect(logging.Handler):
    """Every log record, formatted with its traceback."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record) + repr(getattr(record, "__dict__", {})))


def _cli(*args: str) -> tuple[int, str, str]:
    from flows.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def _leaks(text: str) -> list[str]:
    return [n for n in NEEDLES if n in text]


def _files_text(*roots: Path) -> str:
    parts = []
    for root in roots:
        for p in Path(root).rglob("*"):
            if p.is_file():
                parts.append(p.read_bytes().decode("latin-1"))
    return "\n".join(parts)


async def _server_text() -> str:
    """Flow-run parameters, logs and artifacts as the Prefect server holds them."""
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        runs = await client.read_flow_runs()
        logs = await client.read_logs()
        artifacts = await client.read_artifacts()
    parts = [json.dumps(r.parameters, default=str) + str(r.name) for r in runs]
    parts += [log.message for log in logs]
    parts += [json.dumps(a.data, default=str) + str(a.description) for a in artifacts]
    return "\n".join(parts)


# ---------------------------------------------------------------------- secrets


@pytest.mark.slow
def test_no_secret_reaches_logs_outputs_artifacts_provenance_or_commit_metadata(
    tmp_path, tiny_checkpoint, prefect_home, moto_endpoint, monkeypatch, capfd
):
    import anyio

    from flows.embed import embed_rois
    from rs_embed_core.store import EmbeddingStore, open_embeddings

    key_file = tmp_path / "ee-key.json"
    key_file.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "fake-project",
                "private_key_id": KEY_ID,
                "private_key": f"-----BEGIN PRIVATE KEY-----\n{KEY_MATERIAL}\n-----END PRIVATE KEY-----\n",
                "client_email": "embedder@fake-project.iam.gserviceaccount.com",
                "token_uri": "https://oauth2.googleapis.com/token",
            }
        )
    )
    monkeypatch.setenv("EE_SERVICE_ACCOUNT_KEY", str(key_file))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    monkeypatch.setenv("EE_PROJECT", "fake-project")
    collect = _Collect()
    loggers = [logging.getLogger(), logging.getLogger("prefect")]
    for lg in loggers:
        lg.addHandler(collect)
    store = f"s3://embeddings/sec/{uuid.uuid4().hex[:8]}"
    staging, chips = tmp_path / "staging", tmp_path / "chips"
    monkeypatch.setenv("RS_EMBED_STAGING_DIR", str(staging))
    try:
        # 1. The command line, verbose, on S3 with every credential set: writes two entries.
        code, out, err = _cli(
            "--verbose", "embed", "--lon", "2.30", "--lat", "48.80", "--buffer", "320", "--label", "site",
            "--month", "2024-05,2024-06", "--store", store, "--backend", "synthetic", "--checkpoint",
            str(tiny_checkpoint), "--cache-dir", str(chips), "--device", "cpu", "--json",
        )  # fmt: skip
        assert code == 0, err
        assert json.loads(out)["counts"]["written"] == 2
        # 2. Earth Engine with the (unusable) key file: a clear auth error that names the file, not its content.
        code2, out2, err2 = _cli(
            "--verbose", "embed", "--lon", "2.30", "--lat", "48.80", "--buffer", "320", "--month", "2024-05",
            "--store", store, "--backend", "gee", "--checkpoint", str(tiny_checkpoint),
        )  # fmt: skip
        assert code2 == 1 and "ee-key.json" in err2 and "service-account" in err2
        # 3. The flow itself with backend "gee": the failure is recorded per ROI, in logs and artifacts.
        res = embed_rois(
            rois=[{"lon": 2.31, "lat": 48.80, "buffer_m": 320, "label": "gee-site"}],
            store=store,
            months=["2024-05"],
            backend="gee",
            checkpoint=str(tiny_checkpoint),
            device="cpu",
            cache_dir=str(chips),
        )
        assert res["counts"]["failed"] == 1
    finally:
        for lg in loggers:
            lg.removeHandler(collect)
    captured = capfd.readouterr()

    outputs = {
        "cli stdout/stderr": out + err + out2 + err2,
        "process stdout/stderr": captured.out + captured.err,
        "log records": "\n".join(collect.lines),
        "prefect server (parameters, logs, artifacts)": anyio.run(_server_text),
    }
    st = EmbeddingStore.open(store, create=False)
    outputs["commit metadata"] = json.dumps(st.history(), default=str)
    ds = open_embeddings(store).load()
    outputs["store variables and attributes"] = "\n".join(
        [json.dumps(ds.attrs, default=str)]
        + [
            str(v.values.tolist()) + json.dumps(v.attrs, default=str)
            for v in ds.variables.values()
            if v.dtype.kind in "OUS"
        ]
    )
    outputs["files (chip cache, staging, prefect home)"] = _files_text(chips, staging, prefect_home)
    objects = moto_endpoint.list_objects_v2(Bucket="embeddings").get("Contents", [])
    assert objects
    outputs["S3 objects"] = "\n".join(
        moto_endpoint.get_object(Bucket="embeddings", Key=o["Key"])["Body"].read().decode("latin-1") for o in objects
    )
    # The searches are not vacuous: the runs really happened and were captured.
    assert (
        "site" in outputs["store variables and attributes"]
        and "gee-site" in outputs["prefect server (parameters, logs, artifacts)"]
    )
    assert "EarthEngineAuthError" in outputs["prefect server (parameters, logs, artifacts)"]
    for where, text in outputs.items():
        assert not _leaks(text), f"secret(s) {_leaks(text)} found in {where}"
    # Prefect result storage (fetch cache records, failed runs' exceptions) holds JSON, never pickle.
    records = [p for p in (prefect_home / "storage").rglob("*") if p.is_file()]
    assert records
    for rec in records:
        data = json.loads(rec.read_text())  # JSON parses: no pickle anywhere in result storage
        if "metadata" in data:  # a result record (failure states are stored as bare exception JSON)
            assert data["metadata"]["serializer"]["type"] == "json", rec


# ---------------------------------------------------------------------- TLS


TLS_PROBE = textwrap.dedent(
    """
    import http.server, json, ssl, sys, threading, urllib.request
    cert, key, ckpt = sys.argv[1:4]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    httpd = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"https://127.0.0.1:{httpd.server_address[1]}/"

    def probe():
        try:  # a fresh opener each time: urlopen's cached one keeps the context it was built with
            urllib.request.build_opener().open(url, timeout=10).read()
            return "accepted"
        except Exception as exc:
            return "refused" if "CERTIFICATE_VERIFY_FAILED" in str(exc) else f"other: {exc!r}"

    out = {"before": probe()}
    import rshf  # noqa: F401  (switches verification off process-wide)
    out["after_rshf"] = probe()
    from rs_embed_core.models import load_model
    model = load_model("remoteclip", checkpoint=ckpt, device="cpu")
    out["after_load"] = probe()
    c = ssl._create_default_https_context()
    out["verify_mode"] = int(c.verify_mode)
    out["check_hostname"] = c.check_hostname
    httpd.shutdown()
    print("TLS " + json.dumps(out))
    """
)


@pytest.mark.slow
def test_tls_verification_is_on_after_rshf_is_loaded(tmp_path, tiny_checkpoint):
    import ssl

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    res = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=127.0.0.1"],
        capture_output=True, text=True,
    )  # fmt: skip
    if res.returncode != 0:
        pytest.skip(f"openssl cannot make a test certificate: {res.stderr[-200:]}")
    proc = subprocess.run(
        [sys.executable, "-c", TLS_PROBE, str(cert), str(key), str(tiny_checkpoint)],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("TLS ")), None)
    assert line, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = json.loads(line[4:])
    assert out["before"] == "refused"  # a self-signed certificate is refused by default
    assert out["after_rshf"] == "accepted"  # rshf's import switches checks off: the hazard is real
    assert out["after_load"] == "refused"  # our loading path switches them back on
    assert out["verify_mode"] == int(ssl.CERT_REQUIRED) and out["check_hostname"] is True


# ---------------------------------------------------------------------- user text: paths and markdown

HOSTILE_LABELS = [
    "../../../../escaped-label",
    "/tmp/absolute-label",
    "..",
    "a/../../b",
    "x | injected | cells | here | !",
    "[click me](javascript:alert(1))",
    "<img src=x onerror=alert(1)>",
    "# heading **bold** `code`",
]


def _snapshot_tree(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def test_hostile_labels_never_become_paths(tmp_path, tiny_checkpoint):
    from rs_embed_core.pipeline import run_direct
    from rs_embed_core.planning import build_request
    from rs_embed_core.quicklook import make_quicklooks
    from rs_embed_core.store import open_embeddings

    work = tmp_path / "work" / "deep" / "deeper"
    work.mkdir(parents=True)
    rows = ["lon,lat,buffer_m,id"] + [
        f'{2.30 + 0.01 * i:.2f},48.80,320,"{label}"' for i, label in enumerate(HOSTILE_LABELS)
    ]
    csv = work / "rois.csv"
    csv.write_text("\n".join(rows) + "\n")
    req = build_request(str(csv), months=["2024-05"], checkpoint=str(tiny_checkpoint), batch_size=8)
    assert [r.label for r in req.rois] == HOSTILE_LABELS and all(r.id.startswith("pb-") for r in req.rois)
    before = _snapshot_tree(tmp_path)
    store, staging, chips = work / "store", work / "staging", work / "chips"
    out = run_direct(req, store=store, staging_dir=staging, backend="synthetic", cache=chips, device="cpu")
    assert out["counts"]["written"] == len(HOSTILE_LABELS)
    ds = open_embeddings(str(store)).load()
    assert sorted(ds["roi_label"].values.tolist()) == sorted(HOSTILE_LABELS)  # kept as data, verbatim
    quick = work / "quicklooks"
    for label in HOSTILE_LABELS[:4]:
        make_quicklooks(ds, label, "2024-05", quick, cache=chips, backend="synthetic")
    created = _snapshot_tree(tmp_path) - before
    allowed = (store, Path(str(store) + ".lock"), staging, chips, quick)
    strays = [p for p in created if not any(p == a or a in p.parents for a in allowed)]
    assert not strays, strays
    assert not list(tmp_path.rglob("escaped-label*")) and not Path("/tmp/absolute-label").exists()
    assert all(p.parent == quick for p in quick.iterdir())


def _md_table_rows(md: str) -> list[list[str]]:
    """Cells of the markdown table rows, split on unescaped pipes."""
    import re

    rows = []
    for line in md.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]])
    return rows


def test_labels_cannot_inject_markdown_into_the_run_summary():
    import re

    from rs_embed_core import reporting
    from rs_embed_core.planning import Plan, WorkItem, build_request
    from rs_embed_core.specs import PointBuffer, TemporalSpec

    rois = [PointBuffer(2.30 + 0.01 * i, 48.8, 320, label=label) for i, label in enumerate(HOSTILE_LABELS)]
    req = build_request(rois, months=["2024-05"])
    items = [WorkItem(r, TemporalSpec.month(2024, 5), f"{i:064x}") for i, r in enumerate(rois)]
    outcomes = {i.key: {"status": "failed", "reason": f"no scene for {i.roi.label}"} for i in items}
    rows = reporting.outcome_rows(Plan(tuple(items), ()), outcomes, set())
    md = reporting.summary_markdown(req, rows, {"snapshot_id": None}, store="s", dispatch="local")
    table = _md_table_rows(md)
    assert table[0] == ["ROI", "label", "month", "status", "reason"]
    assert len(table) == 1 + len(HOSTILE_LABELS) and all(len(r) == 5 for r in table), table
    for bad in ("<img", "\n# heading", "**bold**", "`code`"):
        assert bad not in md, bad
    assert not re.search(r"(?<!\\)\]\(javascript:", md)  # a link only where "](" is not escaped


# ---------------------------------------------------------------------- no pickle


class _Boom:
    """Unpickling this object runs code (writes a marker file): what a hostile cache file could do."""

    marker = ""

    def __reduce__(self):  # noqa: ANN204
        return (Path(self.marker).write_text, ("unpickled!",))


def _hostile_npz(marker: Path, replace: str, **arrays: np.ndarray) -> bytes:
    """``arrays`` saved as an npz whose ``replace`` member is a pickled object array (the payload)."""
    _Boom.marker = str(marker)
    evil = np.empty(1, dtype=object)
    evil[0] = _Boom()
    buf = io.BytesIO()
    np.savez(buf, **{**arrays, replace: evil})
    data = buf.getvalue()
    pickle.loads(pickle.dumps(_Boom()))  # the payload really runs code when unpickled...
    assert marker.exists()
    marker.unlink()  # ...so a marker after the reads below means something unpickled it
    return data


def test_cached_chips_and_staged_entries_are_read_without_pickle(tmp_path, tiny_checkpoint):
    import hashlib

    from rs_embed_core.cache import ChipCache, load_chip
    from rs_embed_core.errors import CacheError
    from rs_embed_core.providers.synthetic import SyntheticProvider
    from rs_embed_core.specs import PointBuffer, SensorSpec, TemporalSpec
    from rs_embed_core.staging import StagingArea

    marker = tmp_path / "marker"
    cache = ChipCache(tmp_path / "chips")
    provider = SyntheticProvider(seed=3)
    roi, month = PointBuffer(2.3, 48.8, 320), TemporalSpec.month(2024, 5)
    ref = cache.fetch_ref(provider, roi, month, SensorSpec())
    with np.load(ref.path) as z:
        original = {k: z[k] for k in z.files}
    # A hostile file with a matching checksum everywhere (the attacker can write the cache folder).
    data = _hostile_npz(marker, "dn", **original)
    Path(ref.path).write_bytes(data)
    side = Path(ref.path).with_suffix(".json")
    info = json.loads(side.read_text())
    info["sha256"] = hashlib.sha256(data).hexdigest()
    side.write_text(json.dumps(info))
    hostile_ref = {**ref.to_dict(), "sha256": info["sha256"]}
    # Loading by reference decodes with allow_pickle=False: refused, the object array never unpickled.
    with pytest.raises(CacheError, match="pickle"):
        load_chip(hostile_ref)
    assert cache.get(ref.key) is None  # through the cache: detected, discarded
    assert not Path(ref.path).exists() and not marker.exists()
    chip = cache.fetch(provider, roi, month, SensorSpec())  # and fetched again
    assert chip.dn.dtype == np.uint16 and not marker.exists()

    # Staged entries: same story.
    from rs_embed_core.embedding import Embedding

    area = StagingArea(tmp_path / "staging")
    emb = Embedding(
        data=np.ones(4, np.float32),
        meta={"roi_id": "pb-x", "time": "2024-05-01", "entry_digest": "d"},
        grid=None,
        pooled=np.ones(4, np.float32),
    )
    (sref,) = area.stage("ab" * 32, [emb])
    npz = area.batch_dir("ab" * 32) / "0.npz"
    data = _hostile_npz(marker, "pooled", pooled=np.ones(4, np.float32))
    npz.write_bytes(data)
    with pytest.raises((ValueError, CacheError), match="pickle"):
        area.load({**sref.to_dict(), "sha256": hashlib.sha256(data).hexdigest()})
    assert not marker.exists()


def test_no_pickle_readers_in_the_code():
    root = Path(__file__).resolve().parents[1]
    for folder in ("rs_embed_core", "tasks", "flows"):
        for path in (root / folder).rglob("*.py"):
            text = path.read_text()
            for bad in (
                "allow_pickle=True",
                "import pickle",
                "cloudpickle",
                "torch.load(",
                'result_serializer="pickle"',
            ):
                assert bad not in text, f"{bad} in {path}"
