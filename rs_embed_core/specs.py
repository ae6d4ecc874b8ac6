"""Frozen, validated, canonical request specs.

Every spec is a frozen dataclass: hashable, comparable, and round-trips through
``to_dict``/``spec_from_dict`` (plain JSON). Loose input is accepted at
construction (strings for dates, lists for bands) and stored in canonical form, so
two requests that mean the same thing hash the same (that is what the chip cache
and the Prefect cache policies key on).
"""

from __future__ import annotations

import calendar
import datetime as dt
import hashlib
import json
import math
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from .errors import SpecError

DEFAULT_COLLECTION = "COPERNICUS/S2_SR_HARMONIZED"
DEFAULT_BANDS = ("B4", "B3", "B2")
HF_PREFIX = "hf:"
COMPOSITES = ("median", "mosaic")
POOLINGS = ("mean", "max")
OUTPUT_MODES = ("grid", "pooled")
INPUT_PREPS = ("resize", "tile")
CLOUD_MASKS = ("none", "cloud_score_plus")
# UTM is defined from 80S to 84N; polar regions need UPS, which we do not implement.
MIN_LAT, MAX_LAT = -80.0, 84.0
# Largest half-side of a ROI: a 50 km square is 5000 x 5000 px at 10 m (~150 MB of
# uint16 RGB), the most we hold in memory for one chip. Earth Engine requests are
# split below that size by the provider.
MAX_BUFFER_M = 25_000.0
MAX_EXTENT_M = 2 * MAX_BUFFER_M

InputPrep = Literal["resize", "tile"]


