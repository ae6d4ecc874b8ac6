"""Quicklook pictures of stored entries: what a person looks at to trust (or doubt) an embedding.

Two PNGs per request:

* the entry picture: the RGB chip beside a false-colour picture of the token grid
  (its first three principal components as R, G, B), both placed on the chip's map
  coordinates, so a token cell sits over the ground it saw; optionally a third panel
  with a caption-similarity heatmap over the RGB. The caption names the ROI, month,
  checkpoint (and says so loudly when its weights are random), preprocess path and
  imagery provenance.
* the month picture: cosine similarity of one ROI's pooled vectors across the
  months in the store (matrix + similarity to the previous and the first month).

The RGB comes from the chip cache (the entry's ``fetch_key``), or is fetched again
with the provider settings recorded in the entry's provenance; a refetch whose
request no longer matches the stored ``fetch_key`` is reported as a note, because
it may show different pixels from the ones that were embedded.

matplotlib is imported lazily and only through its object API with the Agg canvas:
no pyplot, no global backend switch, safe in worker threads.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import EmptyStoreError, ProviderConfigError, StoreInputError, StoreLookupError

# Display stretch of the RGB chip: percentiles of valid reflectance (robust to clouds and water).
STRETCH_PERCENTILES = (2.0, 98.0)
DPI = 100
PANEL_IN = 4.6
NO_DATA_RGB = (0.35, 0.35, 0.35)


@dataclass(frozen=True)
class QuicklookResult:
    """What :func:`make_quicklooks` wrote.

    Attributes:
        entry_png: the RGB + embedding picture.
        similarity_png: the pooled-vector similarity across months.
        roi_id, roi_label, month: the entry shown.
        chip_source: ``"cache"`` or ``"refetched"``.
        notes: things the user should know (refetch mismatch, missing heatmap, ...).
    """

    entry_png: Path
    similarity_png: Path
    roi_id: str
    roi_label: str
    month: str
    chip_source: str
    notes: tuple[str, ...] = field(default=())


# -- pure array helpers ------------------------------------------------------------------------


def rgb_image(
    dn: np.ndarray,
    bands: Sequence[str],
    valid: np.ndarray | None = None,
    *,
    rgb_bands: Sequence[str] = ("B4", "B3", "B2"),
    percentiles: tuple[float, float] = STRETCH_PERCENTILES,
) -> np.ndarray:
    """A display RGB (H, W, 3) float in [0, 1] from raw DN (C, H, W).

    Bands are picked by name (B4, B3, B2) when present, else the first three (a
    single band is shown grey). The three channels share one linear stretch between
    the given percentiles of the valid pixels; pixels without observations are grey.
    """
    dn = np.asarray(dn)
    if dn.ndim != 3:
        raise StoreInputError(f"chip dn must be (C, H, W), got shape {dn.shape}")
    names = list(bands)
    if all(b in names for b in rgb_bands):
        idx = [names.index(b) for b in rgb_bands]
    else:
        idx = [min(i, dn.shape[0] - 1) for i in range(3)]
    refl = dn[idx].astype(np.float32) / 10000.0
    mask = np.ones(dn.shape[1:], bool) if valid is None else np.asarray(valid) > 0
    # One stretch for all three channels keeps the colour balance (a per-channel
    # stretch turns bare soil white and water purple).
    vals = refl[:, mask]
    lo, hi = (float(v) for v in np.percentile(vals, percentiles)) if vals.size else (0.0, 0.3)
    if hi - lo < 1e-6:
        hi = lo + 1e-6
    out = np.clip((np.moveaxis(refl, 0, -1) - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    out[~mask] = NO_DATA_RGB
    return out


def pca_rgb(grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False colour of a token grid (D, H, W): its first three principal components as RGB.

    Components are computed over the H*W token vectors of this grid alone, signed so
    that each component's largest loading is positive (deterministic colours), and
    each is stretched to [0, 1] over its 2..98 percentiles. Missing components (fewer
    than three distinct directions) are mid grey.

    Returns:
        (image (H, W, 3) in [0, 1], explained variance ratio of the three components).
    """
    g = np.asarray(grid, dtype=np.float64)
    if g.ndim != 3:
        raise StoreInputError(f"grid must be (dim, y, x), got shape {g.shape}")
    d, h, w = g.shape
    x = g.reshape(d, h * w).T  # (N, D) token vectors
    finite = np.isfinite(x).all(axis=1)
    img = np.full((h * w, 3), 0.5)
    ratio = np.zeros(3)
    if finite.sum() >= 2:
        xc = x[finite] - x[finite].mean(axis=0)
        _, s, vt = np.linalg.svd(xc, full_matrices=False)
        var = s**2
        total = var.sum()
        k = min(3, vt.shape[0])
        for i in range(k):
            if total <= 0 or var[i] / total < 1e-9:
                continue
            comp = vt[i] * np.sign(vt[i][np.argmax(np.abs(vt[i]))] or 1.0)
            score = xc @ comp
            lo, hi = np.percentile(score, (2.0, 98.0))
            if hi - lo < 1e-12:
                continue
            img[finite, i] = np.clip((score - lo) / (hi - lo), 0.0, 1.0)
            ratio[i] = var[i] / total
    return img.reshape(h, w, 3).astype(np.float32), ratio


