"""A local stand-in for the Earth Engine REST service, for the REAL ``ee`` client.

``FakeEarthEngine`` is an httplib2-style transport (``request(uri, method, body,
headers)``) to pass to ``ee.Initialize(http_transport=...)``. It serves the discovery
document and algorithm list shipped in the earthengine-api wheel, and answers the two
calls the provider makes:

* ``value:compute``: evaluates the scene listing against a small scene catalogue,
  applying the collection id, date window (end exclusive) and cloud filter it reads
  from the serialised expression;
* ``image:computePixels``: returns ``np.save`` bytes of a structured array on the
  requested grid. Pixel values encode their own position (B4 = easting / 10 mod
  10000, B3 = northing / 10 mod 10000, other bands 1000 + index), so stitching and
  orientation can be checked exactly; ``count`` is the number of matching scenes
  (0 west of ``coverage_min_x``). Requests over the service limits get the real 400.

Every request is recorded (``fake.requests``) with its decoded JSON body, and
``fake.script(route, [...])`` queues failures (HTTP status codes, ``(status,
message)`` pairs or exceptions to raise) for the next calls of a route.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httplib2
import numpy as np

S2 = "COPERNICUS/S2_SR_HARMONIZED"
LIMIT_BYTES = 50_331_648
LIMIT_SIDE = 32_768

_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
_MESSAGES = {
    400: "User memory limit exceeded.",
    401: "Request had invalid authentication credentials.",
    403: "Caller does not have required permission to use project test.",
    404: "ImageCollection asset not found.",
    429: "Too many concurrent aggregations.",
    500: "An internal error has occurred.",
    503: "The service is currently unavailable.",
}


def _ee_tests_dir() -> Path:
    import ee

    return Path(ee.__file__).parent / "tests"


_DOCS: dict[str, bytes] = {}


def _doc(name: str) -> bytes:
    if name not in _DOCS:
        _DOCS[name] = (_ee_tests_dir() / name).read_bytes()
    return _DOCS[name]


# -- reading a serialised expression ------------------------------------------------
@dataclass
class Call:
    """One function invocation of an expression graph, arguments resolved."""

    name: str
    args: dict[str, Any]


@dataclass
class FuncDef:
    arg_names: list[str]
    body: Any


@dataclass
class ArgRef:
    name: str


def _resolve(node: Any, values: dict[str, Any]) -> Any:
    if not isinstance(node, dict):
        return node
    if "constantValue" in node:
        return node["constantValue"]
    if "valueReference" in node:
        return _resolve(values[node["valueReference"]], values)
    if "functionInvocationValue" in node:
        fi = node["functionInvocationValue"]
        args = {k: _resolve(v, values) for k, v in fi.get("arguments", {}).items()}
        return Call(fi.get("functionName", "?"), args)
    if "dictionaryValue" in node:
        return {k: _resolve(v, values) for k, v in node["dictionaryValue"].get("values", {}).items()}
    if "arrayValue" in node:
        return [_resolve(v, values) for v in node["arrayValue"].get("values", [])]
    if "argumentReference" in node:
        return ArgRef(node["argumentReference"])
    if "functionDefinitionValue" in node:
        fd = node["functionDefinitionValue"]
        return FuncDef(fd.get("argumentNames", []), _resolve(values[fd["body"]], values))
    return node


def _walk(obj: Any):
    if isinstance(obj, Call):
        yield obj
        for v in obj.args.values():
            yield from _walk(v)
    elif isinstance(obj, FuncDef):
        yield from _walk(obj.body)
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _walk(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk(v)


@dataclass
class Expression:
    """A serialised ee expression, resolved into a tree, with lookups by meaning."""

    tree: Any

    @classmethod
    def parse(cls, expression: dict[str, Any]) -> Expression:
        return cls(_resolve({"valueReference": expression["result"]}, expression["values"]))

    def calls(self, name: str) -> list[Call]:
        return [c for c in _walk(self.tree) if c.name == name]

    @property
    def collections(self) -> list[str]:
        # Shared sub-expressions are visited once per use: keep the first occurrence of each id.
        return list(dict.fromkeys(c.args["id"] for c in self.calls("ImageCollection.load")))

    @property
    def date_range(self) -> tuple[str, str] | None:
        ranges = self.calls("DateRange")
        if not ranges:
            return None
        return (ranges[0].args["start"], ranges[0].args["end"])

    @property
    def max_cloudy(self) -> float | None:
        """The x of ``CLOUDY_PIXEL_PERCENTAGE <= x`` (ee writes it as not(greaterThan))."""
        for c in self.calls("Filter.not"):
            inner = c.args.get("filter")
            if (
                isinstance(inner, Call)
                and inner.name == "Filter.greaterThan"
                and inner.args.get("leftField") == "CLOUDY_PIXEL_PERCENTAGE"
            ):
                return float(inner.args["rightValue"])
        return None

    @property
    def selected_bands(self) -> list[list[str]]:
        return [c.args["bandSelectors"] for c in self.calls("Image.select")]

    @property
    def region(self) -> dict[str, Any] | None:
        for c in self.calls("GeometryConstructors.Rectangle"):
            crs = c.args.get("crs")
            return {
                "coordinates": c.args["coordinates"],
                "crs": crs.args.get("crs") if isinstance(crs, Call) else crs,
                "geodesic": c.args.get("geodesic"),
            }
        return None

    @property
    def mask_thresholds(self) -> list[float]:
        out = []
        for c in self.calls("Image.gte"):
            img2 = c.args.get("image2")
            if isinstance(img2, Call) and img2.name == "Image.constant":
                out.append(float(img2.args["value"]))
        return list(dict.fromkeys(out))


# -- the fake service -----------------------------------------------------------------
@dataclass(frozen=True)
class Scene:
    id: str
    time: str  # ISO datetime, UTC
    cloudy: float
    collection: str = S2

    @property
    def millis(self) -> int:
        t = dt.datetime.fromisoformat(self.time.replace("Z", "+00:00"))
        return int(t.timestamp() * 1000)


DEFAULT_SCENES = (
    Scene("20240605T102021_20240605T102022_T32UNA", "2024-06-05T10:20:21Z", 5.0),
    Scene("20240612T101559_20240612T102021_T32UNA", "2024-06-12T10:15:59Z", 22.0),
    Scene("20240620T102021_20240620T102530_T32UNA", "2024-06-20T10:20:21Z", 64.0),
    Scene("20240701T102021_20240701T102022_T32UNA", "2024-07-01T10:20:21Z", 1.0),
)


@dataclass
class Recorded:
    method: str
    route: str
    uri: str
    body: Any

    @property
    def expression(self) -> Expression:
        return Expression.parse(self.body["expression"])


@dataclass
class FakeEarthEngine:
    """An httplib2-style transport that plays the Earth Engine service (see module doc)."""

    scenes: tuple[Scene, ...] = DEFAULT_SCENES
    coverage_min_x: float | None = None
    max_request_bytes: int = LIMIT_BYTES
    max_side: int = LIMIT_SIDE
    latency_s: float = 0.0
    requests: list[Recorded] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._scripts: dict[str, deque[Any]] = {}

    # -- test controls --
    def script(self, route: str, outcomes: list[Any]) -> None:
        """Queue outcomes for the next calls of ``route`` ('value', 'pixels', 'algorithms', 'discovery')."""
        with self._lock:
            self._scripts.setdefault(route, deque()).extend(outcomes)

    def calls(self, route: str) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.route == route]

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()

    # -- httplib2 interface --
    def request(
        self,
        uri: str,
        method: str = "GET",
        body: Any = None,
        headers: dict[str, str] | None = None,
        redirections: int = 5,
        connection_type: Any = None,
    ) -> tuple[httplib2.Response, bytes]:
        route = self._route(uri)
        try:
            decoded = json.loads(body) if body else None
        except ValueError:
            decoded = body
        with self._lock:
            self.requests.append(Recorded(method, route, uri, decoded))
            queue = self._scripts.get(route)
            outcome = queue.popleft() if queue else None
        if isinstance(outcome, BaseException):
            raise outcome
        if isinstance(outcome, int):
            return self._error(outcome, _MESSAGES.get(outcome, "error"))
        if isinstance(outcome, tuple):
            return self._error(*outcome)
        if route == "discovery":
            return self._ok(_doc("cloud_api_discovery_document.json"))
        if route == "algorithms":
            return self._ok(_doc("algorithms.json"))
        if route == "value":
            return self._value(decoded)
        if route == "pixels":
            if self.latency_s:
                time.sleep(self.latency_s)
            return self._pixels(decoded)
        return self._error(404, f"fake Earth Engine has no route for {method} {uri}")

    @staticmethod
    def _route(uri: str) -> str:
        path = uri.split("?", 1)[0]
        if "$discovery" in path:
            return "discovery"
        if path.endswith("/algorithms"):
            return "algorithms"
        if path.endswith("/value:compute"):
            return "value"
        if path.endswith("/image:computePixels"):
            return "pixels"
        return "other"

    @staticmethod
    def _ok(content: bytes, ctype: str = "application/json") -> tuple[httplib2.Response, bytes]:
        return httplib2.Response({"status": 200, "content-type": ctype}), content

    @staticmethod
    def _error(status: int, message: str) -> tuple[httplib2.Response, bytes]:
        body = {"error": {"code": status, "message": message, "status": _STATUS.get(status, "UNKNOWN")}}
        return httplib2.Response({"status": status, "content-type": "application/json"}), json.dumps(body).encode()

    def matching(self, expr: Expression) -> list[Scene]:
        """The catalogue scenes that pass the expression's collection, window and cloud filter."""
        colls = set(expr.collections)
        window = expr.date_range
        cloudy = expr.max_cloudy
        out = []
        for s in self.scenes:
            if s.collection not in colls:
                continue
            if window is not None:
                day = s.time[:10]
                if not (window[0] <= day < window[1]):
                    continue
            if cloudy is not None and s.cloudy > cloudy:
                continue
            out.append(s)
        return out

    def _value(self, body: dict[str, Any]) -> tuple[httplib2.Response, bytes]:
        expr = Expression.parse(body["expression"])
        scenes = self.matching(expr)
        result = {"ids": [s.id for s in scenes], "times": [s.millis for s in scenes]}
        return self._ok(json.dumps({"result": result}).encode())

    def _pixels(self, body: dict[str, Any]) -> tuple[httplib2.Response, bytes]:
        grid = body["grid"]
        w, h = grid["dimensions"]["width"], grid["dimensions"]["height"]
        bands = body["bandIds"]
        size = w * h * 2 * len(bands)
        if size > self.max_request_bytes:
            return self._error(
                400, f"Total request size ({size} bytes) must be less than or equal to {self.max_request_bytes} bytes."
            )
        if max(w, h) > self.max_side:
            return self._error(400, f"Grid dimensions ({w}x{h}) must be less than or equal to {self.max_side}.")
        expr = Expression.parse(body["expression"])
        n = len(self.matching(expr))
        arr = render(grid, bands, n, self.coverage_min_x)
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        return self._ok(buf.getvalue(), "application/octet-stream")


