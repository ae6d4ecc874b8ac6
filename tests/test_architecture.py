"""The import rule: rs_embed_core never imports prefect, tasks or flows; tasks never import flows."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(package: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


def test_core_never_imports_orchestration():
    bad = {f: n & {"prefect", "tasks", "flows"} for f, n in _imports("rs_embed_core").items()}
    assert not {f: n for f, n in bad.items() if n}


def test_tasks_never_import_flows():
    bad = {f: n & {"flows"} for f, n in _imports("tasks").items()}
    assert not {f: n for f, n in bad.items() if n}


def test_import_is_light():
    code = "import sys, rs_embed_core; print(sorted(m for m in ('torch','open_clip','rshf','ee','icechunk','prefect','rasterio') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
