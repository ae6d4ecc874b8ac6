"""Entry digests: when two entries are "the same computation".

An entry in the store is skipped on rerun when its digest matches: same pixels
(fetch key), same weights (checkpoint sha256), same preprocessing and output
settings. Run facts (time, host, run id) are deliberately not part of it.
"""

from __future__ import annotations

import hashlib
from typing import Any

from .specs import canonical_json

DIGEST_FIELDS = (
    "fetch_key",
    "model",
    "model_arch",
    "checkpoint_sha256",
    "preprocess_path",
    "input_prep",
    "pooling",
)


def entry_digest(meta: dict[str, Any]) -> str:
    """sha256 over the provenance fields that determine an entry's values."""
    missing = [k for k in DIGEST_FIELDS if k not in meta]
    if missing:
        raise KeyError(f"entry metadata lacks {', '.join(missing)}")
    return hashlib.sha256(canonical_json({k: meta[k] for k in DIGEST_FIELDS}).encode()).hexdigest()
