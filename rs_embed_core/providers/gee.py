"""Earth Engine provider: Sentinel-2 composites fetched on each ROI's UTM grid.

Per chip, two kinds of calls (each with classified errors and retries):

1. one cheap ``value:compute`` call listing the scenes that pass the filters
   (``system:index`` and ``system:time_start``); none -> :class:`NoImageryError`;
2. ``ee.data.computePixels`` with ``NUMPY_NDARRAY`` on an explicit grid (UTM EPSG
   code, affine transform, dimensions) for the bands plus a ``count`` band (valid
   observations per pixel). Requests over the service limits (48 MiB uncompressed,
   32768 px a side) are split into tiles on the same lattice and stitched.

Errors: HTTP 429, 5xx, 408 and connection faults are
:class:`TransientProviderError` and retried with capped, jittered exponential backoff
(on top of the client's own retries, ``client_retries``). Authentication, project,
400 (request size, memory limit) and 404 errors are permanent and raised at once with
guidance. The ``ee`` client turns HTTP errors into ``EEException`` with no status
code; the ``HttpError`` (with ``status_code``) is found on the exception chain.

``import ee`` happens on first use, so importing this module stays cheap.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from ..chip import Chip
from ..errors import NoImageryError, PermanentProviderError, ProviderConfigError, TransientProviderError
from ..grid import PixelGrid, roi_grid
from ..specs import ROI, SensorSpec, TemporalSpec
from .base import fetch_request

log = logging.getLogger(__name__)

HIGH_VOLUME_URL = "https://earthengine-highvolume.googleapis.com"
CLOUD_SCORE_PLUS = "GOOGLE/CLOUD_SCORE_PLUS/V1/S2_HARMONIZED"
CLOUD_SCORE_BAND = "cs_cdf"
COUNT_BAND = "count"
# Service limits of computePixels (uncompressed bytes, pixels per side).
MAX_REQUEST_BYTES = 48 * 1024 * 1024
MAX_REQUEST_SIDE = 32768
PROJECT_ENV = ("EE_PROJECT", "GOOGLE_CLOUD_PROJECT")
KEY_ENV = "EE_SERVICE_ACCOUNT_KEY"
SCOPES = (
    "https://www.googleapis.com/auth/earthengine",
    "https://www.googleapis.com/auth/cloud-platform",
)
_AUTH_HINT = (
    "authenticate with `earthengine authenticate` (user account) or set "
    f"{KEY_ENV}=/path/to/service-account-key.json, and name a Cloud project registered for Earth Engine "
    f"with EE_PROJECT (or GOOGLE_CLOUD_PROJECT, or GeeProvider(project=...))"
)

T = TypeVar("T")


class EarthEngineAuthError(ProviderConfigError):
    """Credentials or project were rejected (HTTP 401/403, missing credentials)."""


class EarthEngineRequestError(PermanentProviderError):
    """The service refused the request itself (HTTP 400/404: size, memory, bad collection)."""


class EarthEngineTransientError(TransientProviderError):
    """Quota (429), server (5xx) or connection failure after all retries."""


# One ee state per process: remember which configuration it was initialised with.
_INIT_LOCK = threading.Lock()
_INIT_KEY: tuple[Any, ...] | None = None


def _http_status(exc: BaseException) -> int | None:
    """The HTTP status on ``exc`` or anywhere on its cause/context chain."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        for attr in ("status_code",):
            code = getattr(cur, attr, None)
            if isinstance(code, int):
                return code
        resp = getattr(cur, "resp", None)
        status = getattr(resp, "status", None)
        if status is not None:
            try:
                return int(status)
            except (TypeError, ValueError):
                pass
        cur = cur.__cause__ or cur.__context__
    return None


def _is_connection_fault(exc: BaseException) -> bool:
    names = {type(e).__name__ for e in _chain(exc)}
    if names & {"ServerNotFoundError", "TransportError", "SSLError", "RemoteDisconnected", "IncompleteRead"}:
        return True
    return any(isinstance(e, (ConnectionError, TimeoutError)) for e in _chain(exc))


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in out:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


