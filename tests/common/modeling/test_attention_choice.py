"""Attention per architecture: sdpa where there is no attention softcap, a softcap kernel for Gemma 2.

Tiny random Llama, Gemma 3 and Gemma 2 folders (sliding window 16, shorter than
the prompts) are loaded through ``load_model_and_tokenizer``; the engine's greedy
tokens and captured vectors must equal those of the same weights run with eager
attention, and transformers' own ``generate`` (its sliding-window cache) too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from common.modeling.generation import GenerationConfig, generate_batches, generate_static_batches
from common.modeling.models import attention_implementation, load_model_and_tokenizer
from tests.common.modeling.test_generation import PROMPTS

_TEXT = dict(
    vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
    num_key_value_heads=2, head_dim=16, max_position_embeddings=1024,
)
EXPECTED = {"llama": "sdpa", "gemma3": "sdpa", "gemma2": "eager"}


def _config(kind: str, tokenizer) -> transformers.PretrainedConfig:
    ids = dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
               bos_token_id=tokenizer.bos_token_id)
    if kind == "llama":
        return transformers.LlamaConfig(**_TEXT, **ids)
    if kind == "gemma3":
        return transformers.Gemma3TextConfig(**_TEXT, **ids, sliding_window=16)
    return transformers.Gemma2Config(**_TEXT, **ids, sliding_window=16)


@pytest.fixture(scope="module", params=sorted(EXPECTED))
def arch_dir(request, tiny_model_dir: Path, tmp_path_factory) -> tuple[str, Path]:
    kind = request.param
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(_config(kind, tokenizer))
    with torch.no_grad():  # larger than the default init: clear top-1 margins, outputs differ between prompts
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.normal_(0.0, 0.1)
    folder = tmp_path_factory.mktemp(f"tiny_{kind}")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return kind, folder


def _eager(folder: Path):
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    return model, tokenizer


def _results(generate, model, tokenizer, batch_size: int):
    cfg = GenerationConfig(max_new_tokens=16, batch_size=batch_size, stop_sequences=())
    results = [r for batch in generate(model, tokenizer, PROMPTS, None, cfg) for r in batch]
    return sorted(results, key=lambda r: r.index)


def test_each_architecture_gets_its_kernel_and_equals_eager(arch_dir) -> None:
    kind, folder = arch_dir
    model, tokenizer = load_model_and_tokenizer(str(folder), torch.device("cpu"), torch.float32)
    assert model.config._attn_implementation == EXPECTED[kind]
    fast = _results(generate_batches, model, tokenizer, batch_size=2)
    eager_model, eager_tokenizer = _eager(folder)
    eager = _results(generate_batches, eager_model, eager_tokenizer, batch_size=2)
    reference = _results(generate_static_batches, eager_model, eager_tokenizer, batch_size=len(PROMPTS))
    assert len({tuple(r.generated_token_ids) for r in fast}) > 1, "outputs should differ between prompts"
    for f, e, ref in zip(fast, eager, reference):
        assert f.generated_token_ids == e.generated_token_ids == ref.generated_token_ids
        for layer, vector in e.activations.items():
            np.testing.assert_allclose(f.activations[layer], vector, atol=1e-4, rtol=1e-4)
            np.testing.assert_allclose(ref.activations[layer], vector, atol=1e-4, rtol=1e-4)


def test_softcap_decides_the_kernel(monkeypatch) -> None:
    """Gemma 2 never gets a kernel that drops its cap: eager, or flash-attention 2 (which applies it) on CUDA in
    half precision when installed; the others get sdpa everywhere."""
    gemma2 = transformers.Gemma2Config(**_TEXT)
    assert gemma2.attn_logit_softcapping == 50.0
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    for available, expected in ((False, "eager"), (True, "flash_attention_2")):
        monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda available=available: available)
        assert attention_implementation(gemma2, cuda, torch.bfloat16) == expected
        assert attention_implementation(gemma2, cuda, torch.float32) == "eager"
        assert attention_implementation(gemma2, cpu, torch.bfloat16) == "eager"
        assert attention_implementation(transformers.LlamaConfig(**_TEXT), cuda, torch.bfloat16) == "sdpa"
        assert attention_implementation(transformers.Gemma3TextConfig(**_TEXT), cpu, torch.float32) == "sdpa"
