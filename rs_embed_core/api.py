"""The rs-embed style front door: ``get_embedding``, ``get_embeddings_batch``,
``get_embedding_from_data``, and ``embed_chips`` (what the flows call).

Every call returns :class:`~rs_embed_core.embedding.Embedding` objects whose
``grid`` is georeferenced to the area the model saw, whose ``pooled`` and
``image_embedding`` have sizes fixed by the architecture (never by ROI shape or
``input_prep``), and whose ``meta`` carries the full provenance (see CONTRACT keys).

Inference is batched across chips (and across tiles of chips): inputs from several
ROIs share a forward pass of ``RS_EMBED_REMOTECLIP_BATCH_SIZE`` images.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from .chip import Chip
from .embedding import Embedding
from .errors import SpecError
from .models.base import check_backend, check_bands, load_model, model_info
from .provenance import entry_digest
from .specs import ROI, OutputSpec, SensorSpec, TemporalSpec, canonical_json, check_input_prep

log = logging.getLogger(__name__)

FETCH_WORKERS_ENV = "RS_EMBED_REMOTECLIP_FETCH_WORKERS"


# -- public API ----------------------------------------------------------------------------


def get_embedding(
    model: str,
    *,
    spatial: ROI,
    temporal: TemporalSpec,
    sensor: SensorSpec | None = None,
    output: OutputSpec = OutputSpec.pooled(),  # noqa: B008 (frozen, immutable)
    backend: Any = "auto",
    input_prep: str = "resize",
    device: str | None = None,
) -> Embedding:
    """Embed one ROI over one time window.

    Args:
        model: ``"remoteclip"`` (alias ``"remoteclip_s2rgb"``).
        spatial: a ``PointBuffer`` or ``BBox``.
        temporal: the window; imagery inside it is composited.
        sensor: imagery settings; ``collection="hf:<id or path>"`` swaps the checkpoint.
        output: ``OutputSpec.pooled(...)`` -> ``data`` is the pooled vector (D,);
            ``OutputSpec.grid()`` -> ``data`` is the georeferenced token grid.
        backend: ``"auto"``, ``"gee"``, ``"synthetic"``, ``"local:<folder>"`` or a provider.
        input_prep: ``"resize"`` (whole chip -> 224) or ``"tile"`` (224 px tiles, stitched).
        device: ``None``/``"auto"``, ``"cpu"``, ``"cuda"``.
    """
    return get_embeddings_batch(
        model,
        spatials=[spatial],
        temporal=temporal,
        sensor=sensor,
        output=output,
        backend=backend,
        input_prep=input_prep,
        device=device,
    )[0]


def get_embeddings_batch(
    model: str,
    *,
    spatials: Sequence[ROI],
    temporal: TemporalSpec,
    sensor: SensorSpec | None = None,
    output: OutputSpec = OutputSpec.pooled(),  # noqa: B008
    backend: Any = "auto",
    input_prep: str = "resize",
    device: str | None = None,
) -> list[Embedding]:
    """Embed many ROIs over one window: fetches in a thread pool, inference batched across ROIs.

    Fetches run in ``RS_EMBED_REMOTECLIP_FETCH_WORKERS`` threads (default 8) through
    :func:`rs_embed_core.cache.fetch_chip`; chips are embedded in chunks as they arrive,
    so fetching and inference overlap and memory stays bounded.
    """
    from .cache import fetch_chip
    from .providers.base import fetch_key, resolve_backend

    name, sensor, output, input_prep = _check_request(model, sensor, output, backend, input_prep)
    if not isinstance(temporal, TemporalSpec):
        raise SpecError(
            "temporal", temporal, "must be a TemporalSpec, e.g. TemporalSpec.range('2022-06-01', '2022-09-01')"
        )
    rois = list(spatials)
    if not rois:
        return []
    adapter = load_model(name, checkpoint=sensor.checkpoint, device=device)
    provider = resolve_backend(backend)
    keys = [fetch_key(provider, roi, temporal, sensor) for roi in rois]
    workers = max(1, min(_fetch_workers(), len(rois)))
    chunk = max(4 * adapter_batch_size(adapter), 32)
    out: list[Embedding] = []
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rs-embed-fetch") as pool:
        futures = [pool.submit(fetch_chip, provider, roi, temporal, sensor) for roi in rois]
        for start in range(0, len(rois), chunk):
            sl = slice(start, start + chunk)
            chips = [f.result() for f in futures[sl]]
            out.extend(
                embed_chips(
                    adapter,
                    chips,
                    rois=rois[sl],
                    temporal=temporal,
                    sensor=sensor,
                    output=output,
                    input_prep=input_prep,
                    fetch_keys=keys[sl],
                )
            )
    return out


def get_embedding_from_data(
    model: str,
    *,
    data: np.ndarray,
    grid: Any = None,
    sensor: SensorSpec | None = None,
    output: OutputSpec = OutputSpec.pooled(),  # noqa: B008
    input_prep: str = "resize",
    device: str | None = None,
    temporal: TemporalSpec | None = None,
) -> Embedding:
    """Embed pixels you already have: ``data`` is (3, H, W) surface-reflectance DN in B4, B3, B2 order.

    ``grid`` (a :class:`~rs_embed_core.grid.PixelGrid`) georeferences the output; without
    it the token grid's x/y are in pixel units (column, row from the upper-left corner)
    and ``grid_crs`` is ``None``.
    """
    from .grid import PixelGrid

    name, sensor, output, input_prep = _check_request(model, sensor, output, "data", input_prep)
    arr = np.asarray(data)
    if arr.ndim != 3 or arr.shape[0] != len(sensor.bands):
        raise SpecError("data", arr.shape, f"must be (C, H, W) with C = {len(sensor.bands)} bands {sensor.bands}")
    if arr.dtype != np.uint16:
        if not np.issubdtype(arr.dtype, np.number):
            raise SpecError("data.dtype", str(arr.dtype), "must be numeric DN (uint16 surface reflectance x 10000)")
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if bad:
            # Silently zeroing NaN/inf would embed "black" pixels as if they were observed.
            raise SpecError(
                "data",
                f"{bad} NaN/inf pixel values",
                "must be finite DN; mark nodata as 0 (or crop it away) before embedding",
            )
        if np.any(arr < 0) or np.any(arr > 65535):
            raise SpecError("data", "values outside 0..65535", "must be DN (surface reflectance x 10000)")
        arr = arr.astype(np.uint16)
    if arr.size and not np.any(arr):
        raise SpecError("data", "all pixels 0 (nodata)", "must hold observed pixels; an all-nodata chip has no content")
    if grid is not None and not isinstance(grid, PixelGrid):
        raise SpecError("grid", type(grid).__name__, "must be a PixelGrid or None")
    if grid is not None and (grid.height, grid.width) != arr.shape[1:]:
        raise SpecError("grid", (grid.height, grid.width), f"must match the data's (H, W) = {arr.shape[1:]}")
    adapter = load_model(name, checkpoint=sensor.checkpoint, device=device)
    digest = hashlib.sha256(arr.tobytes()).hexdigest()
    key = hashlib.sha256(
        canonical_json(
            {"data_sha256": digest, "shape": list(arr.shape), "grid": grid.to_dict() if grid else None}
        ).encode()
    ).hexdigest()
    item = _Item(
        u8=_dn_u8(arr),
        transform=tuple(grid.transform) if grid else (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
        crs=grid.crs if grid else None,
        roi=None,
        roi_id="data-" + key[:12],
        temporal=temporal,
        provider={
            "provider": "data",
            "data_sha256": digest,
            "shape": list(arr.shape),
            "grid": grid.to_dict() if grid else None,
        },
        fetch_key=key,
    )
    return _embed_items(adapter, [item], sensor=sensor, output=output, input_prep=input_prep)[0]


def embed_chips(
    model: Any,
    chips: Sequence[Chip],
    *,
    rois: Sequence[ROI | None],
    temporal: TemporalSpec | None = None,
    temporals: Sequence[TemporalSpec | None] | None = None,
    sensor: SensorSpec | None = None,
    output: OutputSpec = OutputSpec.pooled(),  # noqa: B008
    input_prep: str = "resize",
    fetch_keys: Sequence[str] | None = None,
    device: str | None = None,
) -> list[Embedding]:
    """Embed fetched chips, batched across chips (the call the flows make).

    Args:
        model: an adapter from :func:`rs_embed_core.models.load_model`, or a model name
            (then ``sensor.checkpoint`` and ``device`` pick the checkpoint).
        chips: the chips, each (3, H, W) DN in B4, B3, B2 order.
        rois: the ROI of each chip (for provenance and the store's roi id).
        temporal / temporals: one window for all chips, or one per chip.
        fetch_keys: the fetch key of each chip (the chip cache key); when omitted it
            is taken from the chip's ``fetch_key`` meta if present, else the sha256 of
            its canonical request and pixels.
    """
    sensor = sensor if sensor is not None else SensorSpec()
    if isinstance(model, str):
        name, sensor, output, input_prep = _check_request(model, sensor, output, "chips", input_prep)
        adapter = load_model(name, checkpoint=sensor.checkpoint, device=device)
    else:
        adapter = model
        info = model_info(adapter.name)
        check_bands(info, sensor.bands)
        input_prep = check_input_prep(input_prep)
        _check_output(output)
    n = len(chips)
    if len(rois) != n:
        raise SpecError("rois", len(rois), f"must give one ROI per chip ({n})")
    if temporals is None:
        temporals = [temporal] * n
    elif temporal is not None:
        raise SpecError("temporal", temporal, "give either temporal or temporals, not both")
    if len(temporals) != n:
        raise SpecError("temporals", len(temporals), f"must give one window per chip ({n})")
    if fetch_keys is not None and len(fetch_keys) != n:
        raise SpecError("fetch_keys", len(fetch_keys), f"must give one fetch key per chip ({n})")
    items = []
    for i, chip in enumerate(chips):
        if tuple(chip.bands) != tuple(sensor.bands):
            raise SpecError("chip.bands", chip.bands, f"must be {sensor.bands} (the sensor's bands, in order)")
        roi = rois[i]
        items.append(
            _Item(
                u8=_dn_u8(chip.dn),
                transform=tuple(chip.grid.transform),
                crs=chip.grid.crs,
                roi=roi,
                roi_id=roi.id if roi is not None else None,
                temporal=temporals[i],
                provider=chip.provenance(),
                fetch_key=fetch_keys[i] if fetch_keys is not None else _chip_key(chip),
            )
        )
    return _embed_items(adapter, items, sensor=sensor, output=output, input_prep=input_prep)


# -- checks --------------------------------------------------------------------------------


def _check_output(output: Any) -> None:
    if not isinstance(output, OutputSpec):
        raise SpecError("output", output, "must be OutputSpec.pooled(...) or OutputSpec.grid()")


def _check_request(
    model: str, sensor: SensorSpec | None, output: Any, backend: Any, input_prep: Any
) -> tuple[str, SensorSpec, OutputSpec, str]:
    info = model_info(model)
    check_backend(info, backend)
    sensor = sensor if sensor is not None else SensorSpec()
    if not isinstance(sensor, SensorSpec):
        raise SpecError("sensor", sensor, "must be a SensorSpec or None")
    check_bands(info, sensor.bands)
    _check_output(output)
    return info.name, sensor, output, check_input_prep(input_prep)


def _fetch_workers() -> int:
    raw = os.environ.get(FETCH_WORKERS_ENV, "8")
    try:
        value = int(raw)
    except ValueError:
        raise SpecError(FETCH_WORKERS_ENV, raw, "must be a positive integer") from None
    if value < 1:
        raise SpecError(FETCH_WORKERS_ENV, raw, "must be a positive integer")
    return value


def adapter_batch_size(adapter: Any) -> int:
    from .models.remoteclip import default_batch_size

    return default_batch_size(adapter.device)


def _chip_key(chip: Chip) -> str:
    if isinstance(chip.meta.get("fetch_key"), str):
        return chip.meta["fetch_key"]
    h = hashlib.sha256(canonical_json({"request": chip.request, "grid": chip.grid.to_dict()}).encode())
    h.update(np.ascontiguousarray(chip.dn).tobytes())
    return h.hexdigest()


def _dn_u8(dn: np.ndarray) -> np.ndarray:
    from .models.preprocess import dn_to_uint8

    return dn_to_uint8(dn)


# -- the batched core ----------------------------------------------------------------------


@dataclass
class _Item:
    """One image to embed, with what its Embedding's metadata needs."""

    u8: np.ndarray
    transform: tuple[float, ...]
    crs: str | None
    roi: ROI | None
    roi_id: str | None
    temporal: TemporalSpec | None
    provider: dict[str, Any]
    fetch_key: str


@dataclass
class _Acc:
    """Per-item accumulator of tokens (stitched lattice) and joint vectors."""

    layout: Any
    grid_sum: np.ndarray
    grid_count: np.ndarray
    joint_sum: np.ndarray
    n_joint: int = 0


def _embed_items(
    adapter: Any, items: Sequence[_Item], *, sensor: SensorSpec, output: OutputSpec, input_prep: str
) -> list[Embedding]:
    import torch

    from .models.preprocess import resize_layout, tile_inputs, tile_layout
    from .models.remoteclip import default_batch_size

    bs = default_batch_size(adapter.device)
    size, ghw = adapter.image_size, adapter.grid_hw
    accs: list[_Acc] = []
    # Work units: (item index, tile origin in lattice cells, image tensor producer).
    units: list[tuple[int, tuple[int, int], Any]] = []
    for i, it in enumerate(items):
        h, w = it.u8.shape[1:]
        if input_prep == "resize":
            layout = resize_layout(h, w, size, ghw)
            lat = ghw
            units.append((i, (0, 0), ("whole", i)))
        else:
            layout = tile_layout(h, w, size, ghw)
            lat = layout.lattice_hw
            for y0, x0 in layout.tiles():
                units.append((i, (y0 // layout.cell, x0 // layout.cell), ("tile", i, y0, x0)))
        accs.append(
            _Acc(
                layout=layout,
                grid_sum=np.zeros((adapter.grid_dim, *lat), np.float32),
                grid_count=np.zeros(lat, np.float32),
                joint_sum=np.zeros(adapter.embed_dim, np.float64),
            )
        )

    tile_cache: dict[int, Any] = {}

    def image_of(ref: tuple) -> Any:
        if ref[0] == "whole":
            return torch.from_numpy(items[ref[1]].u8)
        _, i, y0, x0 = ref
        if i not in tile_cache:
            tile_cache.clear()  # units of one item are consecutive: keep only the current item's tiles
            tiles = tile_inputs(torch.from_numpy(items[i].u8), accs[i].layout)
            tile_cache[i] = {yx: t for yx, t in zip(accs[i].layout.tiles(), tiles, strict=True)}
        return tile_cache[i][(y0, x0)]

    gh, gw = ghw
    log.debug(
        "embedding %d images (%d model inputs), preprocess_path=%s", len(items), len(units), adapter.preprocess_path
    )
    for start in range(0, len(units), bs):
        batch = units[start : start + bs]
        x = adapter.prepare([image_of(u[2]) for u in batch])
        tokens, joint = adapter.forward(x)
        tok, jnt = tokens.numpy(), joint.numpy()
        for k, (i, (cy, cx), _) in enumerate(batch):
            acc = accs[i]
            acc.grid_sum[:, cy : cy + gh, cx : cx + gw] += tok[k]
            acc.grid_count[cy : cy + gh, cx : cx + gw] += 1.0
            acc.joint_sum += jnt[k]
            acc.n_joint += 1
    tile_cache.clear()

    log.info("embedded %d chips (input_prep=%s, preprocess_path=%s)", len(items), input_prep, adapter.preprocess_path)
    return [
        _finish(adapter, it, acc, sensor=sensor, output=output, input_prep=input_prep)
        for it, acc in zip(items, accs, strict=True)
    ]


def _finish(
    adapter: Any, it: _Item, acc: _Acc, *, sensor: SensorSpec, output: OutputSpec, input_prep: str
) -> Embedding:
    import xarray as xr

    grid = acc.grid_sum / np.maximum(acc.grid_count, 1.0)[None]
    weights = acc.layout.cell_weights() if input_prep == "tile" else np.ones(grid.shape[1:], np.float64)
    flat = grid.reshape(grid.shape[0], -1)
    wflat = weights.reshape(-1)
    if output.pooling == "mean":
        pooled = (flat.astype(np.float64) @ wflat / wflat.sum()).astype(np.float32)
    else:
        pooled = flat[:, wflat > 0].max(axis=1).astype(np.float32)
    image_embedding = (acc.joint_sum / max(acc.n_joint, 1)).astype(np.float32)

    ttr = acc.layout.token_transform(it.transform)
    ny, nx = grid.shape[1:]
    xs = ttr[2] + ttr[0] * (np.arange(nx) + 0.5)
    ys = ttr[5] + ttr[4] * (np.arange(ny) + 0.5)
    da = xr.DataArray(
        grid.astype(np.float32, copy=False),
        dims=("dim", "y", "x"),
        coords={"dim": np.arange(grid.shape[0]), "y": ys, "x": xs},
        attrs={"crs": it.crs, "transform": [float(v) for v in ttr], "units": "token cells; x/y are cell centres"},
    )
    meta = dict(adapter.meta)
    meta["versions"] = dict(meta.get("versions", {}))
    meta.update(
        {
            "input_prep": input_prep,
            "tile_layout": acc.layout.to_dict(),
            "pooling": output.pooling,
            "output": output.to_dict(),
            "roi": it.roi.to_dict() if it.roi is not None else None,
            "roi_id": it.roi_id,
            "temporal": it.temporal.to_dict() if it.temporal is not None else None,
            "time": it.temporal.time_key.isoformat() if it.temporal is not None else None,
            "sensor": sensor.to_dict(),
            "provider": it.provider,
            "fetch_key": it.fetch_key,
            "grid_crs": it.crs,
            "grid_transform": [float(v) for v in ttr],
            "grid_shape": list(grid.shape),
            "pooled_dim": int(pooled.shape[0]),
            "image_embedding_dim": int(image_embedding.shape[0]),
        }
    )
    meta["entry_digest"] = entry_digest(meta)
    data = pooled if output.mode == "pooled" else da
    return Embedding(data=data, meta=meta, grid=da, pooled=pooled, image_embedding=image_embedding)
