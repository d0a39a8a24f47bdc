"""The layering the architecture docs promise (docs/architecture.md), checked on the source."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_dfc"
SHELL_ONLY = ("lightning", "torchmetrics", "jsonargparse", "torchvision", "matplotlib")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
    return names


def test_the_core_imports_neither_lightning_nor_the_shell():
    for path in sorted((PACKAGE / "core").rglob("*.py")):
        for name in _imports(path):
            top = name.lstrip(".").split(".")[0]
            assert top not in SHELL_ONLY, f"{path.relative_to(PACKAGE)} imports {name}"
            assert "shell" not in name.split("."), f"{path.relative_to(PACKAGE)} imports the shell ({name})"


def test_functions_and_classes_stay_small():
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            limit = 80 if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else (
                250 if isinstance(node, ast.ClassDef) else None)
            if limit and node.end_lineno - node.lineno + 1 > limit:
                too_long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}")
    assert not too_long, too_long
