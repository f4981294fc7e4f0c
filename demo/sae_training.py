"""Train one small JumpReLU SAE per layer on the demo model's residual stream, with SAE Lens.

Why: the offline demo must run Phase 2 exactly as the real run does, i.e.
load one SAE Lens folder per layer (``--sae-path``), check its hook name, and
encode the captured vectors. GemmaScope cannot be fetched and would not fit a
tiny model anyway, so the demo trains its own SAEs, with SAE Lens's own
training code, on the site the pipeline captures: ``blocks.{L}.hook_resid_post``
(the OUTPUT of decoder layer L, before the final norm; docs/design.md rule 1).

How: ``common/saes/training.py`` does the work (SAE Lens's ``SAETrainer`` on
activations read through ``common/modeling/hooks.py``, whole texts held out for the
reported FVU and L0, ``save_inference_model`` folders); this module only fixes
the demo's texts and sizes, and runs it with deterministic kernels on a fixed
thread count so that the same seed gives the same SAEs.

Measured on this 2-core machine (test and demo models, ~8,300 training
tokens): with SAE Lens's default "step" L0 loss (DeepMind's JumpReLU) the SAEs
stay dense whatever the coefficient (L0 ~145 of 256 latents, with or without
activation normalisation): the straight-through gradient only reaches the
threshold through pre-activations within one bandwidth of it, and the encoder
simply moves the pre-activations above it. The "tanh" loss (Anthropic's
setup, also in SAE Lens) penalises the activations themselves and gives held-out
FVU ~0.05-0.1 at L0 ~20 with coefficient 0.5 and lr 5e-3. Passing the
straight-through gradient to the encoder (``jumprelu_ste_to_input``) collapsed
every latent. The initial threshold is 0.1 (docs/design.md section 6: 0.01 stays
dense, 0.5 collapses).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
import torch

from common.modeling.hooks import hook_name as _hook_name
from common.prompts import build_prompt
from common.saes.training import REPORT_FILENAME, SAETrainingConfig, collect_resid_post, sae_fvu_and_l0, train_saes
from demo.presets import PresetConfig
from demo.training import completion_text, deterministic_torch

logger = logging.getLogger(__name__)

__all__ = ["REPORT_FILENAME", "DemoSAEConfig", "collect_resid_post", "demo_sae_texts", "hook_name",
           "sae_fvu_and_l0", "train_demo_saes"]

# "demo": about 12 s a layer for d_in 128 on 2 cores (held-out FVU ~0.05, L0 ~20);
# "test": about 4 s a layer for d_in 64 (FVU ~0.1, L0 ~25).
_PRESETS: dict[str, dict[str, Any]] = {
    "demo": dict(training_tokens=500_000),
    "test": dict(training_tokens=300_000),
}


def hook_name(layer: int) -> str:
    """The TransformerLens name of the site captured for ``layer`` (and GemmaScope's ``layer_L``)."""
    return _hook_name(layer, "resid_post")


@dataclass
class DemoSAEConfig(PresetConfig, SAETrainingConfig):
    """How the demo SAEs are trained: the pipeline's SAE training config plus a size and a thread count.

    Why a subclass: the training knobs and their defaults live once, in
    ``common.saes.training.SAETrainingConfig``; the demo only adds its named
    sizes and pins the torch threads (bitwise-repeatable training). Recorded in
    the SAE training report.
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = _PRESETS

    size: str = "demo"
    num_threads: int = 2


def demo_sae_texts(problems: pd.DataFrame) -> list[str]:
    """The texts the demo SAEs are trained on: every problem's prompt followed by its reference solution.

    Why prompts: Phase 2 encodes the last prompt token, so the SAE must know
    prompt-position activations; solutions add code-token contexts.
    """
    return [
        build_prompt(r.text, list(r.test_list)) + completion_text(r.code)
        for r in problems.sort_values("task_id").itertuples(index=False)
    ]


def train_demo_saes(
    model_dir: str | Path,
    texts: list[str],
    layers: list[int],
    out_dir: str | Path,
    cfg: DemoSAEConfig | None = None,
) -> dict[int, Path]:
    """Train and save one SAE per layer as ``out_dir/layer_{L}``; returns {layer: folder}.

    ``out_dir`` is then what ``--sae-path`` takes. ``sae_training_report.json``
    in ``out_dir`` records the config, token counts, times, and the held-out
    FVU and L0 of every layer's SAE.
    """
    from common.modeling.models import load_model_and_tokenizer

    cfg = cfg or DemoSAEConfig()
    if not texts:
        raise ValueError("train_demo_saes needs at least one text")
    if not layers:
        raise ValueError("train_demo_saes needs at least one layer")
    common_names = {f.name for f in fields(SAETrainingConfig)}
    training_cfg = SAETrainingConfig(**{k: v for k, v in cfg.to_dict().items() if k in common_names})
    with deterministic_torch(cfg.num_threads):
        model, tokenizer = load_model_and_tokenizer(str(model_dir), torch.device("cpu"), torch.float32)
        return train_saes(
            model, tokenizer, texts, layers, out_dir, training_cfg, model_name=str(model_dir),
            extra={"model_dir": str(model_dir), "demo_config": cfg.to_dict()},
        )
