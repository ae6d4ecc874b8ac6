"""Opt-in checks against the real Earth Engine service.

Run with ``RS_EMBED_ONLINE=1 EE_PROJECT=<project> pytest -m online tests/test_gee_online.py``
after ``earthengine authenticate`` (or with ``EE_SERVICE_ACCOUNT_KEY`` set).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from rs_embed_core import NoImageryError, PointBuffer, SensorSpec, TemporalSpec
from rs_embed_core.providers.gee import GeeProvider

pytestmark = [
    pytest.mark.online,
    pytest.mark.skipif(
        os.environ.get("RS_EMBED_ONLINE") != "1"
        or not (os.environ.get("EE_PROJECT") or os.environ.get("GOOGLE_CLOUD_PROJECT")),
        reason="needs RS_EMBED_ONLINE=1 and EE_PROJECT (real Earth Engine)",
    ),
]

# Lake Geneva's north shore: water in the south of the chip, land in the north.
ROI = PointBuffer(6.63, 46.50, 1024, label="lausanne")
SUMMER = TemporalSpec.range("2024-06-01", "2024-09-01")


def test_real_chip_is_north_up_and_complete():
    chip = GeeProvider().fetch(ROI, SUMMER, SensorSpec(cloudy_pct=20))
    assert chip.dn.shape == (3, 205, 205) and chip.dn.dtype == np.uint16
    assert chip.n_scenes > 0 and all(s for s in chip.scene_ids) and chip.valid_fraction > 0.95
    # Row 0 is north: the northern rows are land (brighter in red) than the lake in the south.
    red = chip.dn[0].astype(float)
    assert red[:40].mean() > red[-40:].mean()


def test_real_empty_window_raises_no_imagery():
    with pytest.raises(NoImageryError):
        GeeProvider().fetch(ROI, TemporalSpec.range("2024-06-01", "2024-06-02"), SensorSpec(cloudy_pct=0))