def cosine_matrix(vectors: np.ndarray) -> np.ndarray:
    """Pairwise cosine similarity of rows (T, D); rows that are all zero or NaN give NaN."""
    v = np.asarray(vectors, dtype=np.float64)
    if v.ndim != 2:
        raise StoreInputError(f"vectors must be (n, dim), got shape {v.shape}")
    norm = np.linalg.norm(v, axis=1)
    ok = np.isfinite(norm) & (norm > 0)
    unit = np.where(ok[:, None], v / np.where(ok, norm, 1.0)[:, None], np.nan)
    return np.clip(unit @ unit.T, -1.0, 1.0)


def transform_extent(transform: Sequence[float], height: int, width: int) -> tuple[float, float, float, float]:
    """matplotlib ``extent`` (left, right, bottom, top) of a north-up affine grid."""
    a, _, c, _, e, f = (float(v) for v in transform)
    xs, ys = (c, c + a * width), (f, f + e * height)
    return (min(xs), max(xs), min(ys), max(ys))


# -- captions ----------------------------------------------------------------------------------


def _short(text: str, n: int = 60) -> str:
    text = str(text)
    return text if len(text) <= n else "..." + text[-(n - 3) :]


def entry_caption(meta: Mapping[str, Any], *, roi_label: str = "", chip_source: str = "") -> list[str]:
    """Caption lines for an entry picture from its provenance (``Embedding.meta``)."""
    roi = meta.get("roi") or {}
    roi_id = meta.get("roi_id", "?")
    name = f"{roi_label} ({roi_id})" if roi_label else str(roi_id)
    temporal = meta.get("temporal") or {}
    month = str(meta.get("time", temporal.get("start", "?")))[:7]
    if roi.get("type") == "PointBuffer":
        where = f"lon {roi.get('lon')}, lat {roi.get('lat')}, buffer {roi.get('buffer_m'):g} m"
    elif roi.get("type") == "BBox":
        where = f"bbox {roi.get('minlon')}, {roi.get('minlat')}, {roi.get('maxlon')}, {roi.get('maxlat')}"
    else:
        where = ""
    ckpt = _short(meta.get("checkpoint") or "?")
    sha = str(meta.get("checkpoint_sha256") or "")[:12]
    random_note = "  RANDOM DEV WEIGHTS - NOT REAL REMOTECLIP" if meta.get("weights_are_random") else ""
    prov = meta.get("provider") or {}
    provider = prov.get("provider", "?")
    synthetic = " (SYNTHETIC imagery)" if prov.get("synthetic") or provider == "synthetic" else ""
    vf = prov.get("valid_fraction")
    valid = f", valid {float(vf):.0%}" if vf is not None else ""
    source = {"cache": ", chip from the chip cache", "refetched": ", chip fetched again"}.get(chip_source, "")
    return [
        f"ROI {name}   month {month}   {where}",
        f"checkpoint {ckpt} [{meta.get('model_arch', '?')}, sha256 {sha}]{random_note}",
        f"preprocess path: {meta.get('preprocess_path', '?')}   input prep: {meta.get('input_prep', '?')}   "
        f"pooling: {meta.get('pooling', '?')}",
        f"imagery: {provider}{synthetic}, {prov.get('n_scenes', '?')} scenes{valid}{source}",
    ]


