"""Planning a run: which (ROI, month) entries to compute, and in which batches.

Pure functions over specs; the Prefect flows call them and stay free of domain
logic. Nothing here touches pixels or weights.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import SpecError
from .grid import roi_grid
from .provenance import entry_digest
from .rois import resolve_rois
from .specs import (
    ROI,
    OutputSpec,
    SensorSpec,
    TemporalSpec,
    check_input_prep,
    parse_roi,
    spec_from_dict,
)
from .staging import batch_key

DISPATCHES = ("local", "deployment")
MAX_BATCH_SIZE = 4096
# The ViT input side; a "tile" chip of N x M tiles of this many pixels costs N*M
# forward slots. Close enough for batching even if a model uses another size.
TILE_PX = 224
# Fields of the model's static metadata that identify the computation (with the
# fetch key, input prep and pooling they make the entry digest).
MODEL_IDENTITY_FIELDS = ("model", "model_arch", "checkpoint_sha256", "preprocess_path")


@dataclass(frozen=True)
class RunRequest:
    """A validated embedding request: ROIs x windows with one sensor/output setup."""

    rois: tuple[ROI, ...]
    windows: tuple[TemporalSpec, ...]
    sensor: SensorSpec
    output: OutputSpec
    input_prep: str = "resize"
    batch_size: int = 64
    model: str = "remoteclip"

    @property
    def n_entries(self) -> int:
        return len(self.rois) * len(self.windows)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rois": [r.to_dict() for r in self.rois],
            "windows": [w.to_dict() for w in self.windows],
            "sensor": self.sensor.to_dict(),
            "output": self.output.to_dict(),
            "input_prep": self.input_prep,
            "batch_size": self.batch_size,
            "model": self.model,
        }


def _spec(value: Any, cls: type, name: str) -> Any:
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        data = dict(value)
        data.setdefault("type", cls.__name__)
        if data["type"] != cls.__name__:
            raise SpecError(name, value, f"must be a {cls.__name__} (got type {data['type']!r})")
        return spec_from_dict(data)
    raise SpecError(name, value, f"must be a {cls.__name__} or its dict form")


def parse_window(value: Any) -> TemporalSpec:
    """A window from a spec, its dict, ``'YYYY-MM'`` or ``[start, end)`` dates."""
    if isinstance(value, TemporalSpec):
        return value
    if isinstance(value, Mapping):
        return _spec(value, TemporalSpec, "window")
    if isinstance(value, str):
        if len(value.strip()) == 7:
            return TemporalSpec.parse_month(value)
        if ".." in value:
            start, end = value.split("..", 1)
            return TemporalSpec.range(start, end)
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return TemporalSpec.range(*value)
    raise SpecError("window", value, "must be 'YYYY-MM', 'START..END', [start, end] or a TemporalSpec")


def build_request(
    rois: Any,
    *,
    months: Sequence[Any] | None = None,
    window: Any = None,
    sensor: Any = None,
    output: Any = None,
    input_prep: Any = "resize",
    batch_size: int = 64,
    checkpoint: str | None = None,
    model: str = "remoteclip",
    default_buffer_m: float | None = None,
) -> RunRequest:
    """Validate loose flow parameters into a :class:`RunRequest`.

    Args:
        rois: ROIs inline or a path to a CSV/GeoJSON file.
        months: list of ``'YYYY-MM'`` (or windows); one entry per ROI and month.
        window: one window instead of ``months``; it is split into calendar months
            when it spans whole months, else kept as one entry time.
        sensor: ``SensorSpec`` or its dict (partial dicts allowed).
        output: ``OutputSpec`` or its dict.
        input_prep: ``'resize'`` or ``'tile'``.
        batch_size: forward slots per inference batch.
        checkpoint: overrides ``sensor.checkpoint`` when given.
        model: registered model name.
        default_buffer_m: buffer for file points without one.
    """
    roi_list = resolve_rois(rois, default_buffer_m=default_buffer_m)
    if (months is None) == (window is None):
        raise SpecError("months", months, "give exactly one of months=[...] or window=...")
    if months is not None:
        if isinstance(months, str):
            months = [months]
        windows = [parse_window(m) for m in months]
    else:
        w = parse_window(window)
        windows = w.months() if all(m.start >= w.start and m.end <= w.end for m in w.months()) else [w]
    if not windows:
        raise SpecError("months", months, "must name at least one month")
    keys = [w.time_key for w in windows]
    if len(set(keys)) != len(keys):
        raise SpecError("months", [w.label() for w in windows], "must not repeat a month (entries are keyed by start)")
    sensor_spec = _spec(sensor, SensorSpec, "sensor")
    if checkpoint is not None:
        sensor_spec = dataclasses.replace(sensor_spec, checkpoint=checkpoint)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise SpecError("batch_size", batch_size, f"must be an integer 1..{MAX_BATCH_SIZE}")
    return RunRequest(
        rois=roi_list,
        windows=tuple(sorted(windows, key=lambda w: w.start)),
        sensor=sensor_spec,
        output=_spec(output, OutputSpec, "output"),
        input_prep=check_input_prep(input_prep),
        batch_size=batch_size,
        model=model,
    )


def check_dispatch(value: Any) -> str:
    if value not in DISPATCHES:
        raise SpecError("dispatch", value, f"must be one of {', '.join(DISPATCHES)}")
    return value


def previous_month(now: dt.datetime | None = None) -> TemporalSpec:
    """The calendar month before ``now`` (UTC)."""
    now = now or dt.datetime.now(dt.UTC)
    first = now.date().replace(day=1)
    last_month = first - dt.timedelta(days=1)
    return TemporalSpec.month(last_month.year, last_month.month)


def month_range(start: str, end: str) -> list[TemporalSpec]:
    """Calendar months from ``start`` to ``end`` inclusive (both ``'YYYY-MM'``)."""
    first, last = TemporalSpec.parse_month(start), TemporalSpec.parse_month(end)
    if last.start < first.start:
        raise SpecError("end", end, f"must not be before start ({start})")
    return TemporalSpec.range(first.start, last.end).months()


# -- entries ---------------------------------------------------------------------------------


def time_iso(temporal: TemporalSpec) -> str:
    """How the store keys an entry's time: the ISO date of the window start."""
    return temporal.time_key.isoformat()


