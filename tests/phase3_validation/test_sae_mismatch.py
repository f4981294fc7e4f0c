"""An SAE that does not fit the model (another width, another hook) stops Phase 3 in one line, before generation.

Phase 3 reads Phase 2's SAEs (or ``--sae-path``): their decoder rows become
the steering vectors. An SAE of another width or trained on another hook
site would steer along a meaningless direction (or crash inside a forward
hook), so the run must stop before any model is loaded or any program is
generated, and write nothing but its log.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import phase3_validation
from common.config import PipelineConfig
from common.errors import PipelineError
from phase3_validation import validation as validation_module
from tests.phase3_validation.builders import (
    latent_item,
    make_sae,
    mbpp_row,
    write_phase2_results,
    write_splits,
    write_synthetic_phase1,
)

D_IN, D_SAE, LAYER = 16, 8, 2


@pytest.fixture
def phase3_data(tmp_path: Path) -> Path:
    """Phase 0.1 splits, a Phase 1.0 dataset with layer-2 activations of width 16, Phase 2 results for it."""
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    hp_ids, val_ids = list(range(100, 108)), list(range(200, 208))
    rows = [mbpp_row(t, f"Write a function number {t}.", [f"assert f() == {t}"]) for t in hp_ids + val_ids]
    passed = {t: bool(i % 2) for i, t in enumerate(hp_ids + val_ids)}
    acts = {t: {LAYER: rng.normal(0, 1, size=D_IN).astype(np.float32)} for t in hp_ids + val_ids}
    write_splits(data, rows, hp_ids, val_ids)
    write_synthetic_phase1(data, rows, passed, acts)
    make_sae(tmp_path / "saes", LAYER, D_IN, D_SAE)
    top = {"correct": [latent_item(1, LAYER, 3, 0.9)], "incorrect": [latent_item(1, LAYER, 5, 0.9)]}
    write_phase2_results(data, tmp_path / "saes", top, D_SAE, [LAYER])
    return data


def _save_sae(folder: Path, d_in: int, hook: str) -> Path:
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig  # imported by the builders module, which skips without it
    from sae_lens.saes.sae import SAEMetadata

    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=D_SAE, metadata=SAEMetadata(hook_name=hook)))
    with torch.no_grad():
        sae.W_dec.normal_(0, 1)
    sae.save_model(folder / f"layer_{LAYER}")
    return folder


@pytest.mark.parametrize("d_in,hook,message", [
    (12, f"blocks.{LAYER}.hook_resid_post", "SAE of blocks.2.hook_resid_post expects vectors of width 12, but the activations have width 16"),
    (D_IN, f"blocks.{LAYER}.hook_resid_pre", "was trained on blocks.2.hook_resid_pre, but layer 2 activations are captured at "
                                              "blocks.2.hook_resid_post"),
])
def test_mismatched_sae_is_one_line_before_generation(phase3_data, tmp_path, monkeypatch, d_in, hook, message):
    def no_model(*_args, **_kwargs):
        raise AssertionError("the model was loaded: the SAE should have been refused before")

    monkeypatch.setattr(validation_module, "load_model_and_tokenizer", no_model)
    cfg = PipelineConfig(data_dir=str(phase3_data), device="cpu", bootstrap=20,
                         sae_path=str(_save_sae(tmp_path / "other_saes", d_in, hook)))
    with pytest.raises(PipelineError) as err:
        phase3_validation.run(cfg)
    assert "\n" not in str(err.value) and message in str(err.value)
    phase3 = phase3_data / "phase3"
    assert not phase3.exists() or not list(phase3.iterdir())  # no results, no checkpoints of steered generation
