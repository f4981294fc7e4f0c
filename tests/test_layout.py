"""The package layout holds: no import cycle, common/ imports no command and no phase, the data directory has one face.

Why: ``common/`` is split by concern (docs/design.md section 1). A cycle
between two of its packages makes the import order decide whether a module
loads; ``common/`` importing ``cli/`` would make the library depend on a
command's output format; and the data directory's face (``common.datadir``)
is only a face if code outside the package imports through it and it pulls
in nothing that could import the data directory back.
"""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

from tests.helpers import REPO_ROOT

# What the face may import from this repository outside its own package.
FACE_MAY_IMPORT = {"common.errors", "common.config", "common.phases"}


def _module_name(rel: Path) -> str:
    parts = rel.with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources(root: Path) -> dict[str, Path]:
    listed = subprocess.run(["git", "ls-files", "*.py"], cwd=root, capture_output=True, text=True, check=True).stdout
    return {_module_name(Path(f)): root / f for f in listed.split() if not f.startswith("tests/")}


def _imports(tree: ast.Module, top_level_only: bool) -> list[tuple[int, str]]:
    """(line, module) for each absolute import; ``from a import b`` also yields ``a.b`` (b may be a module)."""
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [(node.lineno, node.module)] + [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return found


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the repository modules (and their packages) it imports at module level (lazy imports run later)."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for _, target in _imports(ast.parse(path.read_text(encoding="utf-8")), top_level_only=True):
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                dep = ".".join(parts[:i])
                if dep in modules and dep != name and not name.startswith(dep + "."):
                    deps.add(dep)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle():
    assert cycles(import_graph(_sources(REPO_ROOT))) == []


def test_the_cycle_check_finds_one():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_common_never_imports_the_commands_or_a_phase():
    from common.phases import PHASES

    forbidden = {"cli", *(spec.module.split(".")[0] for spec in PHASES)}
    offenders = []
    for name, path in _sources(REPO_ROOT).items():
        if name.split(".")[0] != "common":
            continue
        for line, target in _imports(ast.parse(path.read_text(encoding="utf-8")), top_level_only=False):
            if target.split(".")[0] in forbidden:
                offenders.append(f"{path.relative_to(REPO_ROOT)}:{line} imports {target}")
    assert offenders == []


def test_the_data_directory_face_imports_only_its_package_and_the_config():
    modules = _sources(REPO_ROOT)
    outside = set()
    for name, path in modules.items():
        if name == "common.datadir" or name.startswith("common.datadir."):
            for _, target in _imports(ast.parse(path.read_text(encoding="utf-8")), top_level_only=True):
                if target in modules and not target.startswith("common.datadir"):
                    outside.add(target)
    assert outside <= FACE_MAY_IMPORT, outside - FACE_MAY_IMPORT


def test_the_face_exports_what_it_imports():
    import common.datadir as face

    assert sorted(face.__all__) == face.__all__ and len(set(face.__all__)) == len(face.__all__)
    assert all(hasattr(face, name) for name in face.__all__)
    assert "write_json" in face.__all__ and "Artifact" in face.__all__ and "exclusive" in face.__all__


def test_outside_the_package_code_imports_the_face():
    """``from common.datadir.storage import write_json`` outside the package is an offence; a private name is not."""
    import common.datadir as face

    exported = set(face.__all__)
    listed = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    offenders = []
    for rel in listed.split():
        if rel.startswith("common/datadir/"):
            continue
        for node in ast.walk(ast.parse((REPO_ROOT / rel).read_text(encoding="utf-8"))):
            if (isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("common.datadir.")
                    and all(a.name in exported for a in node.names)):
                offenders.append(f"{rel}:{node.lineno} from {node.module} import {', '.join(a.name for a in node.names)}")
    assert offenders == []
