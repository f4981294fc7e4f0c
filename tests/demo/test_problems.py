"""Checks on the bundled demo problem set (demo/problems.jsonl).

Why: `run.py demo` trains a tiny model to memorise part of these problems and
then judges its generations by running the asserts. That only means something
if every reference solution passes its own asserts, if the asserts actually
reject a wrong solution, and if the file keeps the original MBPP jsonl format
that the MBPP loader reads.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

PROBLEMS_PATH = Path(__file__).resolve().parents[2] / "demo" / "problems.jsonl"
REQUIRED_KEYS = {"text", "code", "task_id", "test_setup_code", "test_list", "challenge_test_list"}
MIN_PROBLEMS = 60
SENTINEL = "PVA_ALL_ASSERTS_RAN"
CALL_RE = re.compile(r"^assert\s+([A-Za-z_]\w*)\(")


def load_problems() -> list[dict[str, Any]]:
    """Read the jsonl, one problem per non-empty line."""
    with PROBLEMS_PATH.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def entry_name(problem: dict[str, Any]) -> str:
    """The function the asserts call (all three must call the same one)."""
    names = {CALL_RE.match(a).group(1) for a in problem["test_list"]}  # type: ignore[union-attr]
    assert len(names) == 1, f"task {problem['task_id']}: asserts call several functions {names}"
    return names.pop()


def build_program(code: str, setup: str, asserts: list[str]) -> str:
    """MBPP order: the solution, then the setup code (it may use what the solution defines), then the asserts."""
    return "\n".join([code, setup, *asserts, f"print({SENTINEL!r})"]) + "\n"


def wrong_code(problem: dict[str, Any]) -> str:
    """The reference code with the tested function redefined to `return None`."""
    return problem["code"] + f"\n\ndef {entry_name(problem)}(*args, **kwargs):\n    return None\n"


def run_python(program: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run one program in a fresh interpreter (-I: no user site, no PYTHONPATH)."""
    return subprocess.run(
        [sys.executable, "-I", "-c", program],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=10,
        stdin=subprocess.DEVNULL,
    )


def run_all(programs: list[str], cwd: Path) -> list[subprocess.CompletedProcess[str]]:
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda prog: run_python(prog, cwd), programs))


@pytest.fixture(scope="module")
def problems() -> list[dict[str, Any]]:
    assert PROBLEMS_PATH.is_file(), f"missing bundled problem set: {PROBLEMS_PATH}"
    return load_problems()


def test_enough_problems_with_unique_ids(problems: list[dict[str, Any]]) -> None:
    assert len(problems) >= MIN_PROBLEMS
    ids = [p["task_id"] for p in problems]
    assert all(type(i) is int for i in ids)
    assert len(set(ids)) == len(ids)


def test_keys_and_types(problems: list[dict[str, Any]]) -> None:
    for p in problems:
        tid = p.get("task_id")
        assert set(p) == REQUIRED_KEYS, f"task {tid}: keys {sorted(p)}"
        assert isinstance(p["text"], str) and p["text"].startswith("Write a function to "), tid
        assert isinstance(p["code"], str) and p["code"].strip(), tid
        assert "\r" not in p["code"] and "\t" not in p["code"], f"task {tid}: use \\n and spaces"
        assert isinstance(p["test_setup_code"], str), tid
        assert isinstance(p["test_list"], list) and len(p["test_list"]) == 3, tid
        assert isinstance(p["challenge_test_list"], list), tid
        for a in p["test_list"] + p["challenge_test_list"]:
            assert isinstance(a, str) and a.startswith("assert "), f"task {tid}: {a!r}"


def test_function_names_unique_and_defined(problems: list[dict[str, Any]]) -> None:
    names = [entry_name(p) for p in problems]
    assert len(set(names)) == len(names), "two problems test the same function name"
    for p, name in zip(problems, names):
        assert re.search(rf"^def {name}\(", p["code"], re.MULTILINE), f"task {p['task_id']}: no top-level def {name}"
        for a in p["challenge_test_list"]:
            assert CALL_RE.match(a).group(1) == name, f"task {p['task_id']}: {a!r}"  # type: ignore[union-attr]


def test_reference_solutions_pass_in_subprocess(problems: list[dict[str, Any]], tmp_path: Path) -> None:
    programs = [
        build_program(p["code"], p["test_setup_code"], p["test_list"] + p["challenge_test_list"]) for p in problems
    ]
    failures = [
        f"task {p['task_id']}: rc={r.returncode} {r.stderr.strip()[-300:]}"
        for p, r in zip(problems, run_all(programs, tmp_path))
        if r.returncode != 0 or SENTINEL not in r.stdout
    ]
    assert not failures, "\n".join(failures)


def test_wrong_solutions_fail_an_assert(problems: list[dict[str, Any]], tmp_path: Path) -> None:
    programs = [build_program(wrong_code(p), p["test_setup_code"], p["test_list"]) for p in problems]
    failures = [
        f"task {p['task_id']}: a `return None` body was not rejected by an assert (rc={r.returncode})"
        for p, r in zip(problems, run_all(programs, tmp_path))
        if r.returncode == 0 or SENTINEL in r.stdout or "AssertionError" not in r.stderr
    ]
    assert not failures, "\n".join(failures)


def test_loads_with_the_pipeline_mbpp_loader() -> None:
    from common.benchmarks.mbpp import load_mbpp

    df = load_mbpp(PROBLEMS_PATH)
    assert len(df) == len(load_problems())


def test_reference_solutions_pass_in_the_executor(problems: list[dict[str, Any]]) -> None:
    """The same sandbox Phase 1 and the demo use; challenge asserts included."""
    from common.sandbox.executor import Executor, ExecutorConfig

    items = [
        {
            "task_id": p["task_id"],
            "code": p["code"],
            "test_setup_code": p["test_setup_code"],
            "tests": p["test_list"] + p["challenge_test_list"],
        }
        for p in problems
    ]
    with Executor(ExecutorConfig(workers=2)) as ex:
        results = ex.run_many(items, progress=False)
    failures = [f"task {r.task_id}: {r.outcome} {r.detail}" for r in results if not r.passed]
    assert not failures, "\n".join(failures)


def test_wrong_solutions_fail_an_assert_in_the_executor(problems: list[dict[str, Any]]) -> None:
    from common.sandbox.executor import Executor, ExecutorConfig

    items = [
        {"task_id": p["task_id"], "code": wrong_code(p), "test_setup_code": p["test_setup_code"], "tests": p["test_list"]}
        for p in problems
    ]
    with Executor(ExecutorConfig(workers=2)) as ex:
        results = ex.run_many(items, progress=False)
    failures = [f"task {r.task_id}: {r.outcome} {r.detail}" for r in results if r.outcome != "assertion"]
    assert not failures, "\n".join(failures)
