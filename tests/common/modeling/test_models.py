"""Model loading (hub id or folder, one-line errors) and the TransformerLens view."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest
import torch
import transformers

from common.errors import PipelineError
from common.modeling.models import (
    decoder_layers,
    default_dtype,
    hooked_config_dict,
    load_model_and_tokenizer,
    num_layers,
    resolve_device,
    to_hooked_transformer,
)

CPU = torch.device("cpu")


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_load_local_folder(tiny_model) -> None:
    model, tokenizer = tiny_model
    assert not model.training
    assert model.config._attn_implementation == "eager"
    assert tokenizer.padding_side == "left"
    assert tokenizer.pad_token_id is not None
    assert num_layers(model) == 2 and len(decoder_layers(model)) == 2
    assert next(model.parameters()).dtype == torch.float32


def test_resolve_device_and_dtype() -> None:
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto").type in ("cpu", "cuda")
    assert default_dtype(CPU) == torch.float32
    assert default_dtype(torch.device("cuda")) == torch.bfloat16
    if not torch.cuda.is_available():
        with pytest.raises(PipelineError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(PipelineError) as err:
        load_model_and_tokenizer(str(tmp_path / "nope"), CPU, torch.float32)
    assert "does not exist" in _one_line(err)


def test_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(PipelineError) as err:
        load_model_and_tokenizer(str(tmp_path), CPU, torch.float32)
    assert "config.json" in _one_line(err)


def test_folder_without_tokenizer(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "weights_only"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_model_dir / name, folder / name)
    with pytest.raises(PipelineError) as err:
        load_model_and_tokenizer(str(folder), CPU, torch.float32)
    assert "tokenizer" in _one_line(err)


def test_unreachable_hub_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # an empty cache: nothing to fall back on
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))
    with pytest.raises(PipelineError) as err:
        load_model_and_tokenizer("google/gemma-2-2b", CPU, torch.float32)
    message = _one_line(err)
    assert "google/gemma-2-2b" in message and "cannot reach" in message and "--model" in message


def test_gated_repo_message(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub.errors import GatedRepoError

    def refuse(*_args, **_kwargs):
        url = "https://huggingface.co/google/gemma-2-2b/resolve/main/config.json"
        response = httpx.Response(401, request=httpx.Request("GET", url))
        try:
            raise GatedRepoError("Access to model google/gemma-2-2b is restricted.", response=response)
        except GatedRepoError as exc:  # transformers wraps hub errors in OSError like this
            raise OSError("You are trying to access a gated repo.\nMake sure to have access to it.") from exc

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refuse)
    with pytest.raises(PipelineError) as err:
        load_model_and_tokenizer("google/gemma-2-2b", CPU, torch.float32)
    message = _one_line(err)
    assert "licence" in message and "hf auth login" in message and "HF_TOKEN" in message
    assert "https://huggingface.co/google/gemma-2-2b " in message


def _random_ids(tokenizer, n: int) -> torch.Tensor:
    ids = torch.randint(4, len(tokenizer), (1, n))
    ids[0, 0] = tokenizer.bos_token_id
    return ids


def test_sliding_window_and_softcap_are_exercised(tiny_model, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tiny model's 150-token inputs reach past the 64-token window, and eager attention applies the softcap."""
    model, tokenizer = tiny_model
    ids = _random_ids(tokenizer, 150)
    with torch.no_grad():
        base = model(ids).logits
        monkeypatch.setattr(model.config, "sliding_window", 4096)
        wide = model(ids).logits
        monkeypatch.setattr(model.config, "sliding_window", 64)
        for layer in decoder_layers(model):
            monkeypatch.setattr(layer.self_attn, "attn_logit_softcapping", 0.5)
        capped = model(ids).logits
    assert not torch.allclose(base, wide, atol=1e-4)
    assert not torch.allclose(base, capped, atol=1e-4)


def test_hooked_transformer_matches_hf(tiny_model) -> None:
    """Same logits, and TL blocks.L.hook_resid_post == output of HF decoder layer L, for every L."""
    model, tokenizer = tiny_model
    hooked = to_hooked_transformer(model, tokenizer)
    ids = _random_ids(tokenizer, 100)
    layer_outputs: dict[int, torch.Tensor] = {}
    handles = [
        layer.register_forward_hook(lambda _m, _i, out, L=L: layer_outputs.__setitem__(L, out))
        for L, layer in enumerate(decoder_layers(model))
    ]
    try:
        with torch.no_grad():
            hf_logits = model(ids).logits
            tl_logits, cache = hooked.run_with_cache(ids)
    finally:
        for handle in handles:
            handle.remove()
    torch.testing.assert_close(tl_logits, hf_logits, atol=1e-4, rtol=1e-4)
    assert tokenizer.padding_side == "left"  # the shared tokenizer is left as generation needs it
    for L in range(num_layers(model)):
        hf_out = layer_outputs[L][0] if isinstance(layer_outputs[L], tuple) else layer_outputs[L]
        torch.testing.assert_close(cache[f"blocks.{L}.hook_resid_post"], hf_out, atol=1e-4, rtol=1e-4)


def test_hooked_config_equals_transformer_lens_own_for_gemma_2_2b_shapes() -> None:
    """For the real shapes, our derived config is TransformerLens's own gemma-2-2b config (checked offline)."""
    from transformer_lens.loading_from_pretrained import get_pretrained_model_config

    real = transformers.Gemma2Config(
        vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
        num_attention_heads=8, num_key_value_heads=4, head_dim=256, max_position_embeddings=8192,
        query_pre_attn_scalar=256, sliding_window=4096, final_logit_softcapping=30.0,
        attn_logit_softcapping=50.0, hidden_activation="gelu_pytorch_tanh",
    )
    ours = hooked_config_dict(real)
    official = get_pretrained_model_config("google/gemma-2-2b").to_dict()
    for key, value in ours.items():
        assert official[key] == value, key