# -- rendering ---------------------------------------------------------------------------------


def _figure(width_in: float, height_in: float) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig, fig.canvas


def _save(fig: Any, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    fig.savefig(tmp, format="png", dpi=DPI)
    tmp.replace(out)  # a reader never sees half a PNG
    return out


def _map_axes(ax: Any, extent: tuple[float, float, float, float]) -> None:
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


def render_entry(
    path: str | Path,
    rgb: np.ndarray,
    rgb_extent: tuple[float, float, float, float],
    pca: np.ndarray,
    pca_extent: tuple[float, float, float, float],
    caption: Sequence[str],
    *,
    explained: Sequence[float] | None = None,
    heatmap: np.ndarray | None = None,
    heatmap_extent: tuple[float, float, float, float] | None = None,
    query: str | None = None,
    title: str = "",
) -> Path:
    """Write the entry picture: RGB | grid PCA [| caption heatmap over the RGB]."""
    panels = 3 if heatmap is not None else 2
    cap_in, head_in = 1.0, 0.75  # caption block below, titles above the panels
    height = PANEL_IN + cap_in + head_in
    gap_in, cbar_in = 0.35, (0.9 if heatmap is not None else 0.0)  # room for the heatmap's colour bar
    width = 0.15 + panels * PANEL_IN + (panels - 1) * gap_in + cbar_in + 0.1
    fig, _ = _figure(width, height)
    axes = [
        fig.add_axes([(0.15 + i * (PANEL_IN + gap_in)) / width, cap_in / height, PANEL_IN / width, PANEL_IN / height])
        for i in range(panels)
    ]
    ax_rgb, ax_pca = axes[0], axes[1]
    ax_rgb.imshow(rgb, extent=rgb_extent, interpolation="bilinear", origin="upper")
    ax_rgb.set_title("Sentinel-2 RGB composite (B4, B3, B2)", fontsize=10)
    _map_axes(ax_rgb, rgb_extent)
    if not np.allclose(pca_extent, rgb_extent):
        # The model saw a window of the chip (centre crop of a non-square ROI): outline it.
        from matplotlib.patches import Rectangle

        x0, x1, y0, y1 = pca_extent
        ax_rgb.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="yellow", lw=1.2, ls="--"))
    ax_pca.imshow(pca, extent=pca_extent, interpolation="nearest", origin="upper")
    h, w = pca.shape[:2]
    ev = ""
    if explained is not None:
        ev = " (" + ", ".join(f"{100 * v:.0f}%" for v in explained) + " var.)"
    ax_pca.set_title(f"token grid {h}x{w}: PC1-3 as RGB{ev}", fontsize=10)
    _map_axes(ax_pca, rgb_extent)
    if heatmap is not None:
        ax_q = axes[2]
        ax_q.imshow(rgb, extent=rgb_extent, interpolation="bilinear", origin="upper")
        im = ax_q.imshow(
            np.asarray(heatmap, dtype=np.float32),
            extent=heatmap_extent or pca_extent,
            interpolation="nearest",
            origin="upper",
            cmap="inferno",
            alpha=0.55,
        )
        ax_q.set_title(f"caption similarity: {_short(query or '', 40)!r}", fontsize=10)
        _map_axes(ax_q, rgb_extent)
        from matplotlib.ticker import FormatStrFormatter

        x_bar = 0.15 + panels * PANEL_IN + (panels - 1) * gap_in + 0.1
        cax = fig.add_axes([x_bar / width, cap_in / height, 0.15 / width, PANEL_IN / height])
        cbar = fig.colorbar(im, cax=cax)
        cbar.ax.tick_params(labelsize=7)
        cbar.ax.yaxis.set_major_formatter(FormatStrFormatter("%.3f"))
        cbar.set_label("cosine(caption, patch)", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=12, y=0.985)
    fig.text(0.012, 0.02, "\n".join(caption), fontsize=8.5, family="monospace", va="bottom", ha="left")
    return _save(fig, path)


