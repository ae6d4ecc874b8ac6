"""The ``rs-embed`` console command.

A thin shell over the flows (embed, refresh), the store, the chip cache, the model
checkpoints, caption search and the quicklook pictures. Commands validate their input
with the core specs *before* anything slow starts (Prefect, torch), so a typo costs
a second, not a server start.

Errors a user can cause (bad dates or coordinates, a missing store, file or
credentials, an unknown tag, ROI or month) print ONE line to stderr and exit 1;
usage errors exit 2; ``--verbose`` adds the traceback. Anything else is reported as
an internal error, still in one line unless ``--verbose``.

Heavy modules (prefect, torch, xarray, icechunk, matplotlib) are imported inside the
commands that need them, so ``rs-embed --help`` and the error paths stay fast.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from rs_embed_core.errors import RsEmbedError

try:  # typer >= 0.2x vendors its own click; its exceptions are not click's
    from typer._click import exceptions as click
except ImportError:  # pragma: no cover - older typer uses click itself
    from click import exceptions as click  # type: ignore[no-redef]

PROG = "rs-embed"
STORE_ENV = "RS_EMBED_STORE"
BACKEND_ENV = "RS_EMBED_BACKEND"
CHECKPOINT_ENV = "RS_EMBED_CHECKPOINT"
ROIS_ENV = "RS_EMBED_ROIS"
# A 224 px chip at 10 m is exactly one ViT input: no resampling between ground and model.
DEFAULT_BUFFER_M = 1120.0
# Errors that mean "the user asked for something that cannot be done", not a bug.
USER_ERRORS: tuple[type[BaseException], ...] = (
    RsEmbedError,
    ValueError,
    LookupError,
    FileNotFoundError,
    PermissionError,
)

app = typer.Typer(
    name=PROG,
    help="RemoteCLIP embeddings of Sentinel-2 RGB composites per ROI and month, in a versioned store.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
store_app = typer.Typer(help="Inspect, version and export the embedding store.", no_args_is_help=True)
cache_app = typer.Typer(help="Report on and prune the chip cache.", no_args_is_help=True)
checkpoint_app = typer.Typer(help="Model checkpoints for offline use.", no_args_is_help=True)
app.add_typer(store_app, name="store")
app.add_typer(cache_app, name="cache")
app.add_typer(checkpoint_app, name="checkpoint")

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
_state = {"verbose": False}


# ---------------------------------------------------------------------------------- errors


class CliError(RsEmbedError, ValueError):
    """A problem with the command line itself (conflicting or missing options)."""


def one_line(text: str) -> str:
    """Collapse whitespace so an error is exactly one line."""
    return " ".join(str(text).split())


def _error_line(exc: BaseException) -> str:
    msg = one_line(str(exc)) or type(exc).__name__
    if isinstance(exc, (FileNotFoundError, PermissionError)) and getattr(exc, "filename", None):
        msg = f"{exc.strerror or type(exc).__name__}: {exc.filename}"
    return msg


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``rs-embed`` console script; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    # --verbose is accepted anywhere on the line (it is the root's option), and is
    # known before parsing, so a parse error can show its details too.
    verbose = any(a in ("--verbose", "-v") for a in args)
    _state["verbose"] = verbose
    if verbose:
        args = ["--verbose", *(a for a in args if a not in ("--verbose", "-v"))]
    command = typer.main.get_command(app)
    try:
        rv = command.main(args=args, prog_name=PROG, standalone_mode=False)
    except click.NoArgsIsHelpError as exc:
        # The rich help formatter has printed the help already (the message is then empty).
        if exc.message:
            print(exc.message)
        return 0
    except click.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
        print(f"{PROG}: error: {one_line(exc.format_message())}{hint}", file=sys.stderr)
        return exc.exit_code
    except click.ClickException as exc:
        print(f"{PROG}: error: {one_line(exc.format_message())}", file=sys.stderr)
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as exc:
        if _state["verbose"]:
            traceback.print_exception(exc, file=sys.stderr)
        print(f"{PROG}: error: {_error_line(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:
        if _state["verbose"]:
            traceback.print_exception(exc, file=sys.stderr)
            print(f"{PROG}: internal error: {type(exc).__name__}: {_error_line(exc)}", file=sys.stderr)
        else:
            print(
                f"{PROG}: internal error: {type(exc).__name__}: {_error_line(exc)} (rerun with --verbose for details)",
                file=sys.stderr,
            )
        return 1
    return rv if isinstance(rv, int) else 0


def _version(value: bool) -> None:
    if value:
        from rs_embed_core import __version__

        print(f"{PROG} {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show details (tracebacks, Prefect logs).")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """RemoteCLIP embeddings of Sentinel-2 RGB composites per ROI and month, in a versioned store."""
    _state["verbose"] = _state["verbose"] or verbose
    if verbose:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


# ---------------------------------------------------------------------------------- shared options

StoreOpt = Annotated[
    str | None,
    typer.Option(
        "--store", "-s", envvar=STORE_ENV, help=f"Store location: a folder or s3://bucket/prefix [env {STORE_ENV}]."
    ),
]
RefOpt = Annotated[str, typer.Option("--ref", help="Branch, tag or snapshot id to read.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
BackendOpt = Annotated[
    str,
    typer.Option(
        "--backend",
        "-b",
        envvar=BACKEND_ENV,
        help=f"Imagery provider: auto | gee | synthetic | local:<folder> [env {BACKEND_ENV}].",
    ),
]
CheckpointOpt = Annotated[
    str | None,
    typer.Option(
        "--checkpoint",
        "-c",
        envvar=CHECKPOINT_ENV,
        help=f"Model checkpoint: hub id or local folder (default: the real RemoteCLIP ViT-B/32) [env {CHECKPOINT_ENV}].",
    ),
]
CacheDirOpt = Annotated[
    str | None, typer.Option("--cache-dir", help="Chip cache folder (default: $RS_EMBED_CACHE_DIR or the user cache).")
]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="torch device (default: CUDA when available).")]


def _need_store(store: str | None) -> str:
    if not store:
        raise CliError(f"no store given: pass --store <folder | s3://bucket/prefix> or set {STORE_ENV}")
    return store


def _open_store(store: str | None) -> Any:
    from rs_embed_core.store import EmbeddingStore

    return EmbeddingStore.open(_need_store(store), create=False)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str, sort_keys=False))


# ---------------------------------------------------------------------------------- embed / refresh


def _split(values: list[str] | None) -> list[str]:
    """Repeatable options also accept comma-separated values."""
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


def _roi_input(
    rois_file: Path | None,
    lon: float | None,
    lat: float | None,
    buffer: float | None,
    label: str | None,
) -> Any:
    """The flow's ``rois`` parameter: a file path, or one inline ROI from --lon/--lat/--buffer."""
    point = lon is not None or lat is not None
    if rois_file is not None and point:
        raise CliError("give either a ROI file or --lon/--lat, not both")
    if rois_file is not None:
        if not rois_file.is_file():
            raise CliError(f"ROI file {str(rois_file)!r} does not exist (expected a .csv, .geojson or .json file)")
        return str(rois_file.resolve())
    if lon is None or lat is None:
        if point:
            raise CliError("--lon and --lat go together: give both")
        raise CliError("no ROIs given: pass a ROI file (CSV/GeoJSON) or --lon LON --lat LAT [--buffer M]")
    roi: dict[str, Any] = {"lon": lon, "lat": lat, "buffer_m": DEFAULT_BUFFER_M if buffer is None else buffer}
    if label:
        roi["label"] = label
    return [roi]


