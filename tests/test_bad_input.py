"""Bad input, table-driven: every case gets a clear error naming the problem, and the store never changes.

Cases go through the three front doors: the library API (specs, ``get_embedding``,
``get_embedding_from_data``), the flow parameters (``planning.build_request``, the
first thing ``embed_rois`` does, and ``check_dispatch``), and the ``rs-embed`` command
(``flows.cli.main``, which validates everything before starting Prefect). A real store
with one committed entry is the target of every case that names a store; its snapshot
id and history must be the same after every case.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rs_embed_core.errors import (
    CheckpointError,
    NoImageryError,
    RsEmbedError,
    SpecError,
)
from rs_embed_core.specs import BBox, OutputSpec, PointBuffer, SensorSpec, TemporalSpec

pytestmark = pytest.mark.timeout(300)

MAY = TemporalSpec.month(2024, 5)
GOOD_ROI = {"lon": 2.30, "lat": 48.80, "buffer_m": 320, "label": "paris"}


@dataclass
class Ctx:
    store: str
    tmp: Path
    ckpt: str

    def file(self, name: str, text: str) -> str:
        path = self.tmp / name
        path.write_text(text)
        return str(path)

    def sensor(self, **kw: Any) -> SensorSpec:
        return SensorSpec(checkpoint=self.ckpt, **kw)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, tiny_checkpoint) -> Ctx:
    from rs_embed_core.pipeline import run_direct
    from rs_embed_core.planning import build_request

    tmp = tmp_path_factory.mktemp("bad-input")
    store = tmp / "store"
    req = build_request([GOOD_ROI], months=["2024-05"], checkpoint=str(tiny_checkpoint))
    out = run_direct(req, store=store, staging_dir=tmp / "staging", backend="synthetic", cache=tmp / "c", device="cpu")
    assert out["counts"]["written"] == 1
    not_a_ckpt = tmp / "not-a-checkpoint"
    not_a_ckpt.mkdir()
    (not_a_ckpt / "config.json").write_text('{"hello": "world"}')
    (not_a_ckpt / "model.safetensors").write_bytes(b"\x00" * 64)
    return Ctx(store=str(store), tmp=tmp, ckpt=str(tiny_checkpoint))


def _get(ctx: Ctx, *, spatial: Any = None, temporal: Any = MAY, sensor: Any = None, **kw: Any) -> Any:
    from rs_embed_core import get_embedding

    return get_embedding(
        "remoteclip",
        spatial=spatial if spatial is not None else PointBuffer(2.3, 48.8, 320),
        temporal=temporal,
        sensor=sensor if sensor is not None else ctx.sensor(),
        backend=kw.pop("backend", "synthetic"),
        device="cpu",
        **kw,
    )


def _from_data(ctx: Ctx, data: np.ndarray) -> Any:
    from rs_embed_core import get_embedding_from_data

    return get_embedding_from_data("remoteclip", data=data, sensor=ctx.sensor(), device="cpu")


def _request(ctx: Ctx, rois: Any = None, **kw: Any) -> Any:
    from rs_embed_core.planning import build_request

    kw.setdefault("months", ["2024-05"])
    return build_request(rois if rois is not None else [GOOD_ROI], checkpoint=ctx.ckpt, **kw)


def _pixels(value: float, dtype: str = "float32") -> np.ndarray:
    data = np.full((3, 64, 64), 1200, dtype=dtype)
    data[1, 10, 10] = value
    return data


class _NoDataProvider:
    """A provider whose composite has no observed pixel (count 0 everywhere), like a fully masked chip."""

    name, version = "nodata-test", "1"

    def describe(self) -> dict[str, Any]:
        return {}

    def fetch(self, roi, temporal, sensor):  # noqa: ANN001, ANN201
        from rs_embed_core.chip import Chip
        from rs_embed_core.grid import roi_grid

        grid = roi_grid(roi, sensor.scale_m)
        shape = (grid.height, grid.width)
        return Chip(np.zeros((3, *shape), np.uint16), sensor.bands, grid, np.zeros(shape, np.uint16), ("S1",))


CSV_MISSING_COLUMN = "lon,lat,label\n2.3,48.8,a\n"
CSV_BAD_NUMBER = "lon,lat,buffer_m,label\n2.3,forty-eight,320,a\n"
CSV_DUP_LABEL = "lon,lat,buffer_m,label\n2.3,48.8,320,a\n2.4,48.8,320,a\n"
CSV_DUP_GEOMETRY = "lon,lat,buffer_m,label\n2.3,48.8,320,a\n2.3,48.8,320,b\n"
GEOJSON_BROKEN = '{"type": "FeatureCollection", "features": [ {"type": "Feature",'
GEOJSON_POINT_NO_BUFFER = json.dumps(
    {
        "type": "FeatureCollection",
        "features": [{"type": "Feature", "geometry": {"type": "Point", "coordinates": [2, 48]}}],
    }
)
GEOJSON_LINE = json.dumps(
    {
        "type": "FeatureCollection",
        "features": [{"type": "Feature", "geometry": {"type": "LineString", "coordinates": [[2, 48], [3, 49]]}}],
    }
)


@dataclass(frozen=True)
class Case:
    id: str
    run: Callable[[Ctx], Any]
    error: type[BaseException] | None  # None: a CLI case (exit status 1, one "rs-embed: error:" line)
    needles: tuple[str, ...]


def _cli(*args: str) -> Callable[[Ctx], Any]:
    def run(ctx: Ctx) -> Any:
        from flows.cli import main

        argv = [a.format(store=ctx.store, ckpt=ctx.ckpt, tmp=ctx.tmp) for a in args]
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
        return code, out.getvalue(), err.getvalue()

    return run


EMBED = ("embed", "--store", "{store}", "--backend", "synthetic", "--checkpoint", "{ckpt}")

CASES = [
    # -- coordinates, buffers, boxes (API) -----------------------------------------------------
    Case("lon-out-of-range", lambda c: _get(c, spatial=PointBuffer(200, 48.8, 320)), SpecError, ("lon", "-180, 180")),
    Case("lat-polar", lambda c: _get(c, spatial=PointBuffer(2.3, 86.0, 320)), SpecError, ("lat", "UTM")),
    Case("lon-nan", lambda c: PointBuffer(float("nan"), 48.8, 320), SpecError, ("lon", "finite")),
    Case("lat-text", lambda c: PointBuffer(2.3, "north", 320), SpecError, ("lat", "number")),
    Case("buffer-negative", lambda c: PointBuffer(2.3, 48.8, -5), SpecError, ("buffer_m", "> 0")),
    Case("buffer-huge", lambda c: PointBuffer(2.3, 48.8, 1e6), SpecError, ("buffer_m", "25000")),
    Case("bbox-inverted", lambda c: BBox(3.0, 48.0, 2.0, 49.0), SpecError, ("maxlon", "minlon")),
    Case("bbox-huge", lambda c: BBox(2.0, 45.0, 6.0, 49.0), SpecError, ("km",)),
    # -- dates -------------------------------------------------------------------------------
    Case("end-before-start", lambda c: TemporalSpec.range("2024-06-01", "2024-05-01"), SpecError, ("end", "after")),
    Case("date-invalid", lambda c: TemporalSpec.range("2024-13-01", "2024-14-01"), SpecError, ("start",)),
    Case("before-sentinel2", lambda c: TemporalSpec.range("2010-01-01", "2010-02-01"), SpecError, ("2015",)),
    Case("temporal-not-a-spec", lambda c: _get(c, temporal="2024-05"), SpecError, ("temporal", "TemporalSpec")),
    # -- sensor: bands, collection strings, hf: checkpoints ----------------------------------
    Case("bands-unknown", lambda c: _get(c, sensor=c.sensor(bands=("B8", "B4", "B3"))), SpecError, ("bands",)),
    Case("bands-empty", lambda c: SensorSpec(bands=()), SpecError, ("bands",)),
    Case("collection-empty", lambda c: SensorSpec(collection=""), SpecError, ("collection", "non-empty")),
    Case("collection-hf-empty", lambda c: SensorSpec(collection="hf:"), SpecError, ("collection", "hf:")),
    Case("cloudy-pct", lambda c: SensorSpec(cloudy_pct=150), SpecError, ("cloudy_pct", "0..100")),
    Case("composite", lambda c: SensorSpec(composite="mean"), SpecError, ("composite", "median")),
    Case("scale-zero", lambda c: SensorSpec(scale_m=0), SpecError, ("scale_m",)),
    Case(
        "hf-path-missing",
        lambda c: _get(c, sensor=SensorSpec(collection=f"hf:{c.tmp}/no-such-checkpoint")),
        CheckpointError,
        ("no-such-checkpoint",),
    ),
    Case(
        "hf-path-not-a-checkpoint",
        lambda c: _get(c, sensor=SensorSpec(collection=f"hf:{c.tmp}/not-a-checkpoint")),
        CheckpointError,
        ("not-a-checkpoint",),
    ),
    Case("output-pooling", lambda c: OutputSpec.pooled("sum"), SpecError, ("pooling", "mean")),
    Case("input-prep", lambda c: _get(c, input_prep="crop"), SpecError, ("input_prep", "resize")),
    # -- pixels (get_embedding_from_data) and all-nodata chips ------------------------------
    Case("pixels-nan", lambda c: _from_data(c, _pixels(np.nan)), SpecError, ("data", "NaN")),
    Case("pixels-inf", lambda c: _from_data(c, _pixels(np.inf)), SpecError, ("data", "NaN/inf")),
    Case("pixels-negative", lambda c: _from_data(c, _pixels(-3)), SpecError, ("data", "0..65535")),
    Case("pixels-all-nodata", lambda c: _from_data(c, np.zeros((3, 64, 64), np.uint16)), SpecError, ("nodata",)),
    Case("pixels-2d", lambda c: _from_data(c, np.ones((64, 64), np.uint16)), SpecError, ("data", "(C, H, W)")),
    Case(
        "chip-all-nodata",
        lambda c: _get(c, backend=_NoDataProvider()),
        NoImageryError,
        ("no valid pixel", "all nodata"),
    ),
    # -- flow parameters (build_request / embed_rois) ---------------------------------------
    Case("months-bad", lambda c: _request(c, months=["2024-13"]), SpecError, ("month=13", "1..12")),
    Case("months-empty", lambda c: _request(c, months=[]), SpecError, ("months",)),
    Case("months-and-window", lambda c: _request(c, window="2024-05"), SpecError, ("exactly one",)),
    Case("months-repeated", lambda c: _request(c, months=["2024-05", "2024-05"]), SpecError, ("repeat",)),
    Case("rois-empty", lambda c: _request(c, rois=[]), SpecError, ("rois", "at least one")),
    Case("rois-duplicate-ids", lambda c: _request(c, rois=[GOOD_ROI, {**GOOD_ROI, "label": "x"}]), SpecError, ("dup",)),
    Case("rois-unknown-file-type", lambda c: _request(c, rois=c.file("r.txt", "x")), SpecError, ("rois",)),
    Case("csv-missing-column", lambda c: _request(c, rois=c.file("a.csv", CSV_MISSING_COLUMN)), SpecError, ("buffer_m",)),
    Case("csv-bad-number", lambda c: _request(c, rois=c.file("b.csv", CSV_BAD_NUMBER)), SpecError, ("line 2", "lat")),
    Case("csv-duplicate-label", lambda c: _request(c, rois=c.file("c.csv", CSV_DUP_LABEL)), SpecError, ("line 3", "'a'")),
    Case("csv-duplicate-geometry", lambda c: _request(c, rois=c.file("d.csv", CSV_DUP_GEOMETRY)), SpecError, ("same",)),
    Case("geojson-broken", lambda c: _request(c, rois=c.file("e.geojson", GEOJSON_BROKEN)), SpecError, ("JSON",)),
    Case(
        "geojson-point-no-buffer",
        lambda c: _request(c, rois=c.file("f.geojson", GEOJSON_POINT_NO_BUFFER)),
        SpecError,
        ("feature 0", "buffer_m"),
    ),
    Case("geojson-line", lambda c: _request(c, rois=c.file("g.geojson", GEOJSON_LINE)), SpecError, ("LineString",)),
    Case("batch-size-huge", lambda c: _request(c, batch_size=10**6), SpecError, ("batch_size", "4096")),
    Case("dispatch", lambda c: __import__("rs_embed_core.planning").planning.check_dispatch("gpu"), SpecError, ("dispatch",)),
    # -- the rs-embed command (exit 1, one line) -------------------------------------------
    Case("cli-lon", _cli(*EMBED, "--lon", "200", "--lat", "48.8", "--month", "2024-05"), None, ("lon",)),
    Case("cli-month", _cli(*EMBED, "--lon", "2.3", "--lat", "48.8", "--month", "2024-13"), None, ("month=13",)),
    Case("cli-buffer", _cli(*EMBED, "--lon", "2.3", "--lat", "48.8", "--buffer", "-1", "--month", "2024-05"), None, ("buffer_m",)),
    Case("cli-bands", _cli(*EMBED, "--lon", "2.3", "--lat", "48.8", "--bands", "B4,B4", "--month", "2024-05"), None, ("bands",)),
    Case("cli-roi-file-missing", _cli(*EMBED, "{tmp}/nope.csv", "--month", "2024-05"), None, ("nope.csv",)),
    Case(
        "cli-checkpoint-missing",
        _cli("embed", "--store", "{store}", "--backend", "synthetic", "--checkpoint", "{tmp}/no-ckpt", "--lon", "2.3",
             "--lat", "48.8", "--month", "2024-05"),
        None,
        ("no-ckpt",),
    ),
    Case("cli-store-missing", _cli("store", "log", "-s", "{tmp}/no-store"), None, ("no-store",)),
    Case("cli-tag-unknown", _cli("store", "log", "-s", "{store}", "--ref", "1999-01"), None, ("1999-01",)),
]  # fmt: skip


def test_there_are_at_least_25_cases_across_the_three_front_doors():
    assert len(CASES) >= 25 and len({c.id for c in CASES}) == len(CASES)
    assert (
        sum(c.error is None for c in CASES) >= 5 and sum(c.id.startswith(("months", "rois", "csv")) for c in CASES) >= 5
    )


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_a_clear_error_and_leaves_the_store_alone(case: Case, ctx: Ctx):
    from rs_embed_core.store import EmbeddingStore

    store = EmbeddingStore.open(ctx.store, create=False)
    before = (store.snapshot_id(), len(store.history()), sorted(store.entry_digests()))
    if case.error is None:
        code, out, err = case.run(ctx)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert code == 1, (code, out, err)
        assert len(lines) == 1 and lines[0].startswith("rs-embed: error: "), err
        assert "Traceback" not in out + err and "internal error" not in err
        message = lines[0]
    else:
        with pytest.raises(case.error) as info:
            case.run(ctx)
        assert isinstance(info.value, RsEmbedError), type(info.value)  # ours, not a stray library error
        message = str(info.value)
    for needle in case.needles:
        assert needle in message, (needle, message)
    after = EmbeddingStore.open(ctx.store, create=False)
    assert (after.snapshot_id(), len(after.history()), sorted(after.entry_digests())) == before