def render_similarity(
    path: str | Path,
    labels: Sequence[str],
    matrix: np.ndarray,
    *,
    title: str,
    caption: Sequence[str] = (),
    highlight: str | None = None,
) -> Path:
    """Write the month-similarity picture: cosine matrix + similarity to previous / first month."""
    n = len(labels)
    fig, _ = _figure(2 * PANEL_IN + 0.8, PANEL_IN + 1.0)
    bottom = 0.95 / (PANEL_IN + 1.0)
    ax_m = fig.add_axes([0.07, bottom + 0.04, 0.38, 0.74 * (1 - bottom) + 0.04])
    ax_l = fig.add_axes([0.63, bottom + 0.04, 0.35, 0.74 * (1 - bottom) + 0.04])
    m = np.asarray(matrix, dtype=np.float64)
    off = m[~np.eye(n, dtype=bool)] if n > 1 else m.ravel()
    finite = off[np.isfinite(off)]
    vmin = float(finite.min()) if finite.size else 0.0
    vmin = min(vmin, 0.999)
    im = ax_m.imshow(m, cmap="viridis", vmin=vmin, vmax=1.0, interpolation="nearest")
    ax_m.set_xticks(range(n))
    ax_m.set_yticks(range(n))
    ax_m.set_xticklabels(labels, rotation=60, ha="right", fontsize=8)
    ax_m.set_yticklabels(labels, fontsize=8)
    if n <= 12:
        # Enough decimals to tell the months apart (random dev weights give values near 1).
        spread = 1.0 - vmin
        decimals = 3 if spread >= 0.01 else 5
        for i in range(n):
            for j in range(n):
                if np.isfinite(m[i, j]):
                    dark = (m[i, j] - vmin) / max(1.0 - vmin, 1e-12) < 0.6  # viridis is dark at the low end
                    colour = "white" if dark else "black"
                    ax_m.text(j, i, f"{m[i, j]:.{decimals}f}", ha="center", va="center", fontsize=7, color=colour)
    if highlight in labels:
        k = list(labels).index(highlight)
        for tick in (ax_m.get_xticklabels()[k], ax_m.get_yticklabels()[k]):
            tick.set_fontweight("bold")
    ax_m.set_title("cosine similarity of pooled vectors", fontsize=10)
    cbar = fig.colorbar(im, ax=ax_m, fraction=0.046, pad=0.03)
    cbar.ax.tick_params(labelsize=7)
    xs = np.arange(n)
    if n > 1:
        prev = [np.nan] + [m[i, i - 1] for i in range(1, n)]
        ax_l.plot(xs, prev, marker="o", label="vs previous month")
        ax_l.plot(xs, m[0], marker="s", ls="--", label=f"vs {labels[0]}")
        ax_l.legend(fontsize=8, loc="lower left")
    else:
        ax_l.text(0.5, 0.5, "only one month stored\nfor this ROI", ha="center", va="center", transform=ax_l.transAxes)
    ax_l.set_xticks(xs)
    ax_l.set_xticklabels(labels, rotation=60, ha="right", fontsize=8)
    ax_l.set_ylabel("cosine similarity", fontsize=9)
    ax_l.ticklabel_format(axis="y", useOffset=False)
    ax_l.tick_params(axis="y", labelsize=8)
    ax_l.grid(alpha=0.3)
    ax_l.set_title("change over time (lower = more change)", fontsize=10)
    fig.suptitle(title, fontsize=12, y=0.985)
    if caption:
        fig.text(0.012, 0.02, "\n".join(caption), fontsize=8.5, family="monospace", va="bottom", ha="left")
    return _save(fig, path)


# -- the chip behind an entry ------------------------------------------------------------------