def _time_input(months: list[str], start: str | None, end: str | None) -> dict[str, Any]:
    """``months=[...]`` or ``window=...`` for the flow."""
    if months and (start or end):
        raise CliError("give either --month or --start/--end, not both")
    if months:
        return {"months": months}
    if not start or not end:
        if start or end:
            raise CliError("--start and --end go together: give both (end is exclusive for dates)")
        raise CliError("no time given: pass --month YYYY-MM (repeatable) or --start and --end")
    if re.fullmatch(r"\d{4}-\d{2}", start) and re.fullmatch(r"\d{4}-\d{2}", end):
        # Two months: every month from start to end, both included.
        from rs_embed_core.planning import month_range

        return {"months": [m.label() for m in month_range(start, end)]}
    return {"window": [start, end]}


def _sensor_input(
    collection: str | None,
    bands: str | None,
    scale: float | None,
    cloudy_pct: float | None,
    composite: str | None,
    cloud_mask: str | None,
) -> dict[str, Any]:
    sensor: dict[str, Any] = {}
    if collection:
        sensor["collection"] = collection
    if bands:
        sensor["bands"] = [b.strip() for b in bands.split(",") if b.strip()]
    if scale is not None:
        sensor["scale_m"] = scale
    if cloudy_pct is not None:
        sensor["cloudy_pct"] = cloudy_pct
    if composite:
        sensor["composite"] = composite
    if cloud_mask:
        sensor["cloud_mask"] = cloud_mask
    return sensor


def _check_backend(backend: str) -> Any:
    """Resolve the backend now (a missing Earth Engine set-up fails here, in one line)."""
    from rs_embed_core.providers.base import resolve_backend

    provider = resolve_backend(backend)
    if getattr(provider, "name", "") == "gee":
        check = getattr(provider, "check", None) or getattr(provider, "_ensure_initialized", None)
        if check is not None:
            check()
    return provider


def _check_checkpoint(checkpoint: str | None) -> Any:
    from rs_embed_core.models.checkpoints import resolve_checkpoint

    return resolve_checkpoint(checkpoint)