def _finite(name: str, value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise SpecError(name, value, "must be a number") from None
    if not math.isfinite(out):
        raise SpecError(name, value, "must be a finite number")
    return out


def _lon(name: str, value: Any) -> float:
    out = _finite(name, value)
    if not -180.0 <= out <= 180.0:
        raise SpecError(name, value, "longitude must be within [-180, 180] degrees")
    return out


def _lat(name: str, value: Any) -> float:
    out = _finite(name, value)
    if not -90.0 <= out <= 90.0:
        raise SpecError(name, value, "latitude must be within [-90, 90] degrees")
    if not MIN_LAT <= out <= MAX_LAT:
        raise SpecError(
            name,
            value,
            f"latitude must be within the UTM band [{MIN_LAT}, {MAX_LAT}]; polar (UPS) grids are not supported",
        )
    return out


def _label(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise SpecError("label", value, "must be a string")
    if len(value) > 200 or any(ord(c) < 32 for c in value):
        raise SpecError("label", value, "must be at most 200 printable characters")
    return value


def _short_hash(payload: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:12]


def canonical_json(obj: Any) -> str:
    """Stable JSON text: sorted keys, no whitespace, specs turned into dicts."""
    return json.dumps(_jsonable(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (dt.date, dt.datetime)):
        return obj.isoformat()
    return obj


@dataclass(frozen=True)
class PointBuffer:
    """A square ROI of half-side ``buffer_m`` metres (on the ground) around a point."""

    lon: float
    lat: float
    buffer_m: float
    label: str | None = field(default=None, compare=False, kw_only=True)

    def __post_init__(self) -> None:
        object.__setattr__(self, "lon", _lon("lon", self.lon))
        object.__setattr__(self, "lat", _lat("lat", self.lat))
        buf = _finite("buffer_m", self.buffer_m)
        if not 0 < buf <= MAX_BUFFER_M:
            raise SpecError("buffer_m", self.buffer_m, f"must be > 0 and <= {MAX_BUFFER_M:g} metres")
        object.__setattr__(self, "buffer_m", buf)
        object.__setattr__(self, "label", _label(self.label))

    @property
    def center(self) -> tuple[float, float]:
        return (self.lon, self.lat)

    @property
    def id(self) -> str:
        """Stable id from the geometry alone (the label is not part of it)."""
        return "pb-" + _short_hash(self._geometry())

    def _geometry(self) -> dict[str, Any]:
        return {"type": "PointBuffer", "lon": self.lon, "lat": self.lat, "buffer_m": self.buffer_m}

    def to_dict(self) -> dict[str, Any]:
        out = self._geometry()
        if self.label is not None:
            out["label"] = self.label
        return out


@dataclass(frozen=True)
class BBox:
    """A lon/lat box. Boxes across the antimeridian are rejected (split them in two)."""

    minlon: float
    minlat: float
    maxlon: float
    maxlat: float
    label: str | None = field(default=None, compare=False, kw_only=True)

    def __post_init__(self) -> None:
        for name in ("minlon", "maxlon"):
            object.__setattr__(self, name, _lon(name, getattr(self, name)))
        for name in ("minlat", "maxlat"):
            object.__setattr__(self, name, _lat(name, getattr(self, name)))
        if self.minlon > self.maxlon:
            raise SpecError(
                "minlon",
                self.minlon,
                f"must be <= maxlon ({self.maxlon}); a box across the antimeridian is not "
                "supported: split it into two boxes, one on each side of 180 degrees",
            )
        if self.minlon == self.maxlon:
            raise SpecError("maxlon", self.maxlon, "must be > minlon (the box has zero width)")
        if self.minlat >= self.maxlat:
            raise SpecError("maxlat", self.maxlat, f"must be > minlat ({self.minlat})")
        # Ground size check with a spherical approximation; the exact grid comes later.
        lat_m = (self.maxlat - self.minlat) * 111_320.0
        lon_m = (
            (self.maxlon - self.minlon) * 111_320.0 * math.cos(math.radians(min(abs(self.minlat), abs(self.maxlat))))
        )
        if max(lat_m, lon_m) > MAX_EXTENT_M * 1.01:
            raise SpecError(
                "bbox",
                (self.minlon, self.minlat, self.maxlon, self.maxlat),
                f"is about {max(lat_m, lon_m) / 1000:.1f} km across; at most {MAX_EXTENT_M / 1000:g} km is allowed",
            )
        object.__setattr__(self, "label", _label(self.label))

    @property
    def center(self) -> tuple[float, float]:
        return ((self.minlon + self.maxlon) / 2, (self.minlat + self.maxlat) / 2)

    @property
    def id(self) -> str:
        return "bb-" + _short_hash(self._geometry())

    def _geometry(self) -> dict[str, Any]:
        return {
            "type": "BBox",
            "minlon": self.minlon,
            "minlat": self.minlat,
            "maxlon": self.maxlon,
            "maxlat": self.maxlat,
        }

    def to_dict(self) -> dict[str, Any]:
        out = self._geometry()
        if self.label is not None:
            out["label"] = self.label
        return out


ROI = PointBuffer | BBox


def _as_date(name: str, value: Any) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value.strip()[:10])
        except ValueError:
            pass
    raise SpecError(name, value, "must be a date or an ISO date string 'YYYY-MM-DD'")


@dataclass(frozen=True)
class TemporalSpec:
    """A half-open time window ``[start, end)`` in whole days (UTC)."""

    start: dt.date
    end: dt.date

    def __post_init__(self) -> None:
        start = _as_date("start", self.start)
        end = _as_date("end", self.end)
        if end <= start:
            raise SpecError("end", self.end, f"must be after start ({start.isoformat()}); end is exclusive")
        if start.year < 2015:
            raise SpecError("start", self.start, "must be 2015-01-01 or later (Sentinel-2 launched in 2015)")
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "end", end)

    @classmethod
    def range(cls, start: Any, end: Any) -> TemporalSpec:
        """Window from ``start`` (inclusive) to ``end`` (exclusive)."""
        return cls(start, end)

    @classmethod
    def month(cls, year: int, month: int) -> TemporalSpec:
        if not isinstance(month, int) or not 1 <= month <= 12:
            raise SpecError("month", month, "must be an integer 1..12")
        if not isinstance(year, int):
            raise SpecError("year", year, "must be an integer")
        start = dt.date(year, month, 1)
        end = dt.date(year + (month == 12), month % 12 + 1, 1)
        return cls(start, end)

    @classmethod
    def year(cls, year: int) -> TemporalSpec:
        if not isinstance(year, int):
            raise SpecError("year", year, "must be an integer")
        return cls(dt.date(year, 1, 1), dt.date(year + 1, 1, 1))

    @classmethod
    def parse_month(cls, text: str) -> TemporalSpec:
        """``'YYYY-MM'`` -> that calendar month."""
        try:
            year, month = (int(p) for p in str(text).split("-"))
        except ValueError:
            raise SpecError("month", text, "must look like 'YYYY-MM'") from None
        return cls.month(year, month)

    @property
    def is_month(self) -> bool:
        last = calendar.monthrange(self.start.year, self.start.month)[1]
        return self.start.day == 1 and self.end == self.start + dt.timedelta(days=last)

    @property
    def time_key(self) -> dt.date:
        """The date an entry is stored under: the start of the window (a month start)."""
        return self.start

    def months(self) -> list[TemporalSpec]:
        """The calendar months that intersect this window."""
        out = []
        y, m = self.start.year, self.start.month
        while dt.date(y, m, 1) < self.end:
            out.append(TemporalSpec.month(y, m))
            y, m = (y + 1, 1) if m == 12 else (y, m + 1)
        return out

    def label(self) -> str:
        if self.is_month:
            return f"{self.start.year:04d}-{self.start.month:02d}"
        return f"{self.start.isoformat()}..{self.end.isoformat()}"

    def to_dict(self) -> dict[str, Any]:
        return {"type": "TemporalSpec", "start": self.start.isoformat(), "end": self.end.isoformat()}


@dataclass(frozen=True)
class SensorSpec:
    """What imagery to fetch and how to composite it.

    ``collection="hf:<repo id or path>"`` is the rs-embed way to swap the model
    checkpoint. It is moved into ``checkpoint`` at construction and the imagery
    collection falls back to the default, so an ``hf:`` string can never reach a
    provider.
    """

    collection: str = DEFAULT_COLLECTION
    bands: tuple[str, ...] = DEFAULT_BANDS
    scale_m: float = 10.0
    cloudy_pct: float = 30.0
    composite: str = "median"
    cloud_mask: str = "none"
    cloud_score_threshold: float = 0.6
    checkpoint: str | None = None

    def __post_init__(self) -> None:
        coll = self.collection
        if not isinstance(coll, str) or not coll.strip():
            raise SpecError("collection", coll, "must be a non-empty string such as 'COPERNICUS/S2_SR_HARMONIZED'")
        coll = coll.strip()
        ckpt = self.checkpoint
        if coll.lower().startswith(HF_PREFIX):
            target = coll[len(HF_PREFIX) :].strip()
            if not target:
                raise SpecError("collection", coll, "'hf:' must be followed by a Hugging Face repo id or a local path")
            if ckpt is not None and ckpt != target:
                raise SpecError("checkpoint", ckpt, f"conflicts with collection={coll!r}; give the checkpoint once")
            ckpt, coll = target, DEFAULT_COLLECTION
        if ckpt is not None and (not isinstance(ckpt, str) or not ckpt.strip()):
            raise SpecError("checkpoint", ckpt, "must be a Hugging Face repo id or a local path")
        object.__setattr__(self, "collection", coll)
        object.__setattr__(self, "checkpoint", ckpt.strip() if ckpt else None)

        bands = (self.bands,) if isinstance(self.bands, str) else self.bands
        try:
            bands = tuple(str(b).strip() for b in bands)
        except TypeError:
            raise SpecError(
                "bands", self.bands, "must be a sequence of band names such as ('B4', 'B3', 'B2')"
            ) from None
        if not bands or any(not b for b in bands) or len(set(bands)) != len(bands):
            raise SpecError("bands", self.bands, "must be distinct, non-empty band names such as ('B4', 'B3', 'B2')")
        object.__setattr__(self, "bands", bands)

        scale = _finite("scale_m", self.scale_m)
        if not 0 < scale <= 1000:
            raise SpecError("scale_m", self.scale_m, "must be > 0 and <= 1000 metres")
        object.__setattr__(self, "scale_m", scale)
        pct = _finite("cloudy_pct", self.cloudy_pct)
        if not 0 <= pct <= 100:
            raise SpecError("cloudy_pct", self.cloudy_pct, "must be within 0..100")
        object.__setattr__(self, "cloudy_pct", pct)
        if self.composite not in COMPOSITES:
            raise SpecError("composite", self.composite, f"must be one of {', '.join(COMPOSITES)}")
        if self.cloud_mask not in CLOUD_MASKS:
            raise SpecError("cloud_mask", self.cloud_mask, f"must be one of {', '.join(CLOUD_MASKS)}")
        thr = _finite("cloud_score_threshold", self.cloud_score_threshold)
        if not 0 <= thr <= 1:
            raise SpecError("cloud_score_threshold", self.cloud_score_threshold, "must be within 0..1")
        object.__setattr__(self, "cloud_score_threshold", thr)

    def imagery_dict(self) -> dict[str, Any]:
        """The settings that change pixels (the checkpoint does not): fetch cache keys use this."""
        out = {k: v for k, v in self.to_dict().items() if k not in ("checkpoint", "type")}
        if self.cloud_mask == "none":
            out.pop("cloud_score_threshold")
        return out

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "SensorSpec"}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out