def classify_error(exc: BaseException, what: str) -> Exception | None:
    """Map an exception from ``ee``/HTTP to our hierarchy; None for programming errors.

    Args:
        exc: what the call raised.
        what: a short description of the call, used in the message.
    """
    if isinstance(exc, (TransientProviderError, PermanentProviderError)):
        return exc
    names = {type(e).__name__ for e in _chain(exc)}
    is_ee = "EEException" in names or "HttpError" in names
    msg = str(exc).strip() or type(exc).__name__
    status = _http_status(exc)
    low = msg.lower()
    if "RefreshError" in names or "DefaultCredentialsError" in names:
        return EarthEngineAuthError(f"Earth Engine {what}: credentials are not usable ({msg}); {_AUTH_HINT}")
    # 403 is also how some Google APIs report rate limits ("rateLimitExceeded"): those are quota, not auth.
    rate_limited = status == 403 and ("rate limit" in low or "ratelimitexceeded" in low or "quota exceeded" in low)
    if status in (408, 429) or (status is not None and status >= 500) or rate_limited:
        kind = f"quota exceeded (HTTP {status})" if status in (403, 429) else f"server error (HTTP {status})"
        return EarthEngineTransientError(f"Earth Engine {what}: {kind}: {msg}")
    if status in (401, 403) or "please authorize access" in low or "not been used in project" in low:
        return EarthEngineAuthError(f"Earth Engine {what}: access denied (HTTP {status}): {msg}; {_AUTH_HINT}")
    if status in (400, 404) or (is_ee and status is None and _is_permanent_message(low)):
        hint = ""
        if "request size" in low or "must be less than or equal to" in low:
            hint = "; the request is over the 48 MiB limit: lower max_request_bytes or use a larger scale_m"
        elif "memory limit" in low:
            hint = "; the computation ran out of memory: use a smaller ROI, a shorter window or a larger scale_m"
        elif what == "initialisation":
            hint = "; check the endpoint url"
        elif status == 404 or "not found" in low:
            hint = "; check the collection id and band names"
        elif "timed out" in low:
            # A computation that hits the server deadline usually succeeds on a quieter retry.
            return EarthEngineTransientError(f"Earth Engine {what}: computation timed out: {msg}")
        return EarthEngineRequestError(f"Earth Engine {what}: request refused (HTTP {status}): {msg}{hint}")
    if _is_connection_fault(exc):
        return EarthEngineTransientError(f"Earth Engine {what}: connection failure: {type(exc).__name__}: {msg}")
    if is_ee:
        # An EEException without a status: the server evaluated the expression and failed.
        if "timed out" in low or "too many concurrent" in low:
            return EarthEngineTransientError(f"Earth Engine {what}: {msg}")
        return EarthEngineRequestError(f"Earth Engine {what}: {msg}")
    return None


def _decoded[R](what: str, fn: Callable[[], R], errors: tuple[type[BaseException], ...]) -> R:
    """``fn()``; a response body that does not decode is a transient fault.

    A response cut short (proxy reset, truncated download) arrives as a 200 with too
    few bytes: ``numpy.load`` fails on an NPY body (ValueError/EOFError), and for a
    JSON body googleapiclient hands ee the raw text, which then fails with TypeError.
    Unclassified, those would escape and never be retried.
    """
    try:
        return fn()
    except errors as exc:
        if {"EEException", "HttpError"} & {type(e).__name__ for e in _chain(exc)}:
            raise
        raise EarthEngineTransientError(
            f"Earth Engine {what}: truncated or corrupt response ({type(exc).__name__}: {exc})"
        ) from exc


def _is_permanent_message(low: str) -> bool:
    return any(s in low for s in ("request size", "memory limit", "not found", "invalid", "does not have"))


