"""Child process for the fault tests: one core pipeline run, optionally frozen at a chosen moment.

``python tests/_fault_child.py '<json config>'`` runs :func:`rs_embed_core.pipeline.run_direct`
with the synthetic provider and a checkpoint folder. ``config["pause_at"]`` picks where
the run stops to wait (forever) for the parent's SIGKILL, after touching
``config["signal"]`` so the parent knows the moment has come:

* ``"inference"``: inside the model forward of batch ``config.get("pause_batch", 2)``
  (earlier batches are already staged);
* ``"commit"``: after every chunk of the commit was written to storage, right before the
  snapshot is committed (the worst moment: data files exist, no snapshot refers to them).

``config["barrier"]`` (a list of files): touch the first, wait for all, then run, so two
children write at the same time. The hooks wrap functions from this script, so the core
needs no test code.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def _pause(signal: str) -> None:
    Path(signal).write_text("paused")
    while True:  # until SIGKILL
        time.sleep(1)


def _install_hooks(cfg: dict) -> None:
    pause_at = cfg.get("pause_at")
    if pause_at == "inference":
        from rs_embed_core import api

        original = api.embed_chips
        calls = {"n": 0}

        def embed_chips(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            calls["n"] += 1
            if calls["n"] >= int(cfg.get("pause_batch", 2)):
                _pause(cfg["signal"])
            return original(*args, **kwargs)

        api.embed_chips = embed_chips  # pipeline.infer_batch imports it at call time
    elif pause_at == "commit":
        from rs_embed_core.store import writer

        original_apply = writer._apply

        def apply(session, entries, dtype, written_at):  # noqa: ANN001, ANN202
            out = original_apply(session, entries, dtype, written_at)
            _pause(cfg["signal"])
            return out

        writer._apply = apply


def main() -> None:
    cfg = json.loads(sys.argv[1])
    from rs_embed_core.pipeline import run_direct
    from rs_embed_core.planning import build_request

    _install_hooks(cfg)
    request = build_request(
        cfg["rois"], months=cfg["months"], checkpoint=cfg["checkpoint"], batch_size=cfg.get("batch_size", 2)
    )
    if cfg.get("barrier"):
        mine, *_ = cfg["barrier"]
        Path(mine).write_text("ready")
        deadline = time.time() + 120
        while not all(Path(p).exists() for p in cfg["barrier"]) and time.time() < deadline:
            time.sleep(0.02)
    out = run_direct(
        request,
        store=cfg["store"],
        staging_dir=cfg["staging"],
        backend="synthetic",
        cache=cfg["cache"],
        device="cpu",
    )
    print("RESULT " + json.dumps({"counts": out["counts"], "snapshot_id": out["snapshot_id"]}), flush=True)


if __name__ == "__main__":
    main()