def render(grid: dict[str, Any], bands: list[str], n_scenes: int, coverage_min_x: float | None) -> np.ndarray:
    """Structured (H, W) array of uint16 fields, as computePixels returns for NUMPY_NDARRAY."""
    w, h = grid["dimensions"]["width"], grid["dimensions"]["height"]
    t = grid["affineTransform"]
    cols = np.arange(w) + 0.5
    rows = np.arange(h) + 0.5
    x = t["translateX"] + t["scaleX"] * cols[None, :] + t.get("shearX", 0) * rows[:, None]
    y = t["translateY"] + t.get("shearY", 0) * cols[None, :] + t["scaleY"] * rows[:, None]
    covered = np.ones((h, w), bool) if coverage_min_x is None else (x >= coverage_min_x)
    covered = covered & (n_scenes > 0)
    out = np.zeros((h, w), dtype=[(b, "<u2") for b in bands])
    for i, b in enumerate(bands):
        if b == "count":
            out[b] = np.where(covered, n_scenes, 0)
            continue
        if b == "B4":
            plane = np.floor(x / 10) % 10000
        elif b == "B3":
            plane = np.floor(y / 10) % 10000
        else:
            plane = np.full((h, w), 1000 + i)
        out[b] = np.where(covered, plane, 0).astype(np.uint16)
    return out


def expected_dn(grid_transform: tuple[float, ...], width: int, height: int, bands: list[str]) -> np.ndarray:
    """(C, H, W) of what a correctly stitched, north-up chip on this grid must hold."""
    a, b, c, d, e, f = grid_transform
    g = {
        "dimensions": {"width": width, "height": height},
        "affineTransform": {"scaleX": a, "shearX": b, "translateX": c, "shearY": d, "scaleY": e, "translateY": f},
    }
    arr = render(g, [*bands, "count"], 1, None)
    return np.stack([arr[band] for band in bands])


def fake_credentials():
    """Credentials that send nothing and fail to refresh like a revoked token does."""
    from google.auth import exceptions
    from google.auth.credentials import AnonymousCredentials

    class _Creds(AnonymousCredentials):
        def refresh(self, request: Any) -> None:
            raise exceptions.RefreshError("invalid_grant: Token has been expired or revoked.")

    return _Creds()