@dataclass(frozen=True)
class OutputSpec:
    """What to return: the patch-token ``grid`` or a ``pooled`` vector (mean or max)."""

    mode: str = "pooled"
    pooling: str = "mean"

    def __post_init__(self) -> None:
        if self.mode not in OUTPUT_MODES:
            raise SpecError("mode", self.mode, f"must be one of {', '.join(OUTPUT_MODES)}")
        if self.pooling not in POOLINGS:
            raise SpecError("pooling", self.pooling, f"must be one of {', '.join(POOLINGS)}")

    @classmethod
    def pooled(cls, pooling: str = "mean") -> OutputSpec:
        return cls("pooled", pooling)

    @classmethod
    def grid(cls, pooling: str = "mean") -> OutputSpec:
        """Grid output; ``pooling`` still chooses the pooled vector kept in metadata/store."""
        return cls("grid", pooling)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "OutputSpec", "mode": self.mode, "pooling": self.pooling}


def check_input_prep(value: Any) -> InputPrep:
    """Validate ``input_prep``: ``'resize'`` (default) or ``'tile'``."""
    if value is None:
        return "resize"
    if value not in INPUT_PREPS:
        raise SpecError("input_prep", value, f"must be one of {', '.join(INPUT_PREPS)}")
    return value  # type: ignore[return-value]


