"""ROI lists from CSV or GeoJSON files, or given inline.

Accepted forms (one ROI per row / feature):

* CSV with a header row. Either ``lon,lat,buffer_m`` (a :class:`PointBuffer`) or
  ``minlon,minlat,maxlon,maxlat`` (a :class:`BBox`), plus an optional ``label``
  column (``id`` and ``name`` are accepted as its alias). Blank lines and lines
  starting with ``#`` are ignored. A missing ``buffer_m`` cell falls back to
  ``default_buffer_m`` when one is given.
* GeoJSON: a FeatureCollection, a single Feature or a list of Features. A ``Point``
  needs ``properties.buffer_m`` (or ``default_buffer_m``); a ``Polygon`` /
  ``MultiPolygon`` (or a feature with a ``bbox`` member) becomes the lon/lat
  bounding box of its coordinates, because the product embeds rectangles. The label
  comes from ``properties.label`` / ``id`` / ``name`` or the feature ``id``.
* Inline: ROI specs, their ``to_dict`` form, dicts keyed like the CSV columns, or
  3-/4-sequences (see :func:`rs_embed_core.specs.parse_roi`).

Every error names the file and the line or feature that caused it. Two ROIs with the
same geometry (same ``roi.id``) or the same label are rejected: the store keys
entries by ROI id, so a duplicate would silently overwrite its twin.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .errors import SpecError
from .specs import ROI, BBox, PointBuffer, parse_roi

POINT_COLUMNS = ("lon", "lat", "buffer_m")
BBOX_COLUMNS = ("minlon", "minlat", "maxlon", "maxlat")
LABEL_COLUMNS = ("label", "id", "name")
ROI_FILE_SUFFIXES = (".csv", ".geojson", ".json")


class RoiFileError(SpecError):
    """A ROI list is invalid; ``where`` names the file and line or feature."""

    def __init__(self, where: str, problem: str, value: object = None) -> None:
        self.where = where
        self.problem = problem
        # SpecError's attributes stay meaningful for code that inspects them.
        self.field = "rois"
        self.value = value
        self.allowed = problem
        Exception.__init__(self, f"{where}: {problem}")


def load_rois(path: str | Path, *, default_buffer_m: float | None = None) -> tuple[ROI, ...]:
    """Read ROIs from a ``.csv``, ``.geojson`` or ``.json`` file.

    Args:
        path: the file.
        default_buffer_m: buffer for points that do not give one.

    Returns:
        The ROIs in file order.

    Raises:
        RoiFileError: unreadable file, unknown suffix, bad row/feature, duplicates.
    """
    p = Path(path)
    if not p.is_file():
        raise RoiFileError(str(p), "no such file (expected a .csv, .geojson or .json list of ROIs)")
    suffix = p.suffix.lower()
    if suffix == ".csv":
        items = _read_csv(p, default_buffer_m)
    elif suffix in (".geojson", ".json"):
        items = _read_geojson(p, default_buffer_m)
    else:
        raise RoiFileError(str(p), f"unknown ROI file type {suffix!r}; use one of {', '.join(ROI_FILE_SUFFIXES)}")
    return _check_unique(items)


def resolve_rois(value: Any, *, default_buffer_m: float | None = None) -> tuple[ROI, ...]:
    """ROIs from a file path or an inline sequence; duplicates rejected.

    Args:
        value: a path (``str``/``Path`` ending in a ROI file suffix), one ROI, or a
            sequence of inline ROI forms.
        default_buffer_m: buffer for file points that do not give one.
    """
    if isinstance(value, Path) or (isinstance(value, str) and value.lower().endswith(ROI_FILE_SUFFIXES)):
        return load_rois(value, default_buffer_m=default_buffer_m)
    if isinstance(value, (PointBuffer, BBox, dict)):
        value = [value]
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise SpecError(
            "rois", value, "must be a path to a .csv/.geojson/.json file or a list of ROIs (specs, dicts or tuples)"
        )
    items = []
    for i, item in enumerate(value):
        where = f"rois[{i}]"
        try:
            roi = _inline_roi(item)
        except SpecError as exc:
            raise RoiFileError(where, str(exc), item) from None
        items.append((where, roi))
    if not items:
        raise SpecError("rois", value, "must contain at least one ROI")
    return _check_unique(items)


def _inline_roi(item: Any) -> ROI:
    if isinstance(item, dict) and "type" not in item:
        keys = {str(k).lower(): v for k, v in item.items()}
        label = next((keys[c] for c in LABEL_COLUMNS if keys.get(c) not in (None, "")), None)
        if all(c in keys for c in BBOX_COLUMNS):
            return BBox(*(keys[c] for c in BBOX_COLUMNS), label=_label_str(label))
        if all(c in keys for c in POINT_COLUMNS):
            return PointBuffer(*(keys[c] for c in POINT_COLUMNS), label=_label_str(label))
        raise SpecError("roi", item, f"a dict ROI needs keys {', '.join(POINT_COLUMNS)} or {', '.join(BBOX_COLUMNS)}")
    return parse_roi(item)


def _label_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _check_unique(items: Sequence[tuple[str, ROI]]) -> tuple[ROI, ...]:
    by_id: dict[str, str] = {}
    by_label: dict[str, str] = {}
    for where, roi in items:
        if roi.id in by_id:
            raise RoiFileError(where, f"duplicate ROI: same geometry (id {roi.id}) as {by_id[roi.id]}", roi.to_dict())
        by_id[roi.id] = where
        if roi.label is not None:
            if roi.label in by_label:
                raise RoiFileError(where, f"duplicate label {roi.label!r} (also used at {by_label[roi.label]})")
            by_label[roi.label] = where
    return tuple(roi for _, roi in items)


def _read_csv(path: Path, default_buffer_m: float | None) -> list[tuple[str, ROI]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise RoiFileError(str(path), f"cannot be read as UTF-8 text ({exc})") from None
    lines = [
        (n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip() and not line.startswith("#")
    ]
    if not lines:
        raise RoiFileError(str(path), "is empty; expected a header row and one ROI per line")
    header_no, header_line = lines[0]
    header = [h.strip().lower() for h in next(csv.reader([header_line]))]
    is_bbox = all(c in header for c in BBOX_COLUMNS)
    needed = BBOX_COLUMNS if is_bbox else ("lon", "lat") + (() if default_buffer_m is not None else ("buffer_m",))
    missing = [c for c in needed if c not in header]
    if missing:
        raise RoiFileError(
            f"{path} line {header_no}",
            f"header {header} lacks column(s) {', '.join(missing)}; expected {','.join(POINT_COLUMNS)} "
            f"or {','.join(BBOX_COLUMNS)} (optionally with label)",
        )
    label_col = next((c for c in LABEL_COLUMNS if c in header), None)
    out = []
    for n, line in lines[1:]:
        where = f"{path} line {n}"
        cells = next(csv.reader([line]))
        if len(cells) != len(header):
            raise RoiFileError(where, f"has {len(cells)} cells, the header has {len(header)}", line)
        row = {h: c.strip() for h, c in zip(header, cells, strict=True)}
        label = (row.get(label_col) or None) if label_col else None
        try:
            if is_bbox:
                roi: ROI = BBox(*(row[c] for c in BBOX_COLUMNS), label=label)
            else:
                buf = row.get("buffer_m") or default_buffer_m
                if buf is None:
                    raise SpecError("buffer_m", row.get("buffer_m"), "is empty and no default_buffer_m was given")
                roi = PointBuffer(row["lon"], row["lat"], buf, label=label)
        except SpecError as exc:
            raise RoiFileError(where, str(exc), line) from None
        out.append((where, roi))
    if not out:
        raise RoiFileError(str(path), "has a header but no ROI rows")
    return out


def _read_geojson(path: Path, default_buffer_m: float | None) -> list[tuple[str, ROI]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise RoiFileError(str(path), f"cannot be read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise RoiFileError(f"{path} line {exc.lineno}", f"is not valid JSON ({exc.msg})") from None
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features")
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    else:
        features = data
    if not isinstance(features, list) or not features:
        raise RoiFileError(str(path), "must be a GeoJSON FeatureCollection (or Feature list) with at least one feature")
    out = []
    for i, feat in enumerate(features):
        where = f"{path} feature {i}"
        if not isinstance(feat, dict) or feat.get("type") != "Feature":
            raise RoiFileError(where, "is not a GeoJSON Feature object", feat)
        props = feat.get("properties") or {}
        label = next((props[c] for c in LABEL_COLUMNS if props.get(c) not in (None, "")), feat.get("id"))
        if label is not None:
            where += f" ({label})"
        try:
            roi = _feature_roi(feat, props, _label_str(label), default_buffer_m)
        except SpecError as exc:
            raise RoiFileError(where, str(exc), feat.get("geometry")) from None
        out.append((where, roi))
    return out


def _feature_roi(feat: dict, props: dict, label: str | None, default_buffer_m: float | None) -> ROI:
    geom = feat.get("geometry") or {}
    gtype = geom.get("type") if isinstance(geom, dict) else None
    if gtype == "Point":
        coords = geom.get("coordinates")
        if not isinstance(coords, list) or len(coords) < 2:
            raise SpecError("coordinates", coords, "a Point needs [lon, lat]")
        buf = props.get("buffer_m", default_buffer_m)
        if buf is None:
            raise SpecError("buffer_m", None, "a Point feature needs properties.buffer_m (or pass default_buffer_m)")
        return PointBuffer(coords[0], coords[1], buf, label=label)
    if gtype in ("Polygon", "MultiPolygon"):
        lons, lats = [], []
        for lon, lat, *_ in _positions(geom.get("coordinates")):
            lons.append(lon)
            lats.append(lat)
        if not lons:
            raise SpecError("coordinates", geom.get("coordinates"), f"a {gtype} needs at least one position")
        return BBox(min(lons), min(lats), max(lons), max(lats), label=label)
    if isinstance(feat.get("bbox"), list) and len(feat["bbox"]) == 4:
        return BBox(*feat["bbox"], label=label)
    raise SpecError("geometry", gtype, "must be a Point (with properties.buffer_m), a Polygon or a MultiPolygon")


def _positions(coords: Any) -> Iterable[Sequence[Any]]:
    """Every [lon, lat, ...] position in nested GeoJSON coordinates."""
    if isinstance(coords, list) and coords and not isinstance(coords[0], list):
        if len(coords) < 2:
            raise SpecError("coordinates", coords, "a position needs [lon, lat]")
        yield coords
        return
    if not isinstance(coords, list):
        raise SpecError("coordinates", coords, "must be nested lists of [lon, lat] positions")
    for c in coords:
        yield from _positions(c)
