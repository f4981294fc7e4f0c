"""Helpers the tests share (imported, never through conftest): paths to the repo, the bundled problems, the real MBPP file."""

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_PROBLEMS = REPO_ROOT / "demo" / "problems.jsonl"
REAL_MBPP = REPO_ROOT.parent / "shared" / "data" / "mbpp" / "mbpp.jsonl"

requires_real_mbpp = pytest.mark.skipif(
    not REAL_MBPP.is_file(), reason=f"real MBPP file not present at {REAL_MBPP}"
)
