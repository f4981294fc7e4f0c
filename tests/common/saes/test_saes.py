"""Tests for common.saes.loading on small SAE Lens SAEs built here (the hub is never reached).

The fixtures below build JumpReLU SAEs with SAE Lens's own config classes, so
the code under test meets the same objects a GemmaScope download gives.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("sae_lens")
from sae_lens import SAE, JumpReLUSAE, JumpReLUSAEConfig
from sae_lens.saes.sae import SAEMetadata

from common.errors import PipelineError
from common.saes.loading import (
    SAESource,
    check_d_in,
    encode,
    expected_hook_name,
    fraction_of_variance_unexplained,
    load_sae,
)

D_IN, D_SAE = 16, 8

# ---------------------------------------------------------------- fixtures (own module scope)


def make_sae(
    d_in: int = D_IN,
    d_sae: int = D_SAE,
    hook_name: str | None = "blocks.1.hook_resid_post",
    seed: int = 0,
    threshold: float = 0.1,
) -> JumpReLUSAE:
    """A JumpReLU SAE with random weights, as SAE Lens constructs it."""
    torch.manual_seed(seed)
    metadata = SAEMetadata(hook_name=hook_name) if hook_name is not None else SAEMetadata()
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae, metadata=metadata))
    with torch.no_grad():
        sae.W_enc.normal_(0, 1 / np.sqrt(d_in))
        sae.W_dec.normal_(0, 1 / np.sqrt(d_sae))
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
        sae.threshold.fill_(threshold)
    return sae


def make_dictionary_sae(seed: int = 0) -> tuple[JumpReLUSAE, np.ndarray]:
    """An SAE whose decoder rows are orthonormal, plus data it reconstructs exactly.

    Data are sparse non-negative codes (values well above the threshold) times
    the decoder, so encode recovers the codes and FVU is ~0 on this data.
    """
    sae = make_sae(seed=seed)
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(D_IN, D_IN)))
    w_dec = q[:D_SAE].astype(np.float32)  # (d_sae, d_in), orthonormal rows
    with torch.no_grad():
        sae.W_dec.copy_(torch.from_numpy(w_dec))
        sae.W_enc.copy_(torch.from_numpy(w_dec.T.copy()))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
        sae.threshold.fill_(0.1)
    codes = rng.uniform(0.5, 2.0, size=(64, D_SAE)) * (rng.random((64, D_SAE)) < 0.3)
    return sae, (codes @ w_dec).astype(np.float32)


@pytest.fixture
def sae_dir(tmp_path: Path) -> Path:
    """A --sae-path folder with layer_1 (hook blocks.1) and layer_2 (wrongly hooked on blocks.1)."""
    make_sae(hook_name="blocks.1.hook_resid_post").save_model(tmp_path / "layer_1")
    make_sae(hook_name="blocks.1.hook_resid_post", seed=1).save_model(tmp_path / "layer_2")
    make_sae(hook_name="blocks.3.hook_resid_pre", seed=2).save_model(tmp_path / "layer_3")
    make_sae(hook_name=None, seed=3).save_model(tmp_path / "layer_4")
    return tmp_path


# ---------------------------------------------------------------- SAESource


def test_source_ids_and_metadata():
    src = SAESource()
    assert src.sae_id(3) == "layer_3/width_16k/canonical"
    assert src.describe(3) == {
        "source": "sae_lens",
        "release": "gemma-scope-2b-pt-res-canonical",
        "sae_id": "layer_3/width_16k/canonical",
    }
    local = SAESource(local_path="/x/saes")
    assert local.describe(5) == {"source": "local", "path": str(Path("/x/saes/layer_5"))}
    assert SAESource.from_dict(json.loads(json.dumps(local.to_dict()))) == local
    with pytest.raises(PipelineError, match="unknown SAE source keys"):
        SAESource.from_dict({"relase": "x"})


def test_expected_hook_name_is_resid_post():
    assert expected_hook_name(0) == "blocks.0.hook_resid_post"
    assert expected_hook_name(25) == "blocks.25.hook_resid_post"


# ---------------------------------------------------------------- loading


def test_local_round_trip(sae_dir: Path):
    original = make_sae(hook_name="blocks.1.hook_resid_post")
    loaded = load_sae(SAESource(local_path=str(sae_dir)), layer=1)
    assert isinstance(loaded, JumpReLUSAE)
    assert loaded.dtype == torch.float32 and loaded.W_enc.dtype == torch.float32
    assert loaded.cfg.metadata.hook_name == "blocks.1.hook_resid_post"
    for name, tensor in original.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, rtol=0, atol=0)
    x = np.random.default_rng(0).normal(size=(10, D_IN)).astype(np.float32)
    np.testing.assert_array_equal(encode(loaded, x), encode(original, x))


def test_hook_name_mismatch_is_an_error(sae_dir: Path):
    src = SAESource(local_path=str(sae_dir))
    with pytest.raises(PipelineError, match=r"trained on blocks\.1\.hook_resid_post.*blocks\.2\.hook_resid_post"):
        load_sae(src, layer=2)
    with pytest.raises(PipelineError, match=r"trained on blocks\.3\.hook_resid_pre"):
        load_sae(src, layer=3)
    with pytest.raises(PipelineError, match="records no hook name"):
        load_sae(src, layer=4)


def test_missing_layer_folder_is_an_error(sae_dir: Path, tmp_path: Path):
    with pytest.raises(PipelineError, match=r"no SAE for layer 7 .*layer_7"):
        load_sae(SAESource(local_path=str(sae_dir)), layer=7)
    (sae_dir / "layer_1" / "sae_weights.safetensors").unlink()
    with pytest.raises(PipelineError, match=r"layer 1 .*sae_weights\.safetensors"):
        load_sae(SAESource(local_path=str(sae_dir)), layer=1)
    with pytest.raises(PipelineError, match="not a directory"):
        load_sae(SAESource(local_path=str(tmp_path / "nowhere")), layer=1)


def test_corrupt_local_config_is_one_line(sae_dir: Path):
    (sae_dir / "layer_1" / "cfg.json").write_text("{not json")
    with pytest.raises(PipelineError, match="could not load the SAE"):
        load_sae(SAESource(local_path=str(sae_dir)), layer=1)


def test_unknown_release_or_id_is_an_error():
    with pytest.raises(PipelineError, match="unknown SAE release 'no-such-release'"):
        load_sae(SAESource(release="no-such-release"), layer=0)
    with pytest.raises(PipelineError, match="unknown SAE id 'layer_0/width_99k/canonical'"):
        load_sae(SAESource(width="99k"), layer=0)


def test_unreachable_hub_names_the_request_and_the_flag(monkeypatch, tmp_path: Path):
    """Offline mode and an empty cache: the same path as a machine with no network, in milliseconds."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    with pytest.raises(PipelineError) as info:
        load_sae(SAESource(), layer=0)
    message = str(info.value)
    assert "layer_0/width_16k/canonical" in message and "gemma-scope-2b-pt-res-canonical" in message
    assert "--sae-path" in message and "\n" not in message