class _FlowProgress(logging.Handler):
    """Turns the flow's run logs into progress bars (fetch, inference, write).

    It reads what every Prefect run already logs: the planner's "plan: N to compute"
    line and "Finished in state ..." of each task run, keyed by task name. Warnings
    (no imagery, failed fetches) are echoed above the bars, one line each.
    """

    TASKS = {"fetch-chip": "fetch", "embed-batch": "inference", "commit-entries": "write"}

    def __init__(self, progress: Any, batch_size: int, n_entries: int) -> None:
        super().__init__(level=logging.INFO)
        self.progress = progress
        self.batch_size = max(1, batch_size)
        self.bars = {
            "prepare": progress.add_task("prepare (start Prefect, load model, plan)", total=1),
            "fetch": progress.add_task("fetch", total=n_entries),
            "inference": progress.add_task("inference", total=None),
            "write": progress.add_task("write + commit", total=1),
        }
        self.done = {k: 0 for k in self.bars}
        self.problems: list[str] = []

    def _advance(self, bar: str) -> None:
        self.done[bar] += 1
        task = self.progress.tasks[self.bars[bar]]
        total = task.total
        if total is not None and self.done[bar] > total:
            self.progress.update(self.bars[bar], total=self.done[bar])
        self.progress.update(self.bars[bar], completed=self.done[bar])

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
            task_name = getattr(record, "task_name", None)
            if record.levelno >= logging.WARNING and "Finished in state" not in msg:
                line = one_line(msg.splitlines()[0] if msg else "")
                self.problems.append(line)
                self.progress.console.print(f"[yellow]{record.levelname.lower()}:[/] {line}", markup=True)
            if msg.startswith("plan:") and isinstance(record.args, tuple) and len(record.args) >= 2:
                todo = int(record.args[0])
                self.progress.update(self.bars["prepare"], completed=1)
                self.progress.update(self.bars["fetch"], total=todo)
                self.progress.update(self.bars["inference"], total=math.ceil(todo / self.batch_size) if todo else 0)
                if todo == 0:
                    self.progress.update(self.bars["fetch"], completed=0)
            elif "Finished in state" in msg and task_name in self.TASKS:
                self._advance(self.TASKS[task_name])
            elif "Finished in state" in msg and task_name == "make-batches":
                # The real batch count is known once the fetches are in: at most one per batch_size chips.
                fetched = self.done["fetch"]
                self.progress.update(self.bars["inference"], total=max(1, math.ceil(fetched / self.batch_size)))
        except Exception:  # a display problem must never break a run
            self.handleError(record)

    def finish(self) -> None:
        for bar, task_id in self.bars.items():
            task = self.progress.tasks[task_id]
            if task.total is None or bar in ("prepare", "write"):
                self.progress.update(task_id, total=max(1, self.done[bar]), completed=max(1, self.done[bar]))


@contextmanager
def _quiet_prefect_console() -> Iterator[None]:
    """Hide Prefect's own console logs (server start, task lines) while our bars run, unless --verbose."""
    if _state["verbose"]:
        yield
        return
    changed: list[tuple[logging.Handler, int]] = []
    for name in ("", "uvicorn", "fastapi"):
        for h in logging.getLogger(name).handlers:
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                changed.append((h, h.level))
                h.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for h, level in changed:
            h.setLevel(level)


