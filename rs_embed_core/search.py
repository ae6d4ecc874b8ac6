"""Caption search, image search and change reports over the embedding store.

RemoteCLIP puts images and captions in one joint space, so the store can answer
"where are the airports?" (:func:`text_search`), "where in this chip?"
(:func:`patch_heatmap`), "what looks like this entry?" (:func:`image_search`) and
"what changed most this month?" (:func:`change_report`).

Rules that keep the answers meaningful:

* Vectors are only compared when they come from ONE checkpoint: every selection is
  checked against the ``checkpoint_sha256`` recorded per entry, and a text/vision
  encoder must have the same weights sha256 as the entries it is compared with.
  Anything else raises :class:`~rs_embed_core.errors.CheckpointMismatchError`
  naming both sides.
* The text encoder is, by default, the checkpoint recorded in the store (its id,
  then the local path it was loaded from); ``checkpoint=`` or ``model=`` override it.
* Ranking is brute-force cosine on CPU (``bench/bench_search.py`` says up to which
  size that is enough).

Everything takes a store location (path, ``s3://``, StoreConfig, EmbeddingStore) or
an already opened ``xarray.Dataset`` plus ``ref`` (branch, tag or snapshot id).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import (
    CheckpointError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    EmptyStoreError,
    SpecError,
    StoreInputError,
    StoreLookupError,
)

VECTORS = ("image_embedding", "pooled")
RESULT_COLUMNS = ("roi_id", "label", "time", "score", "lon", "lat")
CHANGE_COLUMNS = ("roi_id", "label", "time", "previous_time", "distance", "lon", "lat")


# -- values --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointInfo:
    """The checkpoint that produced a selection of entries, as recorded in the store.

    Attributes:
        sha256: sha256 of the weights file ("" when the entries did not record it).
        checkpoint: the checkpoint id the entries were computed with (hub id or path).
        checkpoint_path: the local folder it was loaded from (from the entry's meta), if known.
        model: model name (``remoteclip``).
        model_arch: open_clip architecture.
        weights_are_random: True for dev checkpoints.
        grid_source: how the token grid was taken (e.g. "ln_post patch tokens, CLS dropped"), if recorded.
    """

    sha256: str
    checkpoint: str
    checkpoint_path: str | None
    model: str
    model_arch: str
    weights_are_random: bool
    grid_source: str | None = None


@dataclass(frozen=True, eq=False)
class EntryVectors:
    """Present entries of a selection and their L2-normalised vectors, held in memory.

    Per-ROI facts (``roi_ids``, ``labels``, ``roi_specs``) are indexed by ``roi_index``;
    per-entry arrays have one row per entry. Load once, query many times.

    Attributes:
        roi_index: (N,) index into the per-ROI arrays.
        time: (N,) window start of each entry (datetime64[ns]).
        vectors: (N, E) float32, unit rows.
        roi_ids, labels, roi_specs: per selected ROI (id, label, canonical ROI JSON).
        vector: which stored vector (``image_embedding`` or ``pooled``).
        checkpoint: the single checkpoint of all entries.
        ref, snapshot_id: where they were read.
        dropped: present entries left out because their vector is not finite.
    """

    roi_index: np.ndarray
    time: np.ndarray
    vectors: np.ndarray
    roi_ids: np.ndarray
    labels: np.ndarray
    roi_specs: np.ndarray
    vector: str
    checkpoint: CheckpointInfo
    ref: str
    snapshot_id: str
    dropped: int = 0

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def entry_roi_ids(self) -> np.ndarray:
        return self.roi_ids[self.roi_index]


# -- public API ----------------------------------------------------------------------------


def load_entry_vectors(
    source: Any,
    *,
    ref: str = "main",
    vector: str = "image_embedding",
    months: Iterable[Any] | None = None,
    rois: Iterable[Any] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> EntryVectors:
    """Read the present entries of a selection and their normalised vectors.

    The store keeps one chunk per entry, so a full scan costs ~0.5 ms per entry and
    array on local disk (bench/bench_search.py). With ``cache_dir`` the result is kept
    as one ``.npz`` per (snapshot id, vector, selection): snapshots never change, so a
    cached file is valid forever and a moved branch simply gets a new key.

    Args:
        source: store location, EmbeddingStore or an opened Dataset (then ``ref`` is the one it was opened at).
        ref: branch, tag or snapshot id.
        vector: ``"image_embedding"`` (joint space, text-comparable) or ``"pooled"`` (token space).
        months: only these months (``"YYYY-MM"``, ISO dates, dates); ``None`` = all.
        rois: only these ROIs (ids, labels or ROI specs); ``None`` = all.
        cache_dir: folder for the per-snapshot vector cache (``None``: no cache).

    Raises:
        EmptyStoreError: no entries (in the store or in the selection).
        StoreLookupError: a month or ROI that is not in the store.
        CheckpointMismatchError: the selection holds entries of more than one checkpoint.
    """
    _check_vector(vector)
    ds = _open(source, ref)
    _require_entries(ds)
    ri = _roi_indices(ds, rois)
    ti = _time_indices(ds, months)
    cache_file = _cache_file(cache_dir, ds, vector, ri, ti)
    if cache_file is not None and cache_file.is_file():
        return _read_cache(cache_file, ref=str(ds.attrs.get("ref", ref)))
    sub = ds.isel(roi=ri, time=ti)
    present = np.asarray(sub["present"].values, dtype=bool)
    rr, tt = np.nonzero(present)
    if rr.size == 0:
        raise EmptyStoreError(f"no entries in {_where(ds)} for {_selection_text(months, rois)}")
    shas = _strings(sub["checkpoint_sha256"].values)[rr, tt]
    checkpoint = _single_checkpoint(ds, shas, _abs(ri, rr, ds.sizes["roi"]), _abs(ti, tt, ds.sizes["time"]))
    raw = np.asarray(sub[vector].values, dtype=np.float32)[rr, tt]
    vecs, finite = _unit_rows(raw)
    ev = EntryVectors(
        roi_index=rr[finite],
        time=np.asarray(sub["time"].values)[tt[finite]].astype("datetime64[ns]"),
        vectors=vecs[finite],
        roi_ids=_strings(sub["roi"].values),
        labels=_strings(sub["roi_label"].values),
        roi_specs=_strings(sub["roi_spec"].values),
        vector=vector,
        checkpoint=checkpoint,
        ref=str(ds.attrs.get("ref", ref)),
        snapshot_id=str(ds.attrs.get("snapshot_id", "")),
        dropped=int((~finite).sum()),
    )
    if cache_file is not None:
        _write_cache(cache_file, ev)
    return ev


def text_search(
    source: Any,
    caption: str,
    *,
    ref: str = "main",
    months: Iterable[Any] | None = None,
    rois: Iterable[Any] | None = None,
    k: int | None = 20,
    checkpoint: str | None = None,
    model: Any = None,
    device: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Any:
    """Entries ranked by cosine similarity between a caption and their joint-space image vector.

    Args:
        source: store location, EmbeddingStore, opened Dataset, or an :class:`EntryVectors`
            (already loaded; ``ref``/``months``/``rois`` are then ignored).
        caption: the text query, e.g. ``"an airport with runways"``.
        ref: branch, tag or snapshot id.
        months, rois: filters (see :func:`load_entry_vectors`).
        k: how many rows (``None`` = all entries).
        checkpoint: text encoder checkpoint (hub id or folder); default: the one recorded in the store.
        model: an already loaded adapter (overrides ``checkpoint``); its weights must match the entries.
        device: where to load the text encoder (``None`` = CUDA when available).
        cache_dir: per-snapshot vector cache folder (see :func:`load_entry_vectors`).

    Returns:
        A DataFrame with columns roi_id, label, time, score, lon, lat (ROI centre), best first;
        ``attrs`` carry query, ref, snapshot_id, checkpoint_sha256, weights_are_random.

    Raises:
        CheckpointMismatchError: entries from several checkpoints, or an encoder with other weights.
        EmptyStoreError / StoreLookupError: nothing to search, unknown month or ROI.
    """
    caption = _check_caption(caption)
    k = _check_k(k)
    ev = (
        source
        if isinstance(source, EntryVectors)
        else load_entry_vectors(
            source, ref=ref, vector="image_embedding", months=months, rois=rois, cache_dir=cache_dir
        )
    )
    if ev.vector != "image_embedding":
        raise SpecError("vector", ev.vector, "text search compares captions with 'image_embedding' (joint space)")
    adapter = text_encoder(ev.checkpoint, checkpoint=checkpoint, model=model, device=device)
    query = np.asarray(adapter.encode_text([caption]), dtype=np.float32)[0]
    _check_dims(query, ev.vectors.shape[1], adapter)
    rows, scores = cosine_top_k(ev.vectors, _unit(query), k)
    return _result_frame(ev, rows, scores, {"query": caption, "query_kind": "text"})


def image_search(
    source: Any,
    roi_id: Any,
    month: Any,
    k: int | None = 20,
    *,
    ref: str = "main",
    vector: str = "image_embedding",
    months: Iterable[Any] | None = None,
    rois: Iterable[Any] | None = None,
    exclude_same_roi: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Any:
    """Entries most similar to the entry (``roi_id``, ``month``), the query itself left out.

    Args:
        source: store location, EmbeddingStore or opened Dataset.
        roi_id: the query ROI (id, label or ROI spec).
        month: the query month (``"YYYY-MM"`` or a date).
        k: how many rows (``None`` = all).
        ref: branch, tag or snapshot id.
        vector: ``"image_embedding"`` or ``"pooled"``.
        months, rois: restrict the candidates (the query may lie outside them).
        exclude_same_roi: also leave out the query ROI's other months.
        cache_dir: per-snapshot vector cache folder (see :func:`load_entry_vectors`).

    Returns:
        A DataFrame like :func:`text_search` (score = cosine similarity), best first.
    """
    k = _check_k(k)
    _check_vector(vector)
    ds = _open(source, ref)
    _require_entries(ds)
    i, j = _entry_cell(ds, roi_id, month)
    q_sha = str(ds["checkpoint_sha256"].isel(roi=i, time=j).values)
    q_raw = np.asarray(ds[vector].isel(roi=i, time=j).values, dtype=np.float32)
    ev = load_entry_vectors(ds, ref=ref, vector=vector, months=months, rois=rois, cache_dir=cache_dir)
    if q_sha != ev.checkpoint.sha256:
        raise CheckpointMismatchError(
            f"the query entry ({ds['roi'].values[i]}, {_day(ds['time'].values[j])}) was computed with checkpoint "
            f"sha256 {q_sha or '(not recorded)'} but the candidates with {ev.checkpoint.sha256 or '(not recorded)'} "
            f"({ev.checkpoint.checkpoint!r}); vectors of different checkpoints are not comparable"
        )
    q, ok = _unit_rows(q_raw[None])
    if not ok[0]:
        raise StoreInputError(f"the query entry's {vector} is not finite")
    scores = ev.vectors @ q[0]
    qid, qtime = str(ds["roi"].values[i]), np.datetime64(ds["time"].values[j], "ns")
    same_roi = ev.entry_roi_ids == qid
    drop = same_roi if exclude_same_roi else same_roi & (ev.time == qtime)
    scores = np.where(drop, -np.inf, scores)
    n_left = int((~drop).sum())
    rows, top = cosine_top_k_scores(scores, min(k, n_left) if k is not None else n_left)
    return _result_frame(
        ev, rows, top, {"query": f"{qid}@{_day(qtime)}", "query_kind": "image", "query_vector": vector}
    )


def patch_heatmap(
    source: Any,
    roi_id: Any,
    month: Any,
    caption: str,
    *,
    ref: str = "main",
    checkpoint: str | None = None,
    model: Any = None,
    device: str | None = None,
) -> Any:
    """Georeferenced cosine similarity between a caption and each grid token of one entry.

    The entry's tokens are stored after the vision tower's final LayerNorm (``ln_post``),
    which is exactly where open_clip applies the projection ``proj`` to the class token;
    ``adapter.project_tokens`` applies that same projection to every patch token, so the
    patch vectors land in the joint space the caption is encoded into.

    Returns:
        ``xarray.DataArray`` (y, x) of cosine similarities, with the stored grid's x/y
        (token-cell centres, metres) and ``attrs`` crs, transform, caption, roi_id, time,
        checkpoint_sha256. Cells whose tokens are all zero (no tile covered them) are NaN.
    """
    import xarray as xr

    from .store import entry_grid

    caption = _check_caption(caption)
    ds = _open(source, ref)
    _require_entries(ds)
    i, j = _entry_cell(ds, roi_id, month)
    info = _cell_checkpoint(ds, i, j)
    source_text = info.grid_source
    if source_text is not None and "ln_post" not in source_text:
        raise CheckpointError(
            f"the entry's grid is {source_text!r}, not ViT patch tokens after ln_post: the vision projection "
            "does not apply to it, so no caption heatmap can be made"
        )
    adapter = text_encoder(info, checkpoint=checkpoint, model=model, device=device)
    visual = getattr(adapter, "visual", None)
    if getattr(visual, "final_ln_after_pool", False) or getattr(visual, "attn_pool", None) is not None:
        # Such towers return tokens before ln_post (or attention-pooled): proj would not apply as for CLS.
        raise CheckpointError(
            f"{info.model_arch}: the tower pools before ln_post or with attention pooling; its tokens are not "
            "in the space the projection maps from, so no caption heatmap can be made"
        )
    rid, day = str(ds["roi"].values[i]), np.datetime64(ds["time"].values[j], "ns")
    grid = entry_grid(ds, rid, day)
    tokens = np.asarray(grid.values, dtype=np.float32)
    if tokens.shape[0] != getattr(adapter, "grid_dim", tokens.shape[0]):
        raise CheckpointMismatchError(
            f"the entry's grid has {tokens.shape[0]} token dims, the encoder's tower {adapter.grid_dim}"
        )
    joint = np.asarray(adapter.project_tokens(tokens), dtype=np.float32)  # (E, H, W)
    text = _unit(np.asarray(adapter.encode_text([caption]), dtype=np.float32)[0])
    _check_dims(text, joint.shape[0], adapter)
    norm = np.linalg.norm(joint, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        sim = np.where(norm > 0, np.einsum("ehw,e->hw", joint, text) / norm, np.nan).astype(np.float32)
    return xr.DataArray(
        sim,
        dims=("y", "x"),
        coords={"y": grid["y"].values, "x": grid["x"].values},
        name="similarity",
        attrs={
            "crs": grid.attrs["crs"],
            "transform": list(grid.attrs["transform"]),
            "caption": caption,
            "roi_id": rid,
            "roi_label": grid.attrs.get("roi_label", ""),
            "time": _day(day),
            "checkpoint_sha256": info.sha256,
            "weights_are_random": info.weights_are_random,
            "ref": str(ds.attrs.get("ref", ref)),
            "snapshot_id": str(ds.attrs.get("snapshot_id", "")),
            "units": "cosine similarity of projected patch token and caption; x/y are token-cell centres (m)",
        },
    )


def change_report(
    source: Any,
    month: Any = None,
    *,
    vector: str = "pooled",
    ref: str = "main",
    k: int | None = None,
    rois: Iterable[Any] | None = None,
    max_gap_months: int = 1,
) -> Any:
    """Per ROI, the cosine distance between its entry at ``month`` and its previous entry, largest first.

    Args:
        source: store location, EmbeddingStore or opened Dataset.
        month: the month to report (``"YYYY-MM"``); ``None`` = the latest month holding entries.
        vector: ``"pooled"`` (token space) or ``"image_embedding"`` (joint space).
        ref: branch, tag or snapshot id.
        k: how many rows (``None`` = all ROIs with a comparable previous entry).
        rois: only these ROIs.
        max_gap_months: the previous entry may be at most this many months earlier
            (1 = the calendar month before; a cloudy month in between needs 2).

    Returns:
        A DataFrame with columns roi_id, label, time, previous_time, distance (1 - cosine),
        lon, lat; ``attrs["no_previous"]`` lists ROIs with an entry at ``month`` but none
        within the gap.

    Raises:
        EmptyStoreError / StoreLookupError: nothing stored, unknown month or ROI.
        CheckpointMismatchError: the compared entries come from different checkpoints.
    """
    import pandas as pd

    _check_vector(vector)
    k = _check_k(k)
    if not isinstance(max_gap_months, int) or isinstance(max_gap_months, bool) or max_gap_months < 1:
        raise SpecError("max_gap_months", max_gap_months, "must be an integer >= 1")
    ds = _open(source, ref)
    _require_entries(ds)
    times = np.asarray(ds["time"].values).astype("datetime64[ns]")
    if month is None:
        with_entries = np.flatnonzero(np.asarray(ds["present"].values, dtype=bool).any(axis=0))
        if with_entries.size == 0:
            raise EmptyStoreError(f"{_where(ds)} holds no entries")
        target = times[with_entries].max()
    else:
        target = times[_time_indices(ds, [month])[0]]
    tm = _month_number(target)
    window = np.flatnonzero((times <= target) & (np.array([_month_number(t) for t in times]) >= tm - max_gap_months))
    window = window[np.argsort(times[window], kind="stable")]
    ri = _roi_indices(ds, rois)
    sub = ds.isel(roi=ri, time=window)
    present = np.asarray(sub["present"].values, dtype=bool)
    wtimes = times[window]
    last = len(window) - 1  # the target month is the latest in the window
    pairs: list[tuple[int, int]] = []  # (roi row, previous time column)
    no_previous: list[str] = []
    roi_ids = _strings(sub["roi"].values)
    for r in np.flatnonzero(present[:, last]):
        earlier = np.flatnonzero(present[r, :last])
        if earlier.size:
            pairs.append((int(r), int(earlier[-1])))
        else:
            no_previous.append(str(roi_ids[r]))
    frame_attrs = {
        "month": _day(target)[:7],
        "vector": vector,
        "ref": str(ds.attrs.get("ref", ref)),
        "snapshot_id": str(ds.attrs.get("snapshot_id", "")),
        "no_previous": no_previous,
        "max_gap_months": max_gap_months,
    }
    if not pairs:
        df = pd.DataFrame({c: pd.Series(dtype=_CHANGE_DTYPES[c]) for c in CHANGE_COLUMNS})
        df.attrs.update(frame_attrs, checkpoint_sha256="", weights_are_random=False)
        return df
    pr = np.array([p[0] for p in pairs])
    pt = np.array([p[1] for p in pairs])
    shas_all = _strings(sub["checkpoint_sha256"].values)
    cells_r = np.concatenate([pr, pr])
    cells_t = np.concatenate([np.full(pr.size, last), pt])
    info = _single_checkpoint(
        ds, shas_all[cells_r, cells_t], _abs(ri, cells_r, ds.sizes["roi"]), _abs(window, cells_t, ds.sizes["time"])
    )
    if vector == "pooled":
        pooling = _strings(sub["pooling"].values)[cells_r, cells_t]
        kinds = sorted(set(pooling.tolist()))
        if len(kinds) > 1:
            raise SpecError(
                "pooling",
                kinds,
                "pooled vectors of one comparison must share one pooling; use vector='image_embedding'",
            )
    vals = np.asarray(sub[vector].values, dtype=np.float32)
    now, ok_now = _unit_rows(vals[pr, last])
    before, ok_before = _unit_rows(vals[pr, pt])
    ok = ok_now & ok_before
    dist = np.where(ok, 1.0 - np.einsum("ne,ne->n", now, before), np.nan)
    order = np.lexsort((roi_ids[pr], -np.nan_to_num(dist, nan=-np.inf)))
    if k is not None:
        order = order[:k]
    df = pd.DataFrame(
        {
            "roi_id": roi_ids[pr][order],
            "label": _strings(sub["roi_label"].values)[pr][order],
            "time": pd.to_datetime(np.full(order.size, target)),
            "previous_time": pd.to_datetime(wtimes[pt][order]),
            "distance": dist[order].astype(np.float64),
        }
    )
    specs = _strings(sub["roi_spec"].values)[pr][order]
    df["lon"], df["lat"] = _centres(specs)
    df.attrs.update(frame_attrs, checkpoint_sha256=info.sha256, weights_are_random=info.weights_are_random)
    return df


def change_report_rows(
    source: Any,
    month: Any = None,
    *,
    vector: str = "pooled",
    ref: str = "main",
    k: int | None = 20,
    max_gap_months: int = 1,
) -> list[dict[str, Any]]:
    """:func:`change_report` as JSON-ready rows (for Prefect table artifacts and ``--json`` output).

    A month whose ROIs have no previous entry (the first month of a store) gives ``[]``.
    """
    df = change_report(source, month, vector=vector, ref=ref, k=k, max_gap_months=max_gap_months)
    return [
        {
            "rank": n + 1,
            "roi_id": str(r.roi_id),
            "label": str(r.label),
            "month": r.time.strftime("%Y-%m"),
            "previous_month": r.previous_time.strftime("%Y-%m"),
            "distance": None if np.isnan(r.distance) else round(float(r.distance), 6),
            "lon": None if np.isnan(r.lon) else round(float(r.lon), 6),
            "lat": None if np.isnan(r.lat) else round(float(r.lat), 6),
        }
        for n, r in enumerate(df.itertuples(index=False))
    ]


def text_encoder(
    info: CheckpointInfo,
    *,
    checkpoint: str | None = None,
    model: Any = None,
    device: str | None = None,
) -> Any:
    """The adapter whose text tower matches the entries' checkpoint (loaded, or checked if given).

    Resolution when neither ``model`` nor ``checkpoint`` is given: the checkpoint id
    recorded in the store, then the local folder recorded in the entry's provenance.

    Raises:
        CheckpointMismatchError: the loaded weights' sha256 differs from the entries'.
        CheckpointNotFoundError: the recorded checkpoint cannot be found (pass ``checkpoint=``).
    """
    from .models import load_model

    if not info.sha256:
        raise CheckpointMismatchError(
            f"the entries do not record their checkpoint sha256 (checkpoint {info.checkpoint!r}): cannot verify "
            "that a text encoder matches them; recompute them with a checkpoint loaded from disk"
        )
    name = info.model or "remoteclip"
    if model is not None:
        adapter, what = model, "the given model"
    elif checkpoint is not None:
        adapter, what = load_model(name, checkpoint=str(checkpoint), device=device), f"checkpoint {str(checkpoint)!r}"
    else:
        tried: list[str] = []
        adapter, what = None, ""
        for cand in dict.fromkeys(c for c in (info.checkpoint, info.checkpoint_path) if c):
            try:
                adapter = load_model(name, checkpoint=cand, device=device)
                what = f"checkpoint {cand!r} (recorded in the store)"
                break
            except CheckpointNotFoundError as exc:
                tried.append(f"{cand!r}: {exc}")
        if adapter is None:
            raise CheckpointNotFoundError(
                f"the entries were computed with checkpoint {info.checkpoint!r} (sha256 {info.sha256}) which cannot "
                f"be found here; pass checkpoint=<hub id or folder> with the same weights. Tried: {'; '.join(tried) or 'nothing recorded'}"
            )
    meta = getattr(adapter, "meta", {}) or {}
    loaded = meta.get("checkpoint_sha256") or ""
    if loaded != info.sha256:
        raise CheckpointMismatchError(
            f"text encoder and entries come from different checkpoints: the entries were computed with "
            f"{info.checkpoint!r} (sha256 {info.sha256}), {what} is {meta.get('checkpoint_path') or meta.get('checkpoint')!r} "
            f"(sha256 {loaded or 'unknown'}); their joint spaces differ, so scores would be meaningless"
        )
    return adapter


def cosine_top_k(vectors: np.ndarray, query: np.ndarray, k: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-k of unit ``vectors`` (N, E) against a unit ``query`` (E,): (row indices, scores)."""
    return cosine_top_k_scores(vectors @ query, k)


def cosine_top_k_scores(scores: np.ndarray, k: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the ``k`` largest scores, best first; ties by index (deterministic)."""
    n = scores.shape[0]
    if k is not None and k <= 0:
        return np.zeros(0, dtype=np.int64), scores[:0]
    if k is None or k >= n:
        cand = np.arange(n)
    else:
        # argpartition is O(N); all candidates tied with the k-th score are kept so ties resolve by index.
        kth = np.partition(scores, n - k)[n - k]
        cand = np.flatnonzero(scores >= kth)
    order = cand[np.lexsort((cand, -scores[cand]))]
    if k is not None:
        order = order[:k]
    return order, scores[order]


# -- helpers -------------------------------------------------------------------------------

_CHANGE_DTYPES = {
    "roi_id": "object",
    "label": "object",
    "time": "datetime64[ns]",
    "previous_time": "datetime64[ns]",
    "distance": "float64",
    "lon": "float64",
    "lat": "float64",
}


def _cache_file(cache_dir: Any, ds: Any, vector: str, ri: Any, ti: Any) -> Path | None:
    snapshot = ds.attrs.get("snapshot_id")
    if cache_dir is None or not snapshot:
        return None
    pick = {
        "v": 1,
        "store": str(ds.attrs.get("store", "")),
        "snapshot": str(snapshot),
        "vector": vector,
        "rois": None if isinstance(ri, slice) else [int(i) for i in ri],
        "times": None if isinstance(ti, slice) else [int(j) for j in ti],
    }
    key = hashlib.sha256(json.dumps(pick, sort_keys=True).encode()).hexdigest()[:32]
    return Path(cache_dir) / f"vectors-{snapshot}-{key}.npz"


def _write_cache(path: Path, ev: EntryVectors) -> None:
    """Write atomically (temp file + rename) so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(
                fh,
                roi_index=ev.roi_index,
                time=ev.time.astype("int64"),
                vectors=ev.vectors,
                roi_ids=ev.roi_ids.astype(str),
                labels=ev.labels.astype(str),
                roi_specs=ev.roi_specs.astype(str),
                info=np.array(
                    json.dumps({**dataclasses.asdict(ev.checkpoint), "vector": ev.vector, "dropped": ev.dropped})
                ),
                snapshot_id=np.array(ev.snapshot_id),
            )
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _read_cache(path: Path, *, ref: str) -> EntryVectors:
    with np.load(path, allow_pickle=False) as z:
        info = json.loads(str(z["info"]))
        vector, dropped = info.pop("vector"), info.pop("dropped")
        return EntryVectors(
            roi_index=z["roi_index"],
            time=z["time"].astype("datetime64[ns]"),
            vectors=z["vectors"],
            roi_ids=z["roi_ids"].astype(object),
            labels=z["labels"].astype(object),
            roi_specs=z["roi_specs"].astype(object),
            vector=vector,
            checkpoint=CheckpointInfo(**info),
            ref=ref,
            snapshot_id=str(z["snapshot_id"]),
            dropped=int(dropped),
        )


def _open(source: Any, ref: str) -> Any:
    import xarray as xr

    if isinstance(source, xr.Dataset):
        return source
    from .store import open_embeddings

    return open_embeddings(source, ref=ref)


def _where(ds: Any) -> str:
    return f"the store {ds.attrs.get('store', '')!s} at {ds.attrs.get('ref', '?')!s}".replace("  ", " ")


def _selection_text(months: Any, rois: Any) -> str:
    m = "all months" if months is None else f"months {list(months) if not isinstance(months, str) else [months]}"
    r = "all ROIs" if rois is None else f"ROIs {[_roi_key(x) for x in ([rois] if isinstance(rois, str) else rois)]}"
    return f"{m} x {r}"


def _require_entries(ds: Any) -> None:
    if "present" not in ds or ds.sizes.get("roi", 0) == 0 or ds.sizes.get("time", 0) == 0:
        raise EmptyStoreError(f"{_where(ds)} holds no entries yet: run an embedding flow first")


def _check_vector(vector: str) -> None:
    if vector not in VECTORS:
        raise SpecError("vector", vector, f"must be one of {', '.join(VECTORS)}")


def _check_k(k: Any) -> int | None:
    if k is None:
        return None
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise SpecError("k", k, "must be a positive integer or None (all)")
    return int(k)


def _check_caption(caption: Any) -> str:
    if not isinstance(caption, str) or not caption.strip():
        raise SpecError("caption", caption, "must be a non-empty string")
    return caption.strip()


def _check_dims(vec: np.ndarray, size: int, adapter: Any) -> None:
    if vec.shape[0] != size:
        raise CheckpointMismatchError(
            f"the encoder ({getattr(adapter, 'meta', {}).get('model_arch')}) gives {vec.shape[0]}-d joint vectors "
            f"but the entries hold {size}-d ones"
        )


def _strings(values: Any) -> np.ndarray:
    arr = np.asarray(values)
    return arr.astype(object) if arr.dtype != object else arr


def _day(value: Any) -> str:
    return str(np.datetime64(value, "D"))


def _month_number(value: Any) -> int:
    d = dt.date.fromisoformat(_day(value))
    return d.year * 12 + d.month - 1


def _month_value(month: Any) -> np.datetime64:
    from .specs import TemporalSpec
    from .store.layout import parse_time

    if isinstance(month, TemporalSpec):
        day = month.time_key
    else:
        try:
            day = parse_time(month)
        except StoreInputError:
            raise SpecError("month", month, "give 'YYYY-MM', an ISO date or a date (the window start)") from None
    return np.datetime64(day.isoformat(), "ns")


def _time_indices(ds: Any, months: Iterable[Any] | None) -> Any:
    if months is None:
        return slice(None)
    if isinstance(months, (str, dt.date, np.datetime64)):
        months = [months]
    times = np.asarray(ds["time"].values).astype("datetime64[ns]")
    out: list[int] = []
    for m in months:
        hit = np.flatnonzero(times == _month_value(m))
        if hit.size == 0:
            known = ", ".join(sorted(_day(t)[:7] for t in times))
            raise StoreLookupError(f"month {m!r} is not in {_where(ds)}; months stored: {known}")
        out.append(int(hit[0]))
    if not out:
        raise SpecError("months", [], "give at least one month, or None for all")
    return np.array(sorted(set(out)))


def _roi_key(value: Any) -> str:
    ident = getattr(value, "id", None)
    return ident if isinstance(ident, str) else str(value)


def _roi_indices(ds: Any, rois: Iterable[Any] | None) -> Any:
    if rois is None:
        return slice(None)
    if isinstance(rois, str) or hasattr(rois, "id"):
        rois = [rois]
    ids = _strings(ds["roi"].values)
    labels = _strings(ds["roi_label"].values)
    out: list[int] = []
    for value in rois:
        key = _roi_key(value)
        hit = np.flatnonzero(ids == key)
        if hit.size == 0:
            hit = np.flatnonzero(labels == key)  # a label may name several ROIs: take them all
        if hit.size == 0:
            sample = ", ".join(f"{i} ({lab})" if lab else str(i) for i, lab in list(zip(ids, labels, strict=True))[:10])
            more = f" and {ids.size - 10} more" if ids.size > 10 else ""
            raise StoreLookupError(f"ROI {key!r} is neither a ROI id nor a label in {_where(ds)}; ROIs: {sample}{more}")
        out.extend(int(h) for h in hit)
    if not out:
        raise SpecError("rois", [], "give at least one ROI, or None for all")
    return np.array(sorted(set(out)))


def _entry_cell(ds: Any, roi: Any, month: Any) -> tuple[int, int]:
    ri = _roi_indices(ds, [roi])
    if ri.size > 1:
        raise StoreLookupError(f"ROI {_roi_key(roi)!r} names {ri.size} ROIs (a shared label); give the ROI id")
    i, j = int(ri[0]), int(_time_indices(ds, [month])[0])
    if not bool(ds["present"].isel(roi=i, time=j).values):
        rid = str(ds["roi"].values[i])
        have = np.asarray(ds["present"].isel(roi=i).values, dtype=bool)
        held = ", ".join(_day(t)[:7] for t in np.asarray(ds["time"].values)[have]) or "none"
        raise StoreLookupError(f"no entry for ROI {rid} at {_day(ds['time'].values[j])[:7]}; its months: {held}")
    return i, j


def _abs(index: Any, rows: np.ndarray, size: int) -> np.ndarray:
    """Selection-relative row numbers -> absolute indices of the Dataset."""
    base = np.arange(size)[index] if isinstance(index, slice) else np.asarray(index)
    return base[rows]


def _cell_checkpoint(ds: Any, i: int, j: int) -> CheckpointInfo:
    cell = ds.isel(roi=i, time=j)
    meta: dict[str, Any] = {}
    raw = str(cell["meta_json"].values) if "meta_json" in ds else ""
    if raw:
        try:
            meta = json.loads(raw)
        except ValueError:
            meta = {}
    return CheckpointInfo(
        sha256=str(cell["checkpoint_sha256"].values),
        checkpoint=str(cell["checkpoint"].values),
        checkpoint_path=meta.get("checkpoint_path") or None,
        model=str(cell["model"].values),
        model_arch=str(cell["model_arch"].values),
        weights_are_random=bool(cell["weights_are_random"].values),
        grid_source=meta.get("grid_source"),
    )


def _single_checkpoint(ds: Any, shas: np.ndarray, abs_r: np.ndarray, abs_t: np.ndarray) -> CheckpointInfo:
    """The one checkpoint of these cells, or CheckpointMismatchError naming each one found."""
    uniq, first, counts = np.unique(shas.astype(str), return_index=True, return_counts=True)
    if uniq.size == 1:
        return _cell_checkpoint(ds, int(abs_r[first[0]]), int(abs_t[first[0]]))
    parts = []
    for sha, f, n in zip(uniq, first, counts, strict=True):
        info = _cell_checkpoint(ds, int(abs_r[f]), int(abs_t[f]))
        parts.append(
            f"sha256 {sha or '(not recorded)'} (checkpoint {info.checkpoint!r}, {n} entries, e.g. "
            f"{ds['roi'].values[abs_r[f]]} {_day(ds['time'].values[abs_t[f]])[:7]})"
        )
    raise CheckpointMismatchError(
        f"the selection in {_where(ds)} mixes {uniq.size} checkpoints: {'; '.join(parts)}. Vectors of different "
        "checkpoints are not comparable: narrow it with months=/rois= or use a ref holding one checkpoint"
    )


def _unit(vec: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(vec))
    if not np.isfinite(n) or n == 0:
        raise CheckpointError("the query vector is zero or not finite")
    return (vec / n).astype(np.float32)


def _unit_rows(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows scaled to unit length (float32) and which rows were usable (finite, non-zero)."""
    raw = np.asarray(raw, dtype=np.float32)
    finite = np.isfinite(raw).all(axis=1)
    safe = np.where(finite[:, None], raw, 0.0).astype(np.float32, copy=False)
    norm = np.linalg.norm(safe, axis=1)
    ok = finite & (norm > 0)
    out = safe / np.where(ok, norm, 1.0)[:, None]
    return out.astype(np.float32, copy=False), ok


def _centres(specs: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """ROI centre lon/lat from the stored canonical ROI JSON (NaN when it cannot be parsed)."""
    from .specs import parse_roi

    lon = np.full(len(specs), np.nan)
    lat = np.full(len(specs), np.nan)
    for n, text in enumerate(specs):
        try:
            lon[n], lat[n] = parse_roi(json.loads(text)).center
        except (ValueError, TypeError, KeyError):
            continue
    return lon, lat


def _result_frame(ev: EntryVectors, rows: np.ndarray, scores: np.ndarray, extra: dict[str, Any]) -> Any:
    import pandas as pd

    ri = ev.roi_index[rows]
    df = pd.DataFrame(
        {
            "roi_id": ev.roi_ids[ri],
            "label": ev.labels[ri],
            "time": pd.to_datetime(ev.time[rows]),
            "score": np.asarray(scores, dtype=np.float64),
        }
    )
    df["lon"], df["lat"] = _centres(ev.roi_specs[ri])
    df.attrs.update(
        {
            **extra,
            "ref": ev.ref,
            "snapshot_id": ev.snapshot_id,
            "vector": ev.vector,
            "n_entries": len(ev),
            "dropped_nonfinite": ev.dropped,
            "checkpoint": ev.checkpoint.checkpoint,
            "checkpoint_sha256": ev.checkpoint.sha256,
            "weights_are_random": ev.checkpoint.weights_are_random,
        }
    )
    return df


__all__ = [
    "CHANGE_COLUMNS",
    "RESULT_COLUMNS",
    "VECTORS",
    "CheckpointInfo",
    "EntryVectors",
    "change_report",
    "change_report_rows",
    "cosine_top_k",
    "cosine_top_k_scores",
    "image_search",
    "load_entry_vectors",
    "patch_heatmap",
    "text_encoder",
    "text_search",
]