# ---------------------------------------------------------------- encoding


def test_jumprelu_is_strict_at_the_threshold():
    """Rule 9: a pre-activation exactly at the threshold does not fire."""
    sae = make_sae(d_in=4, d_sae=4)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(4))
        sae.W_dec.copy_(torch.eye(4))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
        sae.threshold.fill_(0.5)
    above = np.nextafter(np.float32(0.5), np.float32(1.0))
    x = np.array([[0.5, above, 0.2, 1.0]], dtype=np.float32)
    acts = encode(sae, x)
    assert acts.dtype == np.float32
    np.testing.assert_array_equal(acts, [[0.0, above, 0.0, 1.0]])
    assert ((acts > 0) == np.array([[False, True, False, True]])).all()


def test_encode_matches_sae_lens_and_batching_is_invisible():
    sae = make_sae()
    x = np.random.default_rng(1).normal(size=(37, D_IN)).astype(np.float64)  # float64 in: cast to float32
    acts = encode(sae, x, batch_size=5)
    assert acts.shape == (37, D_SAE) and acts.dtype == np.float32
    with torch.no_grad():
        direct = sae.encode(torch.from_numpy(x.astype(np.float32))).numpy()
    np.testing.assert_allclose(acts, direct, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(encode(sae, x, batch_size=1000), acts, rtol=1e-6, atol=1e-7)
    assert (acts > 0).any() and (acts == 0).any()


def test_dimension_mismatch_is_an_error():
    sae = make_sae()
    with pytest.raises(PipelineError, match=f"width {D_IN}.*width {D_IN + 1}"):
        encode(sae, np.zeros((3, D_IN + 1), dtype=np.float32))
    with pytest.raises(PipelineError, match="layer 4"):
        check_d_in(sae, 2304, layer=4)
    with pytest.raises(PipelineError, match="shape"):
        encode(sae, np.zeros(D_IN, dtype=np.float32))


def test_non_float32_sae_is_refused():
    sae = make_sae().to(dtype=torch.bfloat16)
    with pytest.raises(PipelineError, match="float32"):
        encode(sae, np.zeros((2, D_IN), dtype=np.float32))


def test_fvu_own_data_vs_random_data():
    sae, own = make_dictionary_sae()
    random = np.random.default_rng(2).normal(size=own.shape).astype(np.float32)
    fvu_own = fraction_of_variance_unexplained(sae, own, batch_size=10)
    fvu_random = fraction_of_variance_unexplained(sae, random, batch_size=10)
    assert fvu_own < 1e-6
    assert fvu_random > 0.5
    # Definition by hand on the random data.
    with torch.no_grad():
        recon = sae.decode(sae.encode(torch.from_numpy(random))).double().numpy()
    x = random.astype(np.float64)
    expected = ((x - recon) ** 2).sum() / ((x - x.mean(axis=0)) ** 2).sum()
    assert fvu_random == pytest.approx(expected, rel=1e-6)


def test_loaded_sae_is_an_sae_lens_sae(sae_dir: Path):
    assert isinstance(load_sae(SAESource(local_path=str(sae_dir)), layer=1), SAE)
