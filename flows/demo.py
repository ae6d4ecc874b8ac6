"""``make demo``: the whole product offline, in a minute, through the real Prefect flow.

What it does:

1. writes a RANDOM-WEIGHT development checkpoint of the real architecture
   (``make_dev_checkpoint``; its embeddings are NOT RemoteCLIP embeddings),
2. runs the ``embed-rois`` flow for a handful of ROIs over two months with the
   synthetic Sentinel-2 provider (no network, no credentials),
3. writes a local Icechunk store under ``./demo-output`` and prints what was
   written, how long it took and where everything is.

Run it twice: the second run finds every entry already stored (identical
provenance), fetches and computes nothing, and adds no commit.

Options: ``python -m flows.demo [--out DIR] [--arch ViT-B-32|tiny] [--force]``.
Without ``PREFECT_API_URL`` the flow runs against a temporary local Prefect server
with its state under ``<out>/prefect-home``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

DEMO_ROIS = [
    {"label": "paris-bois-de-boulogne", "lon": 2.2498, "lat": 48.8625, "buffer_m": 1000},
    {"label": "nile-delta-fields", "lon": 31.1340, "lat": 30.8200, "buffer_m": 1000},
    {"label": "mato-grosso-farms", "lon": -55.7200, "lat": -12.5500, "buffer_m": 1000},
    {"label": "rhine-at-cologne", "lon": 6.9630, "lat": 50.9410, "buffer_m": 1000},
    {"label": "lake-naivasha", "lon": 36.3500, "lat": -0.7700, "buffer_m": 1000},
]
DEMO_MONTHS = ["2024-05", "2024-06"]
BANNER = "!" * 78


def _setup_env(out: Path) -> None:
    """Keep all demo state under ``out`` unless the user points elsewhere (before Prefect is imported)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RS_EMBED_CACHE_DIR", str(out / "chips"))
    if "PREFECT_API_URL" not in os.environ:
        os.environ.setdefault("PREFECT_HOME", str(out / "prefect-home"))
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        # The temporary server needs ~15 s on a busy 2-core machine; Prefect's default wait is shorter.
        os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="demo-output", help="output folder (default ./demo-output)")
    parser.add_argument("--arch", default="ViT-B-32", help="dev checkpoint architecture: ViT-B-32 (default) or tiny")
    parser.add_argument("--force", action="store_true", help="recompute and rewrite every entry")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    _setup_env(out)

    from rs_embed_core.models import make_dev_checkpoint

    ckpt_dir = out / f"dev-checkpoint-{args.arch}"
    if not (ckpt_dir / "model.safetensors").is_file():
        print(f"writing a random-weight {args.arch} dev checkpoint to {ckpt_dir} ...", flush=True)
        make_dev_checkpoint(ckpt_dir, arch=args.arch, seed=0)

    from flows.embed import embed_rois

    store = out / "store"
    rois_csv = out / "rois.csv"
    rois_csv.write_text(
        "label,lon,lat,buffer_m\n" + "".join(f"{r['label']},{r['lon']},{r['lat']},{r['buffer_m']}\n" for r in DEMO_ROIS)
    )
    print(BANNER)
    print("!! DEMO: synthetic imagery + a dev checkpoint with RANDOM weights.")
    print("!! These embeddings are NOT real RemoteCLIP embeddings. Do not use them for anything.")
    print(BANNER, flush=True)
    from prefect.client.orchestration import get_client

    t0 = time.perf_counter()
    with get_client(sync_client=True) as client:  # starts the temporary server now, outside the run's timing
        client.api_healthcheck()
    print(f"Prefect API ready at {client.api_url} ({time.perf_counter() - t0:.1f} s)", flush=True)
    t0 = time.perf_counter()
    result = embed_rois(
        rois=str(rois_csv),
        store=str(store),
        months=DEMO_MONTHS,
        backend="synthetic",
        checkpoint=str(ckpt_dir),
        device="cpu",
        batch_size=8,
        force=args.force,
    )
    elapsed = time.perf_counter() - t0

    from rs_embed_core.store import EmbeddingStore

    handle = EmbeddingStore.open(str(store), create=False)
    ds = handle.open_dataset()
    runs_file = out / "runs.json"
    runs = json.loads(runs_file.read_text()) if runs_file.is_file() else []
    runs.append({"seconds": round(elapsed, 2), "counts": result["counts"], "snapshot_id": result["snapshot_id"]})
    runs_file.write_text(json.dumps(runs, indent=1))

    c = result["counts"]
    print()
    print(
        f"run {len(runs)}: {elapsed:.1f} s  written {c['written']}, skipped (already stored) {c['skipped']}, "
        f"no imagery {c['no_imagery']}, failed {c['failed']}"
    )
    if len(runs) > 1:
        print(
            f"  first run took {runs[0]['seconds']:.1f} s; this run {elapsed / max(runs[0]['seconds'], 1e-9):.0%} of it"
        )
    print(f"  commit: {result['snapshot_id'] or 'none (nothing new)'}; commits on main: {len(handle.history())}")
    print(
        f"  store entries: {int(ds.present.values.sum())} of {ds.sizes['roi']} ROIs x {ds.sizes['time']} months "
        f"(no duplicates: one cell per ROI and month)"
    )
    print(
        f"  grid {tuple(ds.grid.shape[2:])} tokens, pooled {ds.sizes['dim']}-d, joint {ds.sizes['embed']}-d, "
        f"weights_are_random={bool(ds.weights_are_random.values.all())}"
    )
    from rs_embed_core.quicklook import make_quicklooks

    quicklooks = out / "quicklooks"
    pngs = []
    for roi in DEMO_ROIS[:2]:
        ql = make_quicklooks(ds, roi["label"], None, quicklooks)
        pngs += [ql.entry_png, ql.similarity_png]
    print(f"  quicklooks: {len(pngs)} PNGs (RGB chip beside the grid's first 3 principal components, month similarity)")
    print()
    print("where things are:")
    print(f"  store (Icechunk):    {store}")
    print(f"  dev checkpoint:      {ckpt_dir}   (RANDOM weights, NOT RemoteCLIP)")
    print(f"  chip cache:          {os.environ['RS_EMBED_CACHE_DIR']}")
    print(f"  ROI list:            {rois_csv}")
    print(f"  quicklook PNGs:      {quicklooks}")
    if "PREFECT_HOME" in os.environ and "PREFECT_API_URL" not in os.environ:
        print(f"  Prefect state:       {os.environ['PREFECT_HOME']}  (task cache records, temporary server db)")
    print()
    print("read it back:")
    print(f"  python -c \"from rs_embed_core.store import open_embeddings; print(open_embeddings('{store}'))\"")
    print("run again (`make demo`): everything is skipped, nothing is fetched or computed, no new commit.")
    print()
    print("switch to real data:")
    print("  Earth Engine:  earthengine authenticate; export EE_PROJECT=<your cloud project>; use backend='gee'")
    print("  real weights:  hf download MVRL/remote-clip-vit-base-patch32 (where the hub is reachable), then")
    print("                 rs-embed embed rois.csv --month 2026-11 --store ./store --backend gee")
    print(BANNER)
    print("!! Reminder: RANDOM dev weights. Real runs use MVRL/remote-clip-vit-base-patch32.")
    print(BANNER)
    return 0


if __name__ == "__main__":
    sys.exit(main())
