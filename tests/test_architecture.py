"""The layering the architecture docs promise (docs/architecture.md), checked on the source."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

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


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package_imports(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that ``path`` imports anywhere (inside functions too)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            found.update(c for c in (target, *(f"{target}.{a.name}" for a in node.names)) if c in modules)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in modules)
    return found - {name}


def import_cycles() -> list[list[str]]:
    """The package's import circles (strongly connected groups of two or more modules)."""
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {m: _package_imports(p, set(paths)) for m, p in paths.items()}
    order, low, stack, cycles = {}, {}, [], []

    def visit(v):
        order[v] = low[v] = len(order)
        stack.append(v)
        for w in graph[v]:
            if w not in order:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], order[w])
        if low[v] == order[v]:
            group = stack[stack.index(v):]
            del stack[stack.index(v):]
            if len(group) > 1:
                cycles.append(sorted(group))

    for v in sorted(graph):
        if v not in order:
            visit(v)
    return cycles


def test_no_module_imports_itself_back_through_a_circle():
    assert import_cycles() == []


def test_the_cycle_finder_finds_a_circle(tmp_path, monkeypatch):
    package = tmp_path / "lightning_dfc"
    (package / "core").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "core" / "__init__.py").write_text("")
    (package / "core" / "a.py").write_text("from .b import x\n")
    (package / "core" / "b.py").write_text("def f():\n    from .a import y\n")
    (package / "core" / "c.py").write_text("from . import a\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", package)
    assert import_cycles() == [["lightning_dfc.core.a", "lightning_dfc.core.b"]]


@pytest.mark.parametrize("old", ["dynamics", "rules", "settings", "control", "callbacks", "data", "cli", "mixin"])
def test_the_paths_from_before_the_core_shell_split_are_gone(old):
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(f"lightning_dfc.{old}")


def test_the_plain_door_imports_no_lightning():
    code = ("import sys, lightning_dfc; from lightning_dfc import DFC, MLP; "
            "print(sorted(m for m in ('lightning', 'torchvision', 'jsonargparse', 'torchmetrics') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    import lightning_dfc

    assert lightning_dfc.DFCModule.__module__ == "lightning_dfc.shell.module"
    assert lightning_dfc.DFCMixin.__module__ == "lightning_dfc.shell.mixin"


INTERNALS = PACKAGE / "shell" / "lightning_internals.py"  # the one place for Lightning's private state
OWN_PRIVATE = ("_dfc", "_replace")  # our own attributes on Lightning's objects; NamedTuple's public _replace


def private_accesses(source: str, defined: set[str]) -> list[str]:
    """Private attributes of objects that are not ours, read in ``source``: ``x._attr`` on anything
    but ``self``/``cls``, ``getattr(x, "_attr")``, and ``self._attr`` that the package never
    defines (a base class's: Lightning's, on a LightningModule)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            if node.attr.startswith(OWN_PRIVATE):
                continue
            on_self = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
            if not on_self or node.attr not in defined:
                found.append(f"{node.lineno}: {ast.unparse(node)}")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "hasattr", "setattr") and len(node.args) > 1
              and isinstance(node.args[1], ast.Constant) and str(node.args[1].value).startswith("_")
              and not str(node.args[1].value).startswith(OWN_PRIVATE)):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def _defined_private_names() -> set[str]:
    names = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)  # dataclass fields
    return names


def test_no_private_lightning_state_outside_its_one_module():
    defined = _defined_private_names()
    for path in sorted(PACKAGE.rglob("*.py")):
        if path != INTERNALS:
            assert private_accesses(path.read_text(), defined) == [], path.relative_to(PACKAGE)
    assert private_accesses(INTERNALS.read_text(), defined)  # it is where they are


def test_the_private_access_finder_finds_them():
    planted = ("class M:\n    def f(self, trainer):\n        self._own = 1\n        a = trainer._results\n"
               "        b = getattr(trainer.progress_bar_callback, '_train_progress_bar', None)\n"
               "        c = self._trainer\n        return self._own, self._dfc_x, trainer._dfc_y, a, b, c\n")
    found = private_accesses(planted, {"_own"})
    assert found == ["4: trainer._results", "5: getattr(trainer.progress_bar_callback, '_train_progress_bar', None)",
                     "6: self._trainer"], found
