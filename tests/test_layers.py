"""The import graph points only down: core <- origin, edge, control, ingest <- cli.

Run alone as ``python -m pytest tests/test_layers.py -q``: it reads every module's imports
(statically, with ``ast``), so any arrow that points up or sideways fails with its file and
line.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Each layer's folder, the package it installs as, and the layers it may import.
LAYERS: dict[str, set[str]] = {
    "core": set(),
    "origin": {"core"},
    "edge": {"core"},
    "control": {"core"},
    "ingest": {"core"},
    "cli": {"core", "origin", "edge", "control", "ingest"},
}


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every atcdn import in ``path``, lazy ones inside functions too."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return [(line, name) for line, name in found if name.split(".")[0] in {"atcdn", *LAYERS}]


def violations() -> list[str]:
    wrong = []
    for layer, allowed in LAYERS.items():
        for path in sorted((ROOT / layer).rglob("*.py")):
            for line, name in imports_of(path):
                parts = name.split(".")
                target = parts[1] if parts[0] == "atcdn" and len(parts) > 1 else None
                if target is None:
                    wrong.append(f"{path.relative_to(ROOT)}:{line} imports {name}: "
                                 "not under the atcdn namespace")
                elif target != layer and target not in allowed:
                    wrong.append(f"{path.relative_to(ROOT)}:{line} ({layer}) imports {name} "
                                 f"({target}): {layer} may import only {sorted(allowed) or 'nothing'}")
    return wrong


def test_imports_only_point_down() -> None:
    assert violations() == []


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from atcdn.edge.app import create_app\n")
    assert imports_of(bad) == [(2, "atcdn.edge.app")]


@pytest.mark.parametrize("module", ["atcdn.origin.app", "atcdn.edge.app"])
def test_servers_load_neither_pyav_nor_boto3(module: str) -> None:
    """The server processes decode no video and talk to AWS only when a feed is set."""
    code = (f"import sys, {module}; "
            "print(sorted(m for m in ('av', 'boto3', 'botocore') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    assert out.strip() == "[]"