def _run_flow(flow_fn: Any, params: dict[str, Any], *, batch_size: int, n_entries: int) -> tuple[dict[str, Any], Any]:
    """Run a flow in this process with progress bars; returns (summary, progress handler)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Without PREFECT_API_URL Prefect starts a temporary local server; on a busy
    # machine it needs longer than the default 20 s.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    import prefect  # noqa: F401  (sets up Prefect logging before we adjust it)

    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description:<42}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    )
    handler = _FlowProgress(progress, batch_size, n_entries)
    plogger = logging.getLogger("prefect")
    # The bars follow INFO records of the run loggers; PREFECT_LOGGING_LEVEL=WARNING would drop them.
    run_loggers = [logging.getLogger(n) for n in ("prefect.flow_runs", "prefect.task_runs")]
    levels = [lg.level for lg in run_loggers]
    for lg in run_loggers:
        if lg.getEffectiveLevel() > logging.INFO:
            lg.setLevel(logging.INFO)
    plogger.addHandler(handler)
    try:
        with _quiet_prefect_console(), progress:
            result = flow_fn(**params)
            handler.finish()
    finally:
        plogger.removeHandler(handler)
        for lg, level in zip(run_loggers, levels, strict=True):
            lg.setLevel(level)
    return result, handler


def _summary(
    result: dict[str, Any], *, elapsed: float, random_weights: bool, extra: dict[str, Any], as_json: bool = False
) -> int:
    counts = result.get("counts") or {}
    failed = int(counts.get("failed", 0))
    if as_json:
        _print_json({**result, **extra, "wall_time_s": round(elapsed, 2), "weights_are_random": random_weights})
        return 1 if failed else 0
    table = Table(title="run summary", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("written", str(counts.get("written", result.get("written", 0))))
    table.add_row("skipped (identical)", str(counts.get("skipped", 0)))
    table.add_row("no imagery", str(counts.get("no_imagery", 0)))
    table.add_row("failed", str(counts.get("failed", 0)))
    table.add_row("snapshot id", str(result.get("snapshot_id") or "(no new commit: nothing written)"))
    if result.get("tag"):
        table.add_row("tag", f"{result['tag']} - {result.get('tag_note') or ''}")
    for k, v in extra.items():
        table.add_row(k, str(v))
    table.add_row("wall time", f"{elapsed:.1f} s")
    out.print(table)
    if random_weights:
        err.print(
            "[yellow]note:[/] the checkpoint has RANDOM dev weights (NOT real RemoteCLIP): vectors are meaningless"
        )
    if failed:
        print(f"{PROG}: error: {failed} entries failed (reasons above); the others were committed", file=sys.stderr)
        return 1
    return 0


@app.command()
def embed(
    rois_file: Annotated[
        Path | None, typer.Argument(help="ROI list: CSV (lon,lat,buffer_m[,label] or bbox columns) or GeoJSON.")
    ] = None,
    lon: Annotated[float | None, typer.Option(help="Longitude of one ROI centre (instead of a file).")] = None,
    lat: Annotated[float | None, typer.Option(help="Latitude of one ROI centre.")] = None,
    buffer: Annotated[
        float | None,
        typer.Option(help=f"Half-side of the --lon/--lat square in metres [default {DEFAULT_BUFFER_M:g}]."),
    ] = None,
    label: Annotated[str | None, typer.Option(help="Label of the --lon/--lat ROI.")] = None,
    default_buffer: Annotated[
        float | None, typer.Option("--default-buffer", help="Buffer (m) for file points that give none.")
    ] = None,
    month: Annotated[
        list[str] | None, typer.Option("--month", "-m", help="Month YYYY-MM; repeat or comma-separate for several.")
    ] = None,
    start: Annotated[
        str | None, typer.Option(help="Window start: YYYY-MM-DD (or YYYY-MM for a month range with --end).")
    ] = None,
    end: Annotated[str | None, typer.Option(help="Window end: YYYY-MM-DD, exclusive (or YYYY-MM, inclusive).")] = None,
    store: StoreOpt = None,
    backend: BackendOpt = "auto",
    checkpoint: CheckpointOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Forward slots per inference batch.")] = 64,
    force: Annotated[
        bool, typer.Option("--force", help="Recompute entries even when identical ones are stored.")
    ] = False,
    collection: Annotated[
        str | None, typer.Option(help="Imagery collection (default COPERNICUS/S2_SR_HARMONIZED).")
    ] = None,
    bands: Annotated[str | None, typer.Option(help="Comma-separated bands (default B4,B3,B2).")] = None,
    scale: Annotated[float | None, typer.Option("--scale", help="Pixel size in metres (default 10).")] = None,
    cloudy_pct: Annotated[float | None, typer.Option("--cloudy-pct", help="Max scene cloud %% (default 30).")] = None,
    composite: Annotated[str | None, typer.Option(help="median | mosaic (default median).")] = None,
    cloud_mask: Annotated[str | None, typer.Option("--cloud-mask", help="none | cloud_score_plus.")] = None,
    output: Annotated[str, typer.Option("--output", help="grid | pooled (the store keeps both).")] = "pooled",
    pooling: Annotated[str, typer.Option(help="mean | max.")] = "mean",
    input_prep: Annotated[str, typer.Option("--input-prep", help="resize | tile.")] = "resize",
    cache_dir: CacheDirOpt = None,
    device: DeviceOpt = None,
    tag: Annotated[str | None, typer.Option(help="Tag the new snapshot (e.g. a release name).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run summary as JSON.")] = False,
) -> int:
    """Embed ROIs x months into the store (runs the embed-rois Prefect flow in this process)."""
    from rs_embed_core.planning import build_request

    location = _need_store(store)
    rois = _roi_input(rois_file, lon, lat, buffer, label)
    when = _time_input(_split(month), start, end)
    sensor = _sensor_input(collection, bands, scale, cloudy_pct, composite, cloud_mask)
    out_spec = {"mode": output, "pooling": pooling}
    request = build_request(
        rois,
        sensor=sensor,
        output=out_spec,
        input_prep=input_prep,
        batch_size=batch_size,
        checkpoint=checkpoint,
        default_buffer_m=default_buffer,
        **when,
    )
    _check_backend(backend)
    ckpt = _check_checkpoint(request.sensor.checkpoint)
    err.print(
        f"embedding {len(request.rois)} ROIs x {len(request.windows)} months "
        f"({request.n_entries} entries) into {location}; checkpoint {ckpt.spec} ({ckpt.arch})"
    )
    from flows.embed import embed_rois

    params = {
        "rois": rois,
        "store": location,
        **when,
        "sensor": sensor or None,
        "output": out_spec,
        "input_prep": input_prep,
        "batch_size": batch_size,
        "backend": backend,
        "force": force,
        "checkpoint": checkpoint,
        "device": device,
        "cache_dir": cache_dir,
        "tag": tag,
        "default_buffer_m": default_buffer,
    }
    t0 = time.perf_counter()
    result, _ = _run_flow(embed_rois, params, batch_size=batch_size, n_entries=request.n_entries)
    return _summary(
        result,
        elapsed=time.perf_counter() - t0,
        random_weights=bool(getattr(ckpt, "weights_are_random", False)),
        extra={"store": location},
        as_json=as_json,
    )


@app.command()
def refresh(
    rois_file: Annotated[
        Path | None, typer.Argument(envvar=ROIS_ENV, help=f"ROI list (CSV/GeoJSON) [env {ROIS_ENV}].")
    ] = None,
    month: Annotated[
        str | None, typer.Option("--month", "-m", help="YYYY-MM (default: the previous month, UTC).")
    ] = None,
    store: StoreOpt = None,
    backend: BackendOpt = "auto",
    checkpoint: CheckpointOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Forward slots per inference batch.")] = 64,
    force: Annotated[
        bool, typer.Option("--force", help="Recompute entries even when identical ones are stored.")
    ] = False,
    no_tag: Annotated[bool, typer.Option("--no-tag", help="Do not tag the snapshot with the month.")] = False,
    cache_dir: CacheDirOpt = None,
    device: DeviceOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run summary as JSON.")] = False,
) -> int:
    """The monthly refresh: embed one month (default: last month, UTC) and tag it YYYY-MM."""
    from rs_embed_core.planning import build_request, previous_month
    from rs_embed_core.specs import TemporalSpec

    location = _need_store(store)
    if rois_file is None:
        raise CliError(f"no ROI file given: pass a CSV/GeoJSON ROI list or set {ROIS_ENV}")
    rois = _roi_input(rois_file, None, None, None, None)
    window = TemporalSpec.parse_month(month) if month else previous_month()
    request = build_request(rois, months=[window.label()], batch_size=batch_size, checkpoint=checkpoint)
    _check_backend(backend)
    ckpt = _check_checkpoint(request.sensor.checkpoint)
    err.print(f"monthly refresh of {window.label()}: {len(request.rois)} ROIs into {location}")
    from flows.refresh import monthly_refresh

    params = {
        "rois": rois,
        "store": location,
        "month": window.label(),
        "batch_size": batch_size,
        "backend": backend,
        "force": force,
        "checkpoint": checkpoint,
        "device": device,
        "cache_dir": cache_dir,
        "tag": not no_tag,
    }
    t0 = time.perf_counter()
    result, _ = _run_flow(monthly_refresh, params, batch_size=batch_size, n_entries=request.n_entries)
    return _summary(
        result,
        elapsed=time.perf_counter() - t0,
        random_weights=bool(getattr(ckpt, "weights_are_random", False)),
        extra={"month": window.label(), "store": location},
        as_json=as_json,
    )


# ---------------------------------------------------------------------------------- store


def _dir_size(path: str | None) -> int | None:
    if not path or not os.path.isdir(path):
        return None
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            with suppress(OSError):  # a file removed while we walk
                total += os.path.getsize(os.path.join(root, f))
    return total


def _human(n: int | None) -> str:
    if n is None:
        return "n/a"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def store_summary(st: Any, ref: str) -> dict[str, Any]:
    """What ``store info`` shows, as JSON-ready data."""
    import numpy as np

    sid = st.resolve(ref)
    ds = st.open_dataset(ref)
    info: dict[str, Any] = {
        "location": st.config.location,
        "ref": ref,
        "snapshot_id": sid,
        "storage_dtype": st.dtype,
        "branches": st.branches(),
        "tags": st.tags(),
        "size_on_disk_bytes": _dir_size(st.config.path),
        "grid_shape": None,
        "rois": [],
        "months": [],
        "entries": 0,
    }
    shape = st.grid_shape(ref)
    if shape is not None:
        info["grid_shape"] = shape.to_dict()
    if "present" in ds:
        present = np.asarray(ds["present"].values, dtype=bool)
        times = [str(t)[:7] for t in ds["time"].values.astype("datetime64[D]")]
        labels = [str(v) for v in ds["roi_label"].values]
        info["entries"] = int(present.sum())
        info["months"] = [{"month": m, "entries": int(present[:, j].sum())} for j, m in enumerate(times)]
        info["rois"] = [
            {
                "roi_id": str(r),
                "label": labels[i],
                "spec": json.loads(str(ds["roi_spec"].values[i]) or "{}"),
                "months": int(present[i].sum()),
            }
            for i, r in enumerate(ds["roi"].values)
        ]
        if "checkpoint" in ds and present.any():
            ck = np.asarray(ds["checkpoint"].values)[present]
            rnd = np.asarray(ds["weights_are_random"].values, dtype=bool)[present]
            info["checkpoints"] = sorted({str(c) for c in ck})
            info["weights_are_random_entries"] = int(rnd.sum())
    history = st.history(ref, limit=1)
    if history:
        info["last_commit"] = {k: history[0][k] for k in ("snapshot_id", "written_at", "message")}
    return info


@store_app.command("info")
def store_info(
    store: StoreOpt = None,
    ref: RefOpt = "main",
    as_json: JsonOpt = False,
    all_rois: Annotated[bool, typer.Option("--all", help="List every ROI (default: the first 20).")] = False,
) -> None:
    """What is in the store: ROIs, months, dims, dtype, size on disk, branches and tags."""
    st = _open_store(store)
    info = store_summary(st, ref)
    if as_json:
        _print_json(info)
        return
    t = Table(title=f"store {info['location']} @ {ref}", show_header=False, title_justify="left")
    t.add_column("what", style="bold")
    t.add_column("value")
    t.add_row("snapshot", info["snapshot_id"])
    t.add_row("entries", f"{info['entries']} ({len(info['rois'])} ROIs x {len(info['months'])} months)")
    g = info["grid_shape"]
    t.add_row("grid (dim, y, x)", f"{g['dim']} x {g['y']} x {g['x']}, embed {g['embed']}" if g else "(empty store)")
    t.add_row("storage dtype", info["storage_dtype"])
    t.add_row("size on disk", _human(info["size_on_disk_bytes"]))
    t.add_row("months", ", ".join(f"{m['month']} ({m['entries']})" for m in info["months"]) or "-")
    t.add_row("branches", ", ".join(info["branches"]))
    t.add_row("tags", ", ".join(info["tags"]) or "-")
    if info.get("checkpoints"):
        note = " [yellow](random dev weights)[/]" if info.get("weights_are_random_entries") else ""
        t.add_row("checkpoints", ", ".join(info["checkpoints"]) + note)
    if info.get("last_commit"):
        lc = info["last_commit"]
        t.add_row("last commit", f"{lc['written_at'][:19]} {lc['message']}")
    out.print(t)
    if info["rois"]:
        rows = info["rois"] if all_rois else info["rois"][:20]
        rt = Table(title="ROIs", title_justify="left")
        for col in ("roi id", "label", "geometry", "months"):
            rt.add_column(col)
        for r in rows:
            rt.add_row(r["roi_id"], r["label"] or "-", _roi_text(r["spec"]), str(r["months"]))
        out.print(rt)
        if len(rows) < len(info["rois"]):
            out.print(f"... and {len(info['rois']) - len(rows)} more (--all lists every ROI)")


def _roi_text(spec: dict[str, Any]) -> str:
    if spec.get("type") == "PointBuffer":
        return f"{spec['lon']:.5f}, {spec['lat']:.5f} +- {spec['buffer_m']:g} m"
    if spec.get("type") == "BBox":
        return f"bbox {spec['minlon']:.4f},{spec['minlat']:.4f},{spec['maxlon']:.4f},{spec['maxlat']:.4f}"
    return json.dumps(spec)


@store_app.command("log")
def store_log(
    store: StoreOpt = None,
    ref: RefOpt = "main",
    limit: Annotated[int, typer.Option("--limit", "-n", help="How many commits (newest first).")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """Versions (commits) of a branch or tag, newest first, with their run metadata."""
    st = _open_store(store)
    history = st.history(ref, limit=limit)
    if as_json:
        _print_json(history)
        return
    by_snapshot: dict[str, list[str]] = {}
    for name, sid in st.tags().items():
        by_snapshot.setdefault(sid, []).append(name)
    t = Table(title=f"history of {ref} in {st.config.location}", title_justify="left")
    for col in ("snapshot", "written (UTC)", "tags", "message", "written/skipped/failed", "run"):
        t.add_column(col)
    for h in history:
        md = h.get("metadata") or {}
        counts = md.get("counts") or {}
        c = f"{counts.get('written', '-')}/{counts.get('skipped', '-')}/{counts.get('failed', '-')}" if counts else "-"
        run = md.get("flow_run_name") or ""
        if md.get("code_version"):
            run = f"{run} ({md['code_version']})".strip()
        t.add_row(
            h["snapshot_id"],
            h["written_at"][:19],
            ", ".join(by_snapshot.get(h["snapshot_id"], [])),
            h["message"],
            c,
            run or "-",
        )
    out.print(t)


@store_app.command("tags")
def store_tags(store: StoreOpt = None, as_json: JsonOpt = False) -> None:
    """Tags (releases) and the snapshots they point at."""
    st = _open_store(store)
    tags = st.tags()
    if as_json:
        _print_json(tags)
        return
    if not tags:
        out.print(f"no tags in {st.config.location} (create one with: {PROG} store tag NAME)")
        return
    t = Table(title=f"tags of {st.config.location}", title_justify="left")
    t.add_column("tag")
    t.add_column("snapshot")
    t.add_column("message")
    for name, sid in tags.items():
        msg = ""
        hist = st.history(sid, limit=1)
        if hist:
            msg = hist[0]["message"]
        t.add_row(name, sid, msg)
    out.print(t)


@store_app.command("tag")
def store_tag(
    name: Annotated[str, typer.Argument(help="Tag name, e.g. 2026-11 or v1.")],
    store: StoreOpt = None,
    ref: Annotated[str, typer.Option("--ref", help="What to tag: branch, tag or snapshot id.")] = "main",
) -> None:
    """Tag a version (default: the tip of main). Tags never move."""
    st = _open_store(store)
    sid = st.tag(name, st.resolve(ref))
    out.print(f"tagged {sid} as {name}")


@store_app.command("export")
def store_export(
    out_dir: Annotated[Path, typer.Argument(help="Target folder (must not exist or be empty).")],
    store: StoreOpt = None,
    ref: RefOpt = "main",
) -> None:
    """Export one version to a plain Zarr v3 folder (readable with xarray/zarr alone)."""
    st = _open_store(store)
    path = st.export(str(out_dir), ref=ref)
    out.print(f"exported {st.config.location} @ {ref} ({st.resolve(ref)}) to {path}")
    out.print(f"read it with: xarray.open_zarr({path!r}, consolidated=False)")


# ---------------------------------------------------------------------------------- quicklook / search


@app.command()
def quicklook(
    store: StoreOpt = None,
    roi: Annotated[
        str | None, typer.Option("--roi", "-r", help="ROI id or label (optional when the store holds one ROI).")
    ] = None,
    month: Annotated[str | None, typer.Option("--month", "-m", help="YYYY-MM (default: the ROI's latest).")] = None,
    ref: RefOpt = "main",
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for the PNGs.")] = Path("quicklooks"),
    query: Annotated[
        str | None, typer.Option("--query", "-q", help="Caption: add its similarity heatmap over the RGB.")
    ] = None,
    cache_dir: CacheDirOpt = None,
    backend: Annotated[
        str | None,
        typer.Option("--backend", "-b", help="Refetch the RGB with this provider (default: the recorded one)."),
    ] = None,
    checkpoint: Annotated[
        str | None, typer.Option("--checkpoint", "-c", help="Text encoder for --query (default: the store's).")
    ] = None,
    device: DeviceOpt = None,
) -> None:
    """PNGs for one ROI and month: RGB beside the grid embedding's first 3 PCs; similarity across months."""
    from rs_embed_core.quicklook import make_quicklooks
    from rs_embed_core.store import open_embeddings

    location = _need_store(store)
    ds = open_embeddings(location, ref=ref)
    heatmap = None
    if query is not None:
        from rs_embed_core.search import patch_heatmap

        def heatmap(d: Any, roi_id: str, m: str) -> Any:
            return patch_heatmap(d, roi_id, m, query, ref=ref, checkpoint=checkpoint, device=device).values

    res = make_quicklooks(ds, roi, month, out_dir, cache=cache_dir, backend=backend, query=query, heatmap=heatmap)
    for note in res.notes:
        err.print(f"[yellow]note:[/] {note}")
    name = f"{res.roi_label} ({res.roi_id})" if res.roi_label else res.roi_id
    source = "from the chip cache" if res.chip_source == "cache" else "fetched again from the provider"
    out.print(f"{name} {res.month} (RGB {source}):")
    out.print(f"  {res.entry_png}")
    out.print(f"  {res.similarity_png}")