_TYPES: dict[str, type] = {
    "PointBuffer": PointBuffer,
    "BBox": BBox,
    "TemporalSpec": TemporalSpec,
    "SensorSpec": SensorSpec,
    "OutputSpec": OutputSpec,
}


def spec_from_dict(data: dict[str, Any]) -> Any:
    """Inverse of ``to_dict`` for every spec type (dispatch on ``type``)."""
    if not isinstance(data, dict) or data.get("type") not in _TYPES:
        raise SpecError(
            "type", data.get("type") if isinstance(data, dict) else data, f"must be one of {', '.join(_TYPES)}"
        )
    kwargs = {k: v for k, v in data.items() if k != "type"}
    cls = _TYPES[data["type"]]
    if cls is SensorSpec and "bands" in kwargs:
        kwargs["bands"] = tuple(kwargs["bands"])
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise SpecError(data["type"], data, f"has unknown or missing fields ({exc})") from None


def parse_roi(value: Any) -> ROI:
    """Accept a ROI spec, its dict form, a GeoJSON-like dict, or a 3-/4-sequence."""
    if isinstance(value, (PointBuffer, BBox)):
        return value
    if isinstance(value, dict):
        if value.get("type") in ("PointBuffer", "BBox"):
            return spec_from_dict(value)
        raise SpecError("roi", value, "a dict ROI needs type 'PointBuffer' or 'BBox'")
    if isinstance(value, (list, tuple)):
        if len(value) == 3:
            return PointBuffer(*value)
        if len(value) == 4:
            return BBox(*value)
    raise SpecError(
        "roi", value, "must be a PointBuffer, a BBox, (lon, lat, buffer_m) or (minlon, minlat, maxlon, maxlat)"
    )
