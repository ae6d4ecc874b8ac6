"""The ``rs-embed`` command, through its real entry point.

Most calls go through ``flows.cli.main`` in this process (the function the console
script calls), so the flow runs against one ``prefect_test_harness`` for the module;
a few go through the installed ``.venv/bin/rs-embed`` in a subprocess to check the
entry point itself. Real components throughout: synthetic provider, chip cache, a
tiny random checkpoint, the Icechunk store.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("prefect_harness")]

MONTHS = ("2024-05", "2024-06")


@dataclass
class Result:
    code: int
    out: str
    err: str


def cli(*args: str) -> Result:
    """Run ``rs-embed ARGS`` in this process; returns the exit code and captured output."""
    from flows.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return Result(code, out.getvalue(), err.getvalue())


def assert_one_line_error(res: Result, *needles: str) -> None:
    assert res.code != 0, res
    lines = [ln for ln in res.err.splitlines() if ln.strip()]
    assert len(lines) == 1, res.err
    assert lines[0].startswith("rs-embed: error: "), lines[0]
    assert "Traceback" not in res.err + res.out
    for n in needles:
        assert n in lines[0], (n, lines[0])


@dataclass
class Setup:
    root: Path
    store: Path
    chips: Path
    rois: Path
    ckpt: Path
    first: Result


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Setup:
    """``rs-embed embed`` of two labelled ROIs x two months into a fresh store."""
    root = tmp_path_factory.mktemp("cli")
    rois = root / "rois.csv"
    rois.write_text("lon,lat,buffer_m,label\n11.0,48.0,700,alpha\n11.2,48.1,500,beta\n")
    s = Setup(root, root / "store", root / "chips", rois, tiny_checkpoint, Result(0, "", ""))
    s.first = cli(*embed_args(s), "--start", MONTHS[0], "--end", MONTHS[1])
    return s


def embed_args(s: Setup) -> list[str]:
    return [
        "embed",
        str(s.rois),
        "--store",
        str(s.store),
        "--backend",
        "synthetic",
        "--checkpoint",
        str(s.ckpt),
        "--batch-size",
        "4",
        "--cache-dir",
        str(s.chips),
        "--device",
        "cpu",
    ]


def store_json(s: Setup, *args: str) -> object:
    res = cli("store", *args, "--store", s.store, "--json")
    assert res.code == 0, res
    return json.loads(res.out)


# -- embed / refresh ---------------------------------------------------------------------------


def test_embed_writes_entries_and_prints_a_summary(embedded: Setup) -> None:
    res = embedded.first
    assert res.code == 0, res
    assert "written" in res.out and "snapshot id" in res.out
    assert "RANDOM dev weights" in res.err  # the tiny checkpoint is not real
    info = store_json(embedded, "info")
    assert info["entries"] == 4
    assert [m["month"] for m in info["months"]] == list(MONTHS)
    assert sorted(r["label"] for r in info["rois"]) == ["alpha", "beta"]
    assert info["snapshot_id"] in res.out  # the summary names the new snapshot


def test_embed_rerun_skips_identical_entries(embedded: Setup) -> None:
    before = store_json(embedded, "log")
    res = cli(*embed_args(embedded), "--month", ",".join(MONTHS), "--json")
    assert res.code == 0, res
    summary = json.loads(res.out)
    assert summary["counts"]["written"] == 0 and summary["counts"]["skipped"] == 4, summary
    assert summary["snapshot_id"] is None
    assert store_json(embedded, "log") == before  # nothing committed
    assert store_json(embedded, "info")["entries"] == 4


def test_refresh_embeds_one_month_and_tags_it(embedded: Setup) -> None:
    res = cli(
        "refresh",
        embedded.rois,
        "--month",
        "2024-07",
        "--store",
        embedded.store,
        "--backend",
        "synthetic",
        "--checkpoint",
        embedded.ckpt,
        "--cache-dir",
        embedded.chips,
        "--device",
        "cpu",
    )
    assert res.code == 0, res
    tags = store_json(embedded, "tags")
    assert "2024-07" in tags
    info = store_json(embedded, "info")
    assert info["entries"] == 6 and info["months"][-1]["month"] == "2024-07"


def test_embed_one_point_from_the_command_line(embedded: Setup, tmp_path: Path) -> None:
    res = cli("embed", "--lon", "11.4", "--lat", "48.3", "--buffer", "300", "--label", "gamma", "--month", "2024-05",
              "--store", tmp_path / "store", "--backend", "synthetic", "--checkpoint", embedded.ckpt,
              "--cache-dir", embedded.chips, "--device", "cpu", "--tag", "first", "--json")  # fmt: skip
    assert res.code == 0, res
    summary = json.loads(res.out)
    assert summary["counts"]["written"] == 1 and summary["tag"] == "first" and summary["weights_are_random"]
    info = json.loads(cli("store", "info", "--store", tmp_path / "store", "--json").out)
    assert [r["label"] for r in info["rois"]] == ["gamma"]
    assert info["rois"][0]["spec"]["buffer_m"] == 300
    assert info["tags"] == {"first": summary["snapshot_id"]}


# -- store -----------------------------------------------------------------------------------


def test_store_info_log_tag_and_export(embedded: Setup, tmp_path: Path) -> None:
    res = cli("store", "info", "--store", embedded.store)
    assert res.code == 0 and "alpha" in res.out and "float32" in res.out and "size on disk" in res.out
    log = store_json(embedded, "log")
    assert log[0]["metadata"]["counts"]["written"] >= 2  # run metadata comes with each version
    first_run = next(h for h in log if h["metadata"].get("counts", {}).get("written") == 4)
    res = cli("store", "tag", "v1", "--store", embedded.store, "--ref", first_run["snapshot_id"])
    assert res.code == 0 and first_run["snapshot_id"] in res.out
    assert store_json(embedded, "tags")["v1"] == first_run["snapshot_id"]
    assert "v1" in cli("store", "log", "--store", embedded.store).out
    # Tags never move.
    assert_one_line_error(cli("store", "tag", "v1", "--store", embedded.store), "already exists")
    # Export the tagged version: a plain Zarr folder with that version's 4 entries.
    out = tmp_path / "export"
    res = cli("store", "export", out, "--store", embedded.store, "--ref", "v1")
    assert res.code == 0, res
    import xarray as xr

    ds = xr.open_zarr(str(out), consolidated=False)
    assert int(np.asarray(ds["present"].values).sum()) == 4


# -- quicklook / search / changes --------------------------------------------------------------


def _png(path: Path) -> tuple[tuple[int, int], np.ndarray]:
    with Image.open(path) as im:
        return im.size, np.asarray(im.convert("RGB"))


def test_quicklook_pngs(embedded: Setup, tmp_path: Path) -> None:
    res = cli("quicklook", "--store", embedded.store, "--roi", "alpha", "--month", "2024-05", "--out", tmp_path,
              "--cache-dir", embedded.chips)  # fmt: skip
    assert res.code == 0, res
    entry, sim = tmp_path / "alpha_2024-05.png", tmp_path / "alpha_similarity.png"
    assert str(entry) in res.out and str(sim) in res.out and "cache" in res.out
    size, arr = _png(entry)
    assert size[0] >= 900 and size[1] >= 500
    assert arr.std() > 20 and len(np.unique(arr.reshape(-1, 3), axis=0)) > 500
    # The left (RGB) panel itself is a picture, not a flat fill.
    h, w = arr.shape[:2]
    panel = arr[int(h * 0.3) : int(h * 0.7), int(w * 0.05) : int(w * 0.4)]
    assert panel.std() > 5
    size, arr = _png(sim)
    assert size[0] >= 900 and arr.std() > 20


def test_quicklook_refetches_without_cache_and_overlays_a_caption(embedded: Setup, tmp_path: Path) -> None:
    empty = tmp_path / "no-chips"
    res = cli("quicklook", "--store", embedded.store, "--roi", "beta", "--out", tmp_path, "--cache-dir", empty,
              "--query", "a river")  # fmt: skip
    assert res.code == 0, res
    assert "fetched again" in res.out or "refetched" in res.out
    pngs = sorted(tmp_path.glob("beta_2024-0*_a_river.png"))  # the ROI's latest month; the query is in the name
    assert len(pngs) == 1
    size, arr = _png(pngs[0])
    assert size[0] >= 1300 and arr.std() > 20  # three panels


def test_search_and_changes(embedded: Setup) -> None:
    res = cli("search", "a forest", "--store", embedded.store, "--k", "3", "--month", "2024-05", "--json")
    assert res.code == 0, res
    rows = json.loads(res.out)
    assert len(rows) == 2 and {r["month"] for r in rows} == {"2024-05"}
    assert rows[0]["score"] >= rows[1]["score"]
    res = cli("changes", "--month", "2024-06", "--store", embedded.store, "--json")
    assert res.code == 0, res
    rows = json.loads(res.out)
    assert {r["label"] for r in rows} == {"alpha", "beta"} and all(r["previous_month"] == "2024-05" for r in rows)
    res = cli("changes", "--month", "2024-05", "--store", embedded.store)
    assert res.code == 0 and "nothing to compare" in res.out


# -- cache / checkpoint / deploy ---------------------------------------------------------------


def test_cache_info_and_prune(embedded: Setup, tmp_path: Path) -> None:
    chips = tmp_path / "chips"
    shutil.copytree(embedded.chips, chips)
    info = json.loads(cli("cache", "info", "--dir", chips, "--json").out)
    assert info["entries"] >= 4 and info["bytes"] > 0
    res = cli("cache", "prune", "--older-than-days", "30", "--dir", chips)
    assert res.code == 0 and "removed 0 chips" in res.out
    res = cli("cache", "prune", "--older-than-days", "0", "--dir", chips, "--json")
    assert json.loads(res.out)["removed"] == info["entries"]
    assert json.loads(cli("cache", "info", "--dir", chips, "--json").out)["entries"] == 0
    assert_one_line_error(cli("cache", "prune", "--older-than-days", "-1", "--dir", chips), "older_than_days")


def test_checkpoint_make_dev_is_labelled_not_real(tmp_path: Path) -> None:
    out = tmp_path / "dev"
    res = cli("checkpoint", "make-dev", "--arch", "tiny", out)
    assert res.code == 0, res
    assert "NOT REAL" in res.out and "RANDOM" in res.out
    assert json.loads((out / "config.json").read_text())["weights_are_random"] is True
    assert "NOT REAL" in (out / "README.md").read_text()
    assert_one_line_error(cli("checkpoint", "make-dev", "--arch", "tiny", out), "not an empty folder")


def test_deploy_dry_run_applies_the_project_prefect_yaml() -> None:
    res = cli("deploy", "--dry-run")
    assert res.code == 0, res
    assert "prefect deploy" in res.out and "--prefect-file" in res.out and "--all" in res.out
    assert str(Path("deployments") / "prefect.yaml") in res.out
    assert_one_line_error(cli("deploy", "--file", "/nonexistent/prefect.yaml"), "does not exist")


# -- user errors: one line, non-zero, no traceback ---------------------------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--lon", "200", "--lat", "48", "--month", "2024-05"], "longitude"),
        (["--lon", "11", "--lat", "95", "--month", "2024-05"], "latitude"),
        (["--lon", "11", "--lat", "48", "--month", "2024-13"], "month"),
        (["--lon", "11", "--lat", "48", "--start", "2024-06-01", "--end", "2024-05-01"], "end"),
        (["--lon", "11", "--lat", "48", "--start", "2024-06-01"], "--end"),
        (["--lon", "11", "--month", "2024-05"], "--lat"),
        (["--month", "2024-05"], "no ROIs"),
        (["/nonexistent/rois.csv", "--month", "2024-05"], "does not exist"),
    ],
)
def test_embed_input_errors(tmp_path: Path, args: list[str], needle: str) -> None:
    res = cli("embed", *args, "--store", tmp_path / "s", "--backend", "synthetic")
    assert_one_line_error(res, needle)
    assert not (tmp_path / "s").exists()  # nothing was created


def test_missing_store_credentials_checkpoint_tag_month(
    embedded: Setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert_one_line_error(cli("store", "info", "--store", tmp_path / "nope"), "no embedding store")
    monkeypatch.delenv("RS_EMBED_STORE", raising=False)
    assert_one_line_error(cli("store", "log"), "--store")
    for var in ("EE_PROJECT", "GOOGLE_CLOUD_PROJECT"):
        monkeypatch.delenv(var, raising=False)
    base = ["embed", "--lon", "11", "--lat", "48", "--month", "2024-05", "--store", tmp_path / "s"]
    assert_one_line_error(cli(*base), "EE_PROJECT")  # backend auto, no Earth Engine set-up
    assert_one_line_error(cli(*base, "--backend", "gee"), "EE_PROJECT")
    assert_one_line_error(cli(*base, "--backend", "synthetic", "--checkpoint", tmp_path / "ck"), "checkpoint")
    assert_one_line_error(cli("store", "info", "--store", embedded.store, "--ref", "no-such-tag"), "no-such-tag")
    assert_one_line_error(cli("store", "tag", "x", "--store", embedded.store, "--ref", "nope"), "nope")
    ql = ["quicklook", "--store", embedded.store, "--out", tmp_path]
    assert_one_line_error(cli(*ql, "--roi", "alpha", "--month", "2023-01"), "2023-01")
    assert_one_line_error(cli(*ql, "--roi", "gamma"), "alpha")
    assert_one_line_error(cli(*ql), "name one")  # two ROIs: which?
    assert_one_line_error(cli("search", "x", "--store", embedded.store, "--month", "2030-01"))


def test_usage_errors_are_one_line_with_exit_2() -> None:
    res = cli("embed", "--bogus")
    assert_one_line_error(res, "--bogus", "--help")
    assert res.code == 2
    assert cli("store", "tag").code == 2
    assert cli("--help").code == 0


# -- the installed console script ----------------------------------------------------------------


def _script() -> Path:
    path = Path(sys.executable).parent / "rs-embed"
    if not path.exists():
        pytest.skip("rs-embed entry point not installed (pip install -e . --no-deps)")
    return path


def _run_script(*args: str, env: dict[str, str | None] | None = None) -> Result:
    full = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [str(_script()), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in full.items() if v is not None},
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def test_console_script_errors_and_verbose(tmp_path: Path) -> None:
    args = ["embed", "--lon", "200", "--lat", "48", "--month", "2024-05", "--store", str(tmp_path / "s")]
    res = _run_script(*args, "--backend", "synthetic")
    assert_one_line_error(res, "longitude")
    res = _run_script(*args, "--backend", "synthetic", "--verbose")
    assert res.code == 1 and "Traceback" in res.err and res.err.rstrip().splitlines()[-1].startswith("rs-embed: error")
    assert _run_script("--version").out.startswith("rs-embed ")


def test_console_script_deploy_needs_a_server(tmp_path: Path) -> None:
    env = {
        "PREFECT_HOME": str(tmp_path / "ph"),
        "PREFECT_API_URL": None,
        "PREFECT_PROFILES_PATH": str(tmp_path / "p.toml"),
    }
    assert_one_line_error(_run_script("deploy", env=env), "PREFECT_API_URL")