def provider_for_entry(meta: Mapping[str, Any], backend: Any = None) -> Any:
    """A provider able to fetch an entry's chip again, from its recorded provenance.

    Args:
        meta: the entry's provenance (``Embedding.meta``).
        backend: override (``'synthetic'``, ``'gee'``, ``'local:<folder>'`` or a provider).

    Raises:
        ProviderConfigError: the recorded provider cannot be rebuilt here.
    """
    from .providers.base import resolve_backend

    if backend is not None:
        return resolve_backend(backend)
    prov = meta.get("provider") or {}
    name = prov.get("provider")
    request = prov.get("request") or {}
    if name == "synthetic":
        from .providers.synthetic import SyntheticProvider

        kwargs = {k: request[k] for k in ("seed", "cloud_cover", "scenes_per_month") if k in request}
        return SyntheticProvider(**kwargs)
    if name == "gee":
        return resolve_backend("gee")
    if name == "local":
        path = request.get("path")
        if not path:
            raise ProviderConfigError("the entry's provenance has no local raster path; pass backend='local:<folder>'")
        return resolve_backend(f"local:{path}")
    raise ProviderConfigError(
        f"cannot refetch the chip: provider {name!r} recorded in the entry is not known here; "
        "pass a backend ('synthetic', 'gee', 'local:<folder>')"
    )


def chip_for_entry(meta: Mapping[str, Any], *, cache: Any = None, backend: Any = None) -> tuple[Any, str, list[str]]:
    """The chip an entry was computed from: from the chip cache, else fetched again.

    Returns:
        (chip, source ``"cache"``/``"refetched"``, notes).
    """
    from .cache import resolve_cache
    from .providers.base import fetch_key
    from .specs import SensorSpec, spec_from_dict

    notes: list[str] = []
    key = meta.get("fetch_key")
    chip_cache = resolve_cache(cache)
    if key and chip_cache is not None and backend is None:
        chip = chip_cache.get(key)
        if chip is not None:
            return chip, "cache", notes
    provider = provider_for_entry(meta, backend)
    roi = spec_from_dict(dict(meta["roi"]))
    temporal = spec_from_dict(dict(meta["temporal"]))
    sensor_d = {k: v for k, v in dict(meta["sensor"]).items() if k != "type"}
    sensor_d["bands"] = tuple(sensor_d.get("bands", ()))
    sensor = SensorSpec(**sensor_d)
    if key and fetch_key(provider, roi, temporal, sensor) != key:
        notes.append(
            "the refetched chip's request differs from the one recorded for this entry "
            "(provider settings or source files changed): the RGB may not be the pixels that were embedded"
        )
    return provider.fetch(roi, temporal, sensor), "refetched", notes


# -- store access ------------------------------------------------------------------------------


def _month_text(value: Any) -> str:
    return str(np.datetime_as_string(np.datetime64(value, "D")))[:7]


def resolve_roi_id(ds: Any, roi: str | None) -> str:
    """A ROI id from an id or a label (``None``: the store's only ROI); errors list what the store holds."""
    if "present" not in ds or ds.sizes.get("roi", 0) == 0:
        raise EmptyStoreError("the store holds no entries yet")
    ids = [str(v) for v in ds["roi"].values]
    if roi is None and len(ids) == 1:
        return ids[0]
    if roi in ids:
        return roi
    labels = [str(v) for v in ds["roi_label"].values] if "roi_label" in ds.coords or "roi_label" in ds else []
    matches = [i for i, lab in zip(ids, labels, strict=False) if lab and lab == roi]
    if len(matches) == 1:
        return matches[0]
    shown = [f"{lab} ({i})" if lab else i for i, lab in zip(ids, labels or [""] * len(ids), strict=False)]
    more = f" and {len(shown) - 10} more" if len(shown) > 10 else ""
    if roi is None:
        raise StoreLookupError(f"the store holds {len(ids)} ROIs: name one (id or label); ROIs: {shown[:10]}{more}")
    if len(matches) > 1:
        raise StoreLookupError(f"roi={roi!r} is the label of {len(matches)} ROIs ({matches}); give the ROI id")
    raise StoreLookupError(f"roi={roi!r} is not in the store (neither an id nor a label); ROIs: {shown[:10]}{more}")


def parse_month_arg(month: Any) -> dt.date:
    """``'YYYY-MM'`` or ``'YYYY-MM-DD'`` -> the month start date."""
    text = str(month).strip()
    if not re.fullmatch(r"\d{4}-\d{2}(-\d{2})?", text):
        raise StoreInputError(f"month={month!r} is invalid: must look like 'YYYY-MM'")
    try:
        day = dt.date.fromisoformat(text if len(text) == 10 else text + "-01")
    except ValueError:
        raise StoreInputError(f"month={month!r} is invalid: not a calendar month") from None
    return day.replace(day=1)


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "roi"


