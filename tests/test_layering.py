"""The package layout keeps one direction: no cycle between sae_core's subpackages, the core never imports the app
or Streamlit, and every module is in a subpackage named in pyproject.toml (so it ships in the wheel)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "sae_core"


def _imports(path: Path) -> list[str]:
    """Every module `path` imports, absolute (relative imports resolved from its package)."""
    module = path.relative_to(ROOT).with_suffix("").parts
    package = list(module[:-1]) if path.name != "__init__.py" else list(module[:-1])
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            out.append(".".join(base + ([node.module] if node.module else [])))
        elif isinstance(node, ast.Import):
            out.extend(alias.name for alias in node.names)
    return out


def _group(path: Path) -> str:
    """A module's place: its subpackage under sae_core, or the module's own name at the top level."""
    parts = path.relative_to(CORE).parts
    return parts[0] if len(parts) > 1 else parts[0].removesuffix(".py")


def test_no_cycle_between_subpackages():
    edges: dict[str, set[str]] = defaultdict(set)
    for path in CORE.rglob("*.py"):
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "sae_core" and len(parts) > 1 and parts[1] != _group(path) and parts[1] != "__init__":
                edges[_group(path)].add(parts[1])
    seen: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(edges.get(node, ())):
            assert nxt not in path, f"import cycle between subpackages: {' -> '.join([*path, nxt])}"
            if nxt not in seen:
                seen.add(nxt)
                visit(nxt, [*path, nxt])

    for start in sorted(edges):
        visit(start, [start])
    used = {dep for deps in edges.values() for dep in deps}
    assert "cli" not in used, "nothing imports the command line"
    assert "testing" not in used, "the scaffolding in sae_core/testing serves tests and benchmarks only"


def test_the_core_never_imports_the_app_or_streamlit():
    for path in CORE.rglob("*.py"):
        for name in _imports(path):
            assert name.split(".")[0] not in ("streamlit", "explorer"), f"{path.relative_to(ROOT)} imports {name}"


def test_every_package_ships_in_the_wheel():
    declared = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in CORE.rglob("__init__.py")}
    assert found - declared == set(), f"add these packages to pyproject.toml: {sorted(found - declared)}"
    top_level = sorted(p.name for p in CORE.glob("*.py"))
    assert top_level == ["__init__.py", "cli.py", "data_files.py", "devices.py", "errors.py", "hub.py", "io.py",
                         "options.py"], (
        "a module at the top of sae_core: put it in the subpackage of its step (docs/modules.md)")
