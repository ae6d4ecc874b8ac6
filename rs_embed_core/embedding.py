"""What the API returns: the requested output plus everything needed to store it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True, eq=False)
class Embedding:
    """One ROI x window embedding.

    Attributes:
        data: the requested output: the pooled vector (D,) for ``OutputSpec.pooled``,
            or the georeferenced grid (an ``xarray.DataArray`` (dim, y, x)) for
            ``OutputSpec.grid``.
        meta: provenance (model, checkpoint and its sha256, preprocess_path, device,
            versions, provider report, ...); JSON-ready.
        grid: patch tokens as a DataArray (dim, y, x) with x/y cell centres in the
            chip CRS (``attrs["crs"]``, ``attrs["transform"]``); always computed,
            since tokens cost nothing over the pooled vector.
        pooled: token mean or max (D,), in the same space as ``grid``.
        image_embedding: CLIP joint-space image vector (E,), text-comparable.
    """

    data: Any
    meta: dict[str, Any] = field(default_factory=dict)
    grid: Any = None
    pooled: np.ndarray | None = None
    image_embedding: np.ndarray | None = None