@app.command()
def search(
    caption: Annotated[str, typer.Argument(help='What to look for, e.g. "an airport with runways".')],
    store: StoreOpt = None,
    month: Annotated[
        list[str] | None, typer.Option("--month", "-m", help="Only these months (YYYY-MM; repeatable).")
    ] = None,
    k: Annotated[int, typer.Option("--k", "-k", help="How many results.")] = 20,
    ref: RefOpt = "main",
    checkpoint: Annotated[
        str | None, typer.Option("--checkpoint", "-c", help="Text encoder (default: the store's checkpoint).")
    ] = None,
    device: DeviceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Rank stored entries by similarity to a caption (RemoteCLIP joint space)."""
    from rs_embed_core.search import text_search

    location = _need_store(store)
    months = _split(month) or None
    df = text_search(location, caption, ref=ref, months=months, k=k, checkpoint=checkpoint, device=device)
    rows = [
        {
            "rank": i + 1,
            "roi_id": str(r.roi_id),
            "label": str(r.label),
            "month": str(r.time)[:7],
            "score": round(float(r.score), 6),
            "lon": float(r.lon),
            "lat": float(r.lat),
        }
        for i, r in enumerate(df.itertuples(index=False))
    ]
    if as_json:
        _print_json(rows)
        return
    t = Table(title=f"{caption!r} in {location} @ {ref}", title_justify="left")
    for col in ("#", "roi id", "label", "month", "score", "lon, lat"):
        t.add_column(col)
    for r in rows:
        t.add_row(
            str(r["rank"]),
            r["roi_id"],
            r["label"] or "-",
            r["month"],
            f"{r['score']:.4f}",
            f"{r['lon']:.4f}, {r['lat']:.4f}",
        )
    out.print(t)
    if df.attrs.get("weights_are_random"):
        err.print("[yellow]note:[/] entries were made with RANDOM dev weights: scores are meaningless")


@app.command()
def changes(
    month: Annotated[str | None, typer.Option("--month", "-m", help="YYYY-MM (default: the latest month).")] = None,
    store: StoreOpt = None,
    k: Annotated[int, typer.Option("--k", "-k", help="How many ROIs.")] = 20,
    ref: RefOpt = "main",
    vector: Annotated[str, typer.Option(help="pooled | image_embedding.")] = "pooled",
    max_gap: Annotated[int, typer.Option("--max-gap", help="Previous entry at most this many months earlier.")] = 1,
    as_json: JsonOpt = False,
) -> None:
    """ROIs that changed most since their previous month (cosine distance of stored vectors)."""
    from rs_embed_core.search import change_report_rows

    location = _need_store(store)
    rows = change_report_rows(location, month, vector=vector, ref=ref, k=k, max_gap_months=max_gap)
    if as_json:
        _print_json(rows)
        return
    if not rows:
        out.print(
            f"no ROI has an entry {month or 'in the latest month'} and a previous one within {max_gap} month(s): "
            "nothing to compare"
        )
        return
    t = Table(title=f"largest changes in {rows[0]['month']} ({vector}) in {location} @ {ref}", title_justify="left")
    for col in ("#", "roi id", "label", "since", "distance (1 - cos)", "lon, lat"):
        t.add_column(col)
    for r in rows:
        dist = "n/a" if r["distance"] is None else f"{r['distance']:.5f}"
        ll = "-" if r["lon"] is None else f"{r['lon']:.4f}, {r['lat']:.4f}"
        t.add_row(str(r["rank"]), r["roi_id"], r["label"] or "-", r["previous_month"], dist, ll)
    out.print(t)


# ---------------------------------------------------------------------------------- cache / checkpoint / deploy


def _cache(cache_dir: str | None) -> Any:
    from rs_embed_core.cache import ChipCache, cache_disabled, default_cache_dir

    if cache_dir is None and cache_disabled():
        raise CliError("the chip cache is switched off (RS_EMBED_CACHE_DIR=off); pass --dir to inspect a folder")
    return ChipCache(cache_dir) if cache_dir else ChipCache(default_cache_dir())


CacheFolderOpt = Annotated[
    str | None, typer.Option("--dir", help="Cache folder (default: $RS_EMBED_CACHE_DIR or the user cache).")
]


@cache_app.command("info")
def cache_info(cache_dir: CacheFolderOpt = None, as_json: JsonOpt = False) -> None:
    """Where the chip cache is, how many chips it holds and their size."""
    info = _cache(cache_dir).info()
    if as_json:
        _print_json(info)
        return
    out.print(f"chip cache {info['root']}: {info['entries']} chips, {_human(info['bytes'])}")


@cache_app.command("prune")
def cache_prune(
    older_than_days: Annotated[
        float, typer.Option("--older-than-days", help="Delete chips not used for this many days.")
    ],
    cache_dir: CacheFolderOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete chips not used for N days (chips being written are left alone)."""
    res = _cache(cache_dir).prune(older_than_days)
    if as_json:
        _print_json(res)
        return
    out.print(f"chip cache {res['root']}: removed {res['removed']} chips, freed {_human(res['freed_bytes'])}")


@checkpoint_app.command("make-dev")
def checkpoint_make_dev(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write (must not exist or be empty).")],
    arch: Annotated[
        str, typer.Option("--arch", help="ViT-B-32 (real layout, ~600 MB) or tiny (~2M parameters, for tests).")
    ] = "ViT-B-32",
    seed: Annotated[int, typer.Option(help="Random seed of the weights.")] = 0,
) -> None:
    """Write a RANDOM-WEIGHT checkpoint (NOT real RemoteCLIP weights) for offline demos and tests."""
    from rs_embed_core.models import make_dev_checkpoint

    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise CliError(f"{out_dir} exists and is not an empty folder; choose a new folder for the dev checkpoint")
    path = make_dev_checkpoint(out_dir, arch=arch, seed=seed)
    out.print(f"wrote a RANDOM-WEIGHT dev checkpoint ({arch}, seed {seed}) to {path}")
    out.print("  NOT REAL REMOTECLIP WEIGHTS: embeddings made with it are meaningless (entries say weights_are_random)")
    out.print(f"  use it with: {PROG} embed ... --checkpoint {path}   (or export {CHECKPOINT_ENV}={path})")


def _project_root(start: Path) -> Path | None:
    for folder in (start, *start.parents):
        if (folder / "deployments" / "prefect.yaml").is_file():
            return folder
    return None


def _prefect_api_url() -> str | None:
    from prefect.settings import PREFECT_API_URL

    return os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value()


@app.command()
def deploy(
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="prefect.yaml to apply (default: deployments/prefect.yaml).")
    ] = None,
    name: Annotated[
        list[str] | None, typer.Option("--name", "-n", help="Only this deployment (repeatable); default: all.")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the prefect command and exit.")] = False,
) -> int:
    """Create/update the Prefect deployments (prefect deploy --all) from the project folder."""
    if file is None:
        root = _project_root(Path.cwd()) or _project_root(Path(__file__).resolve().parent)
        if root is None:
            raise CliError("deployments/prefect.yaml not found here or above; pass --file PATH/TO/prefect.yaml")
        file = root / "deployments" / "prefect.yaml"
    else:
        if not file.is_file():
            raise CliError(f"{file} does not exist")
        file = file.resolve()
        # Entrypoints in prefect.yaml are relative to the project root (the folder above deployments/).
        root = file.parent.parent if file.parent.name == "deployments" else file.parent
    prefect_bin = shutil.which(
        "prefect", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    )
    cmd = [prefect_bin or "prefect", "deploy", "--no-prompt", "--prefect-file", str(file)]
    cmd += [a for n in _split(name) for a in ("--name", n)] if name else ["--all"]
    if dry_run:
        out.print(f"(cd {root} && {' '.join(cmd)})")
        return 0
    api = _prefect_api_url()
    if not api:
        raise CliError(
            "no Prefect server configured: start one (prefect server start) and set PREFECT_API_URL "
            "(e.g. prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api), or use Prefect Cloud"
        )
    if prefect_bin is None:
        raise CliError("the prefect command is not on PATH (pip install prefect)")
    err.print(f"applying {file} to {api} from {root}")
    rc = subprocess.run(cmd, cwd=root, check=False).returncode
    if rc != 0:
        print(f"{PROG}: error: prefect deploy failed with exit status {rc} (its output is above)", file=sys.stderr)
        return rc
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