def make_quicklooks(
    ds: Any,
    roi: str | None,
    month: str | None,
    out_dir: str | Path,
    *,
    cache: Any = None,
    backend: Any = None,
    query: str | None = None,
    heatmap: Any = None,
) -> QuicklookResult:
    """Write the entry picture and the month-similarity picture for one ROI.

    Args:
        ds: the store as a Dataset (``open_embeddings``).
        roi: ROI id or label (``None`` when the store holds a single ROI).
        month: ``'YYYY-MM'``; ``None`` = the latest month stored for the ROI.
        out_dir: output folder (created).
        cache: chip cache (``None`` = default, a folder, ``False``).
        backend: provider override for refetching the chip.
        query: caption for the heatmap panel.
        heatmap: callable ``(ds, roi_id, month) -> (H, W) array`` giving the caption heatmap
            (the CLI passes :func:`rs_embed_core.search.patch_heatmap` bound to the query).
    """
    from .store import entry_grid, select_roi

    roi_id = resolve_roi_id(ds, roi)
    series = select_roi(ds, roi_id)
    months = [_month_text(t) for t in series["time"].values]
    if not months:
        raise StoreLookupError(f"roi={roi!r} has no entries in the store")
    if month is None:
        target = months[-1]
    else:
        target = parse_month_arg(month).isoformat()[:7]
        if target not in months:
            raise StoreLookupError(f"month={month!r} is not stored for roi={roi!r}; stored months: {months}")
    k = months.index(target)
    cell = series.isel(time=k)
    meta = json.loads(str(cell["meta_json"].values))
    label = str(cell["roi_label"].values) if "roi_label" in cell.coords or "roi_label" in cell else ""
    grid_da = entry_grid(ds, roi_id, target)
    grid = np.asarray(grid_da.values, dtype=np.float32)
    pca, explained = pca_rgb(grid)
    pca_extent = transform_extent(grid_da.attrs["transform"], grid.shape[1], grid.shape[2])

    chip, source, notes = chip_for_entry(meta, cache=cache, backend=backend)
    rgb = rgb_image(chip.dn, chip.bands, chip.valid)
    rgb_extent = transform_extent(chip.grid.transform, chip.grid.height, chip.grid.width)

    hm = None
    if query is not None and heatmap is not None:
        hm = np.asarray(heatmap(ds, roi_id, target), dtype=np.float32)
        if hm.ndim != 2:
            raise StoreInputError(f"caption heatmap must be 2-D (y, x), got shape {hm.shape}")

    out = Path(out_dir)
    stem = _safe_name(label or roi_id)
    name = f"{stem}_{target}" + (f"_{_safe_name(query)[:40]}" if hm is not None else "")
    caption = entry_caption(meta, roi_label=label, chip_source=source)
    entry_png = render_entry(
        out / f"{name}.png",
        rgb,
        rgb_extent,
        pca,
        pca_extent,
        caption,
        explained=explained,
        heatmap=hm,
        heatmap_extent=pca_extent,
        query=query,
        title=f"{label or roi_id}  {target}",
    )

    pooled = np.asarray(series["pooled"].values, dtype=np.float64)
    sim_caption = [
        f"ROI {label + ' (' + roi_id + ')' if label else roi_id}: {len(months)} months, "
        f"pooled ({meta.get('pooling', '?')}) vectors of dim {pooled.shape[1]}",
        caption[1],
    ]
    similarity_png = render_similarity(
        out / f"{stem}_similarity.png",
        months,
        cosine_matrix(pooled),
        title=f"{label or roi_id}: similarity across months",
        caption=sim_caption,
        highlight=target,
    )
    return QuicklookResult(
        entry_png=entry_png,
        similarity_png=similarity_png,
        roi_id=roi_id,
        roi_label=label,
        month=target,
        chip_source=source,
        notes=tuple(notes),
    )


__all__ = [
    "QuicklookResult",
    "chip_for_entry",
    "cosine_matrix",
    "entry_caption",
    "make_quicklooks",
    "parse_month_arg",
    "pca_rgb",
    "provider_for_entry",
    "render_entry",
    "render_similarity",
    "resolve_roi_id",
    "rgb_image",
    "transform_extent",
]