@dataclass(frozen=True)
class WorkItem:
    """One (ROI, window) entry of a run."""

    roi: ROI
    temporal: TemporalSpec
    fetch_key: str
    digest: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.roi.id, time_iso(self.temporal))

    def to_dict(self) -> dict[str, Any]:
        return {
            "roi": self.roi.to_dict(),
            "temporal": self.temporal.to_dict(),
            "fetch_key": self.fetch_key,
            "digest": self.digest,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WorkItem:
        return cls(parse_roi(data["roi"]), spec_from_dict(data["temporal"]), data["fetch_key"], data.get("digest"))


def model_identity(model_meta: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a model's static metadata that enter entry digests (plus checkpoint and random-weights flag)."""
    missing = [k for k in MODEL_IDENTITY_FIELDS if k not in model_meta]
    if missing:
        raise KeyError(f"model metadata lacks {', '.join(missing)}")
    out = {k: model_meta[k] for k in MODEL_IDENTITY_FIELDS}
    # Informational (not in the digest): reports warn about random dev weights.
    out["checkpoint"] = model_meta.get("checkpoint")
    out["weights_are_random"] = bool(model_meta.get("weights_are_random", False))
    return out


def expected_digest(fetch_key: str, identity: Mapping[str, Any], input_prep: str, output: OutputSpec) -> str:
    """The entry digest an entry will get: computed before fetching, for skip decisions."""
    return entry_digest({"fetch_key": fetch_key, **identity, "input_prep": input_prep, "pooling": output.pooling})


@dataclass(frozen=True)
class Plan:
    """Entries to compute and entries skipped because the store already has them."""

    todo: tuple[WorkItem, ...]
    skipped: tuple[WorkItem, ...]


def plan_entries(
    request: RunRequest,
    fetch_keys: Mapping[tuple[str, str], str],
    identity: Mapping[str, Any],
    existing: Mapping[tuple[str, str], str],
    *,
    force: bool = False,
) -> Plan:
    """Split the request into work and skips.

    Args:
        request: the validated request.
        fetch_keys: (roi id, time iso) -> fetch key (the provider's canonical request hash).
        identity: :func:`model_identity` of the model that will run.
        existing: (roi id, time iso) -> entry digest already in the store.
        force: recompute and rewrite even identical entries.
    """
    todo, skipped = [], []
    for temporal in request.windows:
        for roi in request.rois:
            key = (roi.id, time_iso(temporal))
            fk = fetch_keys[key]
            digest = expected_digest(fk, identity, request.input_prep, request.output)
            item = WorkItem(roi, temporal, fk, digest)
            (skipped if not force and existing.get(key) == digest else todo).append(item)
    return Plan(tuple(todo), tuple(skipped))


# -- batches ---------------------------------------------------------------------------------


def forward_slots(roi: ROI, sensor: SensorSpec, input_prep: str, tile_px: int = TILE_PX) -> int:
    """How many model inputs one chip becomes: 1 when resized, N*M tiles when tiled."""
    if input_prep == "resize":
        return 1
    grid = roi_grid(roi, sensor.scale_m)
    return max(1, math.ceil(grid.width / tile_px)) * max(1, math.ceil(grid.height / tile_px))


def make_batches(
    items: Sequence[Mapping[str, Any]],
    *,
    batch_size: int,
    sensor: SensorSpec,
    output: OutputSpec,
    input_prep: str,
    identity: Mapping[str, Any],
) -> list[dict[str, Any]]:
    """Group fetched entries into batches of at most ``batch_size`` forward slots.

    A chip is never split across batches (its tiles are pooled together); a chip
    with more tiles than ``batch_size`` gets a batch of its own. Each batch carries
    a content key over its entries, the model identity and the output settings, so
    a rerun recognises a batch it already staged.

    Args:
        items: dicts with ``item`` (a :class:`WorkItem` dict) and ``chip`` (a chip
            reference dict), in plan order.
    """
    batches: list[dict[str, Any]] = []
    current: list[Mapping[str, Any]] = []
    slots = 0
    for entry in items:
        work = WorkItem.from_dict(entry["item"])
        n = forward_slots(work.roi, sensor, input_prep)
        if current and slots + n > batch_size:
            batches.append(_batch(current, sensor, output, input_prep, identity))
            current, slots = [], 0
        current.append(entry)
        slots += n
    if current:
        batches.append(_batch(current, sensor, output, input_prep, identity))
    return batches


def _batch(
    entries: Sequence[Mapping[str, Any]],
    sensor: SensorSpec,
    output: OutputSpec,
    input_prep: str,
    identity: Mapping[str, Any],
) -> dict[str, Any]:
    key = batch_key(
        {
            "entries": [e["item"]["digest"] or e["item"]["fetch_key"] for e in entries],
            "rois": [e["item"]["roi"] for e in entries],  # labels travel into metadata
            "identity": dict(identity),
            "output": output.to_dict(),
            "input_prep": input_prep,
            "sensor": sensor.to_dict(),
        }
    )
    return {"key": key, "entries": [dict(e) for e in entries]}
