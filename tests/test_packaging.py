"""Packaging and layout: the hand-written package list in pyproject.toml names every subpackage; no import cycles."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def listed_packages() -> set[str]:
    text = (ROOT / "pyproject.toml").read_text()
    block = re.search(r"^packages = \[(.*?)\]", text, re.S | re.M).group(1)
    return set(re.findall(r'"([\w.]+)"', block))


def test_every_subpackage_is_listed():
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "mlx_slm").rglob("__init__.py")}
    for folder in ("kernels", "coreml"):  # top-level folders mapped into the package
        found |= {f"mlx_slm.{folder}" + "".join("." + part for part in p.parent.relative_to(ROOT / folder).parts)
                  for p in (ROOT / folder).rglob("__init__.py")}
    assert found == listed_packages()


def module_imports(root: Path) -> dict[str, set]:
    """Each module of the package -> the package modules its top-level statements import, with the
    packages whose ``__init__`` an import runs first (all but the importer's own ancestors, which are
    already initialising when it runs)."""
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def with_packages(target: str, importer: str) -> set:
        parts = target.split(".")
        found = {".".join(parts[:n]) for n in range(1, len(parts) + 1)} & modules.keys()
        return {m for m in found if not importer.startswith(m + ".") and m != importer}

    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.parse(path.read_text()).body:
            targets = []
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                targets = [target] + [f"{target}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            for target in targets:
                edges |= with_packages(target, name)
        graph[name] = edges
    return graph


def test_no_import_cycles_at_module_level():
    """Importing any module never re-enters one that is still initialising (issue 23: no cycles).
    Imports inside functions are left out: a method module calls its MLX algorithm lazily."""
    graph = module_imports(ROOT / "mlx_slm")
    state = {}

    def visit(name, path):
        state[name] = "open"
        for other in sorted(graph[name]):
            assert state.get(other) != "open", f"import cycle: {' -> '.join([*path, other])}"
            if other not in state:
                visit(other, [*path, other])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
