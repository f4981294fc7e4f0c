"""An SAE trained on scaled inputs (Llama Scope's convention) is read with its factor, as SAE Lens does.

The SAE is built by hand so that its reconstruction is exact in the scaled
space: data x_s = c + a1 e1 + a2 e2 (c an offset orthogonal to e1, e2), the
encoder reads the +/- components along e1, e2 after subtracting b_dec = c,
the decoder writes them back and adds c. The raw vectors are x = x_s / f with
f = 0.05, like residual streams whose norm is 20x sqrt(d_in). Read with the
factor folded in (SAE Lens's ``fold_activation_norm_scaling_factor``), FVU is
~0; read without it, the offset is wrong by c (1/f - 1) and FVU is ~16.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("sae_lens")
from sae_lens import SAE, JumpReLUSAE, JumpReLUSAEConfig
from sae_lens.saes.sae import SAEMetadata

from common.errors import PipelineError
from common.saes.loading import NORM_FACTOR_KEY, SAESource, fraction_of_variance_unexplained, load_sae

D_IN, FACTOR = 8, 0.05


def _raw_activations(n: int = 400) -> np.ndarray:
    rng = np.random.default_rng(0)
    scaled = np.zeros((n, D_IN), dtype=np.float32)
    scaled[:, 4] = 3.0  # the offset c, orthogonal to the two data directions
    scaled[:, 0] = rng.normal(0.0, 0.5, n)
    scaled[:, 1] = rng.normal(0.0, 0.5, n)
    return scaled / FACTOR


def _save_scaled_space_sae(folder, factor: float | None) -> None:
    cfg = JumpReLUSAEConfig(
        d_in=D_IN, d_sae=4, dtype="float32", device="cpu", apply_b_dec_to_input=True,
        normalize_activations="expected_average_only_in",
        metadata=SAEMetadata(hook_name="blocks.0.hook_resid_post"),
    )
    sae = JumpReLUSAE(cfg)
    directions = torch.zeros(4, D_IN)
    directions[0, 0], directions[1, 0], directions[2, 1], directions[3, 1] = 1.0, -1.0, 1.0, -1.0
    with torch.no_grad():
        sae.W_enc.copy_(directions.T)
        sae.W_dec.copy_(directions)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
        sae.b_dec[4] = 3.0
        sae.threshold.fill_(1e-4)
    sae.save_model(folder)
    if factor is not None:
        path = folder / "cfg.json"
        cfg_dict = json.loads(path.read_text())
        cfg_dict[NORM_FACTOR_KEY] = factor
        path.write_text(json.dumps(cfg_dict))


def test_fvu_small_with_the_factor_and_large_without(tmp_path):
    _save_scaled_space_sae(tmp_path / "layer_0", FACTOR)
    acts = _raw_activations()
    folded = load_sae(SAESource(local_path=str(tmp_path)), 0)
    assert folded.cfg.normalize_activations == "none"
    fvu_with = fraction_of_variance_unexplained(folded, acts)
    unfolded = SAE.load_from_disk(tmp_path / "layer_0", device="cpu", dtype="float32")  # what SAE Lens does from disk
    fvu_without = fraction_of_variance_unexplained(unfolded, acts)
    assert fvu_with < 1e-3
    assert fvu_without > 5.0


def test_an_sae_that_records_no_factor_is_refused(tmp_path):
    _save_scaled_space_sae(tmp_path / "layer_0", None)
    with pytest.raises(PipelineError, match=f"records no factor.*{NORM_FACTOR_KEY}"):
        load_sae(SAESource(local_path=str(tmp_path)), 0)