def _tiles(
    width: int, height: int, bytes_per_px: int, max_bytes: int, max_side: int
) -> list[tuple[int, int, int, int]]:
    """Split a grid into (row0, col0, h, w) tiles that each fit the request limits.

    Full-width strips where a row fits (fewest requests), narrower columns otherwise.
    """
    tw = min(width, max_side, max_bytes // bytes_per_px)
    if tw < 1:
        raise EarthEngineRequestError(
            f"max_request_bytes={max_bytes} is too small for one pixel of {bytes_per_px} bytes"
        )
    th = min(height, max_side, max_bytes // (bytes_per_px * tw))
    return [(r, c, min(th, height - r), min(tw, width - c)) for r in range(0, height, th) for c in range(0, width, tw)]


class GeeProvider:
    """Sentinel-2 composites from Google Earth Engine.

    Args:
        project: Cloud project for Earth Engine; default ``EE_PROJECT`` or
            ``GOOGLE_CLOUD_PROJECT`` (a service-account key's own project otherwise).
        credentials_file: service-account JSON key; default ``EE_SERVICE_ACCOUNT_KEY``.
            Without one, the stored user credentials (``earthengine authenticate``).
        url: API endpoint; the high-volume endpoint by default (many small requests).
        http_transport: an httplib2-style object (``request(uri, method, body, headers)``)
            for the ``ee`` client; tests pass a local fake.
        credentials: a ``google.auth`` credentials object (overrides the file).
        max_retries: our retries of a transient failure (after the client's own).
        client_retries: retries done inside the ``ee`` client per call (its default is 5).
        retry_base_s, retry_cap_s: exponential backoff base and cap (seconds); each
            delay is drawn uniformly from [d/2, d] (jitter spreads parallel workers).
        max_request_bytes, max_request_side: split requests over these limits.
        timeout_s: per-request deadline in the client (None: the client's default).
        sleep: the sleep function (tests inject a fake clock).
    """

    name = "gee"
    version = "1"
    cacheable = True

    def __init__(
        self,
        project: str | None = None,
        credentials_file: str | os.PathLike[str] | None = None,
        url: str = HIGH_VOLUME_URL,
        http_transport: Any | None = None,
        *,
        credentials: Any | None = None,
        max_retries: int = 4,
        client_retries: int = 5,
        retry_base_s: float = 2.0,
        retry_cap_s: float = 60.0,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        max_request_side: int = MAX_REQUEST_SIDE,
        timeout_s: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
        seed: int | None = None,
    ) -> None:
        if max_retries < 0 or not 0 <= client_retries < 100:
            raise ProviderConfigError(
                f"max_retries={max_retries!r}, client_retries={client_retries!r} are invalid: must be >= 0 (and < 100)"
            )
        if max_request_bytes < 2 or not 1 <= max_request_side <= MAX_REQUEST_SIDE:
            raise ProviderConfigError(
                f"max_request_bytes={max_request_bytes!r}/max_request_side={max_request_side!r} are invalid: "
                f"need bytes >= 2 and 1 <= side <= {MAX_REQUEST_SIDE}"
            )
        self.project = project or next((os.environ[k] for k in PROJECT_ENV if os.environ.get(k)), None)
        key = credentials_file or os.environ.get(KEY_ENV) or None
        self.credentials_file = os.fspath(key) if key else None
        self.url = url
        self.max_retries = max_retries
        self.client_retries = client_retries
        self.retry_base_s = retry_base_s
        self.retry_cap_s = retry_cap_s
        self.max_request_bytes = max_request_bytes
        self.max_request_side = max_request_side
        self.timeout_s = timeout_s
        self._transport = http_transport
        self._credentials = credentials
        self._sleep = sleep
        self._rng = random.Random(seed)

    def __repr__(self) -> str:  # never show credentials
        return f"GeeProvider(project={self.project!r}, url={self.url!r})"

    def describe(self) -> dict[str, Any]:
        """Pixel-changing settings of this provider (no endpoint, project or credentials)."""
        return {"dn": "uint16-round", "count_band": "valid-observations"}

    # -- initialisation -------------------------------------------------------
    def _init_key(self) -> tuple[Any, ...]:
        return (self.project, self.url, self.credentials_file, id(self._credentials), id(self._transport))

    def _load_credentials(self) -> tuple[Any, str | None]:
        """(credentials for ee.Initialize, project found in them)."""
        if self._credentials is not None:
            return self._credentials, None
        if self.credentials_file:
            path = self.credentials_file
            try:
                with open(path) as fh:
                    info = json.load(fh)
                from google.oauth2 import service_account

                creds = service_account.Credentials.from_service_account_info(info, scopes=list(SCOPES))
            except FileNotFoundError:
                raise EarthEngineAuthError(
                    f"credentials_file={path!r} does not exist (from the argument or {KEY_ENV}); "
                    "give the path of a service-account JSON key"
                ) from None
            except (ValueError, KeyError, OSError) as exc:
                raise EarthEngineAuthError(
                    f"credentials_file={path!r} is not a usable service-account JSON key "
                    f"({type(exc).__name__}); download a new key for the service account"
                ) from None
            return creds, info.get("project_id")
        return "persistent", None

    def _ensure_initialized(self) -> Any:
        try:
            import ee
        except ImportError as exc:
            raise ProviderConfigError(
                f"the Earth Engine client is not installed ({exc}): pip install 'earthengine-api>=1.7,<2'"
            ) from exc

        global _INIT_KEY
        key = self._init_key()
        with _INIT_LOCK:
            if key == _INIT_KEY:
                return ee
            creds, key_project = self._load_credentials()
            project = self.project or key_project
            if not project:
                raise ProviderConfigError(
                    "Earth Engine needs a Cloud project: set EE_PROJECT (or GOOGLE_CLOUD_PROJECT) or pass "
                    "GeeProvider(project=...); the project must be registered for Earth Engine"
                )
            ee.data.setMaxRetries(self.client_retries)
            try:
                if creds == "persistent":
                    creds = ee.data.get_persistent_credentials()
                ee.Initialize(credentials=creds, project=project, url=self.url, http_transport=self._transport)
                if self.timeout_s is not None:
                    ee.data.setDeadline(int(self.timeout_s * 1000))
            except Exception as exc:
                err = classify_error(exc, "initialisation")
                if err is None:
                    raise
                raise err from exc
            _INIT_KEY = key
            log.info("Earth Engine initialised (project=%s, url=%s)", project, self.url)
            return ee

    # -- calls with retries ---------------------------------------------------
    def _backoff(self, attempt: int) -> float:
        delay = min(self.retry_cap_s, self.retry_base_s * (2**attempt))
        return delay * (0.5 + 0.5 * self._rng.random())

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        attempt = 0
        while True:
            try:
                return fn()
            except Exception as exc:
                err = classify_error(exc, what)
                if err is None:
                    raise
                if isinstance(err, TransientProviderError) and attempt < self.max_retries:
                    delay = self._backoff(attempt)
                    attempt += 1
                    log.warning("%s; retry %d/%d in %.1f s", err, attempt, self.max_retries, delay)
                    self._sleep(delay)
                    continue
                if isinstance(err, TransientProviderError) and attempt:
                    err = EarthEngineTransientError(
                        f"{err} (gave up after {attempt + 1} attempts; retry later or lower the concurrency)"
                    )
                if err is exc:
                    raise
                raise err from exc

    # -- the image ------------------------------------------------------------
    def _collection(self, ee: Any, grid: PixelGrid, temporal: TemporalSpec, sensor: SensorSpec) -> Any:
        region = ee.Geometry.Rectangle(list(grid.bounds), proj=grid.crs, geodesic=False)
        bands = list(sensor.bands)
        col = (
            ee.ImageCollection(sensor.collection)
            .filterBounds(region)
            .filterDate(temporal.start.isoformat(), temporal.end.isoformat())  # end exclusive
            .filter(ee.Filter.lte("CLOUDY_PIXEL_PERCENTAGE", sensor.cloudy_pct))
        )
        if sensor.cloud_mask == "cloud_score_plus":
            threshold = sensor.cloud_score_threshold

            def mask(img: Any) -> Any:
                return img.updateMask(img.select(CLOUD_SCORE_BAND).gte(threshold)).select(bands)

            col = col.select(bands).linkCollection(ee.ImageCollection(CLOUD_SCORE_PLUS), [CLOUD_SCORE_BAND]).map(mask)
        else:
            col = col.select(bands)
        return col

    def _composite(self, ee: Any, col: Any, sensor: SensorSpec) -> Any:
        bands = list(sensor.bands)
        reduced = col.median() if sensor.composite == "median" else col.mosaic()
        # The median of an even count is a half-integer: round, then cast to DN.
        pixels = reduced.select(bands).unmask(0).round().toUint16()
        count = col.select(bands[0]).count().rename(COUNT_BAND).unmask(0).toUint16()
        return pixels.addBands(count)

    def _scenes(self, ee: Any, col: Any) -> tuple[list[str], list[str]]:
        info = ee.Dictionary(
            {"ids": col.aggregate_array("system:index"), "times": col.aggregate_array("system:time_start")}
        )
        listing = "scene listing"
        result = self._call(listing, lambda: _decoded(listing, info.getInfo, (TypeError, ValueError))) or {}
        ids = [str(i) for i in result.get("ids") or []]
        times = list(result.get("times") or [])
        if len(times) != len(ids):
            times = [None] * len(ids)
        pairs = sorted(zip(times, ids, strict=True), key=lambda p: (p[0] is None, p[0] or 0, p[1]))
        dates = [
            dt.datetime.fromtimestamp(t / 1000.0, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if t is not None else ""
            for t, _ in pairs
        ]
        return [i for _, i in pairs], dates

    def _pixels(self, ee: Any, image: Any, grid: PixelGrid, band_ids: list[str]) -> tuple[np.ndarray, int]:
        """(uint16 array (len(band_ids), H, W), number of requests)."""
        out = np.zeros((len(band_ids), grid.height, grid.width), dtype=np.uint16)
        tiles = _tiles(grid.width, grid.height, 2 * len(band_ids), self.max_request_bytes, self.max_request_side)
        a, b, c, d, e, f = grid.transform
        for r0, c0, h, w in tiles:
            request = {
                "expression": image,
                "fileFormat": "NUMPY_NDARRAY",
                "bandIds": band_ids,
                "grid": {
                    "dimensions": {"width": w, "height": h},
                    "affineTransform": {
                        "scaleX": a,
                        "shearX": b,
                        "translateX": c + a * c0 + b * r0,
                        "shearY": d,
                        "scaleY": e,
                        "translateY": f + d * c0 + e * r0,
                    },
                    "crsCode": grid.crs,
                },
            }
            arr = self._call(
                "computePixels",
                lambda req=request: _decoded(
                    "computePixels", lambda: ee.data.computePixels(req), (ValueError, EOFError)
                ),
            )
            out[:, r0 : r0 + h, c0 : c0 + w] = self._to_chw(arr, band_ids, h, w)
        return out, len(tiles)

    @staticmethod
    def _to_chw(arr: Any, band_ids: list[str], h: int, w: int) -> np.ndarray:
        arr = np.asarray(arr)
        names = arr.dtype.names or ()
        missing = [b for b in band_ids if b not in names]
        if missing or arr.shape != (h, w):
            raise EarthEngineRequestError(
                f"computePixels returned shape {arr.shape} with bands {list(names)}; expected ({h}, {w}) with "
                f"{band_ids} (missing {missing})"
            )
        planes = []
        for band in band_ids:
            plane = np.asarray(arr[band])
            if plane.dtype != np.uint16:
                if np.issubdtype(plane.dtype, np.floating):
                    plane = np.nan_to_num(plane, nan=0.0)
                plane = np.clip(plane, 0, 65535).astype(np.uint16)
            planes.append(plane)
        return np.stack(planes)

    # -- the provider interface -----------------------------------------------
    def fetch(self, roi: ROI, temporal: TemporalSpec, sensor: SensorSpec) -> Chip:
        """One composite chip of ``roi`` over ``temporal`` (see the module docstring)."""
        grid = roi_grid(roi, sensor.scale_m)
        ee = self._call("initialisation", self._ensure_initialized)
        col = self._collection(ee, grid, temporal, sensor)
        scene_ids, dates = self._scenes(ee, col)
        if not scene_ids:
            where = f"{roi.id}" + (f" ({roi.label})" if roi.label else "")
            lon, lat = roi.center
            raise NoImageryError(
                f"no scene in {sensor.collection} for ROI {where} at lon={lon:.5f} lat={lat:.5f}, window "
                f"{temporal.start.isoformat()}..{temporal.end.isoformat()} (end exclusive), "
                f"CLOUDY_PIXEL_PERCENTAGE <= {sensor.cloudy_pct:g}: widen the window or raise cloudy_pct"
            )
        image = self._composite(ee, col, sensor)
        band_ids = [*sensor.bands, COUNT_BAND]
        data, n_requests = self._pixels(ee, image, grid, band_ids)
        source: dict[str, Any] = {
            "collection": sensor.collection,
            "composite": sensor.composite,
            "cloudy_pct_max": sensor.cloudy_pct,
            "cloud_mask": sensor.cloud_mask,
            "endpoint": self.url,
            "pixel_requests": n_requests,
            "ee_version": getattr(ee, "__version__", "unknown"),
        }
        if sensor.cloud_mask == "cloud_score_plus":
            source["cloud_score"] = {
                "collection": CLOUD_SCORE_PLUS,
                "band": CLOUD_SCORE_BAND,
                "threshold": sensor.cloud_score_threshold,
            }
        return Chip(
            dn=data[:-1],
            bands=sensor.bands,
            grid=grid,
            valid=data[-1],
            scene_ids=tuple(scene_ids),
            dates=tuple(dates),
            provider=self.name,
            request=fetch_request(self, roi, temporal, sensor),
            meta={"gee": source},
        )
