"""Run reports: per-entry outcome rows and a markdown summary (what the UI shows)."""

from __future__ import annotations

import html
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from .planning import Plan, RunRequest, WorkItem

WRITTEN, SKIPPED = "written", "skipped"


def md_cell(text: Any) -> str:
    """User text for one markdown table cell: one line, HTML and markdown syntax escaped.

    ROI labels come from user files; unescaped they could break the table or inject
    links and HTML into the Prefect UI.
    """
    s = html.escape(" ".join(str(text).split()), quote=False)
    return re.sub(r"([\\`*_\[\]|#~!])", r"\\\1", s)


def md_code(text: Any) -> str:
    """User text inside an inline code span: backticks and line breaks removed."""
    return " ".join(str(text).replace("`", "'").split())


def outcome_rows(
    plan: Plan,
    fetch_outcomes: Mapping[tuple[str, str], Mapping[str, Any]],
    written: set[tuple[str, str]],
) -> list[dict[str, Any]]:
    """One row per ROI x window: status (written / skipped / no_imagery / failed / not written) and why."""
    rows = []
    for item in plan.skipped:
        rows.append(_row(item, SKIPPED, "identical entry already in the store"))
    for item in plan.todo:
        out = fetch_outcomes.get(item.key, {})
        if item.key in written:
            rows.append(_row(item, WRITTEN, ""))
        elif out.get("status") in ("no_imagery", "failed"):
            rows.append(_row(item, out["status"], out.get("reason", "")))
        else:
            rows.append(_row(item, "failed", out.get("reason") or "not computed"))
    rows.sort(key=lambda r: (r["month"], r["roi"]))
    return rows


def _row(item: WorkItem, status: str, reason: str) -> dict[str, Any]:
    return {
        "roi": item.roi.id,
        "label": item.roi.label or "",
        "month": item.temporal.label(),
        "status": status,
        "reason": reason[:300],
    }


def counts(rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Counts per status, always with written / skipped / failed / no_imagery keys."""
    c = Counter(r["status"] for r in rows)
    return {k: int(c.get(k, 0)) for k in (WRITTEN, SKIPPED, "no_imagery", "failed")}


def summary_markdown(
    request: RunRequest,
    rows: Sequence[Mapping[str, Any]],
    result: Mapping[str, Any],
    *,
    store: str,
    dispatch: str,
    run_name: str | None = None,
    weights_are_random: bool = False,
) -> str:
    """The run summary: what was asked, written, skipped, failed and why, snapshot and tag."""
    c = counts(rows)
    lines = [
        f"# Embedding run {run_name or ''}".rstrip(),
        "",
        f"- **Asked**: {len(request.rois)} ROIs x {len(request.windows)} windows "
        f"({', '.join(w.label() for w in request.windows)}) = {request.n_entries} entries",
        f"- **Model**: {request.model}, checkpoint `{md_code(request.sensor.checkpoint or 'default')}`, "
        f"input_prep `{request.input_prep}`, output `{request.output.mode}/{request.output.pooling}`, "
        f"batch size {request.batch_size}, inference `{dispatch}`",
        f"- **Written**: {c['written']}  **Skipped** (identical): {c['skipped']}  "
        f"**No imagery**: {c['no_imagery']}  **Failed**: {c['failed']}",
        f"- **Store**: `{md_code(store)}`  snapshot `{result.get('snapshot_id') or 'none (nothing new to commit)'}`",
    ]
    if result.get("tag"):
        lines.append(f"- **Tag**: `{md_code(result['tag'])}` ({md_cell(result.get('tag_note') or '')})")
    if weights_are_random:
        lines.append("- **WARNING**: the checkpoint has RANDOM weights (dev checkpoint); embeddings are NOT real.")
    problems = [r for r in rows if r["status"] in ("failed", "no_imagery")]
    if problems:
        lines += ["", "## Not written", "", "| ROI | label | month | status | reason |", "|---|---|---|---|---|"]
        for r in problems[:200]:
            lines.append(
                f"| {r['roi']} | {md_cell(r['label'])} | {r['month']} | {r['status']} | {md_cell(r['reason'])} |"
            )
        if len(problems) > 200:
            lines.append(f"| ... | | | | {len(problems) - 200} more |")
    return "\n".join(lines) + "\n"


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON data (specs via ``to_dict``, anything else via ``repr``)."""
    import json

    from .specs import _jsonable

    return json.loads(json.dumps(_jsonable(value), default=repr))
