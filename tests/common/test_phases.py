"""The phase registry is the one list of the phases, and everything that needs the phases derives from it."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

from common.config import ALL_PHASES, GENERATING_PHASES
from common.datadir import PHASE_COMMANDS, PHASE_DIRS, artifacts
from common.errors import PipelineError
from common.phases import PHASES, canonical, phase, phase_keys

REPO = Path(__file__).resolve().parents[2]
KEYS = {p.key for p in PHASES}
FOLDERS = {p.folder for p in PHASES}
PACKAGES = {p.module for p in PHASES}


def test_phase_1_0_and_phase_1_are_the_same_spec():
    assert phase("1.0") is phase("1")
    assert phase(" 1.0 ") is phase("1")
    assert canonical("1.0") == "1" and canonical("1.2") == "1.2"


def test_unknown_phase_is_one_line():
    with pytest.raises(PipelineError, match=r"unknown phase '4'; known: 0, 0.1, 1, 1.2, 2, 3"):
        phase("4")
    assert canonical(" 4 ") == "4"  # left for argparse's choices to refuse


def test_names_folders_and_packages_are_unique():
    names = [n for p in PHASES for n in (p.key, *p.aliases)]
    assert len(names) == len(set(names))
    assert len(FOLDERS) == len(PHASES) and len(PACKAGES) == len(PHASES)


def test_each_phase_package_exists_with_its_run_function_and_launcher_module():
    for spec in PHASES:
        assert (REPO / spec.module / "__init__.py").is_file(), spec.module
        assert "def run(" in (REPO / spec.module / "__init__.py").read_text() or any(
            "def run(" in f.read_text() for f in (REPO / spec.module).glob("*.py")
        ), spec.module
        if spec.shard_module:
            assert (REPO / (spec.shard_module.replace(".", "/") + ".py")).is_file(), spec.shard_module


def test_artifact_keys_are_declared_and_writes_match_the_writers():
    declared = {a.key: a for a in artifacts.ALL}
    for spec in PHASES:
        for key in (*spec.writes, *spec.reads):
            assert key in declared, f"phase {spec.key}: no artifact {key!r} in common/datadir/artifacts.py"
        assert set(spec.writes) == {a.key for a in artifacts.ALL if a.phase == spec.key}, spec.key
        earlier = set(phase_keys()[: phase_keys().index(spec.key)])
        assert all(declared[k].phase in earlier for k in spec.reads), f"phase {spec.key} reads a later phase's file"


def test_derived_maps_follow_the_registry():
    assert tuple(PHASE_DIRS) == ALL_PHASES == phase_keys()
    assert PHASE_DIRS["1"] == "phase1_0" and PHASE_COMMANDS["2"] == "python3 run.py phase 2 --split sae"
    assert GENERATING_PHASES == ("1", "1.2")


def _literal_strings(node: ast.AST) -> set[str]:
    """The string constants a collection literal holds, at any depth (dict keys included)."""
    return {n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def _outermost_literals(tree: ast.AST) -> list[ast.AST]:
    found: list[ast.AST] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, (ast.List, ast.Tuple, ast.Set, ast.Dict)):
            found.append(node)
            return
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _imported_phase_packages(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names & PACKAGES


def _sources() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    skip = {"common/phases.py"}
    return [REPO / f for f in listed.split() if not f.startswith("tests/") and f not in skip]


def test_no_other_module_lists_the_phases():
    """Outside the registry, no literal names most of the phases (four keys or more), or two phase folders or
    packages, and no module imports more than one phase package (the demo used to import all six).

    The study (``study/``) is exempt: its plan is a recipe of ``run.py`` command lines, each step with its own
    study settings and tools between them, and its report names each phase's own files; neither declares what
    the phases are.
    """
    offenders = []
    for path in _sources():
        rel = path.relative_to(REPO).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        packages = _imported_phase_packages(tree)
        if len(packages) > 1 and not rel.startswith(tuple(PACKAGES)):
            offenders.append(f"{rel} imports {sorted(packages)}")
        if rel.startswith("study/"):
            continue
        for node in _outermost_literals(tree):
            strings = _literal_strings(node)
            if len(strings & KEYS) >= 4 or len(strings & FOLDERS) >= 2 or len(strings & PACKAGES) >= 2:
                offenders.append(f"{rel}:{node.lineno} lists {sorted(strings & (KEYS | FOLDERS | PACKAGES))}")
    assert not offenders, offenders


def test_the_scan_finds_a_phase_list():
    """The scan above can fail: the old dispatcher table and demo steps are both caught."""
    old = 'PHASES = {"0": "a", "0.1": "b", "1": "c", "1.2": "d"}\nsteps = [("2", f, c), ("3", g, c)]\nx = ("phase0", "phase2")'
    tree = ast.parse(old)
    flagged = [n for n in _outermost_literals(tree)
               if len(_literal_strings(n) & KEYS) >= 4 or len(_literal_strings(n) & FOLDERS) >= 2]
    assert len(flagged) == 2
    assert _imported_phase_packages(ast.parse("import phase0_difficulty\nfrom phase3_validation import run")) == {
        "phase0_difficulty", "phase3_validation"}
