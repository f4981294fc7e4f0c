"""Rule 1: the captured vector for layer L is the output of decoder layer L at the last prompt token."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.errors import PipelineError
from common.modeling.capture import LastTokenCapture
from common.modeling.generation import GenerationConfig, generate_batches
from common.modeling.models import num_layers, to_hooked_transformer
from common.prompts import build_prompt

PROMPTS = [
    build_prompt("Write a function to add two numbers.", ["assert add(1, 2) == 3"] * 3),
    build_prompt(
        "Write a python function to remove first and last occurrence of a given character from the string. " * 4,
        ["assert remove_Occ('hello', 'l') == 'heo'", "assert remove_Occ('abcda', 'a') == 'bcd'"],
    ),
]


def _reference(model, tokenizer, prompt: str, hooked) -> tuple[dict[int, np.ndarray], tuple[torch.Tensor, ...]]:
    """Unpadded single forward pass: resid_post from TransformerLens (independent code), and HF hidden_states."""
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        hidden_states = model(ids, output_hidden_states=True).hidden_states
        _, cache = hooked.run_with_cache(ids)
    resid_post = {
        L: cache[f"blocks.{L}.hook_resid_post"][0, -1].float().numpy() for L in range(num_layers(model))
    }
    return resid_post, tuple(h[0, -1] for h in hidden_states)


def test_captured_vector_is_decoder_layer_output_for_every_layer(tiny_model) -> None:
    model, tokenizer = tiny_model
    hooked = to_hooked_transformer(model, tokenizer)
    n = num_layers(model)
    cfg = GenerationConfig(max_new_tokens=4, batch_size=len(PROMPTS))
    results = {r.index: r for batch in generate_batches(model, tokenizer, PROMPTS, None, cfg) for r in batch}
    for i, prompt in enumerate(PROMPTS):
        resid_post, hidden = _reference(model, tokenizer, prompt, hooked)
        captured = results[i].activations
        assert sorted(captured) == list(range(n))
        for L in range(n):
            assert captured[L].dtype == np.float32 and captured[L].shape == (model.config.hidden_size,)
            np.testing.assert_allclose(captured[L], resid_post[L], atol=1e-4, rtol=1e-4)
            # Not resid_pre: a pre-hook on layer L would pair SAE L with the wrong vector.
            assert not np.allclose(captured[L], hidden[L].numpy(), atol=1e-3)
            if L < n - 1:
                np.testing.assert_allclose(captured[L], hidden[L + 1].numpy(), atol=1e-4, rtol=1e-4)
        # The last hidden_states entry has the final norm applied: it is NOT resid_post of the last layer,
        # so reading hidden_states[L + 1] for every L would have failed the check above.
        assert not np.allclose(hidden[n].numpy(), resid_post[n - 1], atol=1e-3)


def test_capture_ignores_decode_steps(tiny_model) -> None:
    model, tokenizer = tiny_model
    enc = tokenizer(PROMPTS[:1], return_tensors="pt")
    with torch.no_grad(), LastTokenCapture(model) as cap:
        model(**enc)
    single = cap.activations()
    with torch.no_grad(), LastTokenCapture(model) as cap:
        model.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    during_generation = cap.activations()
    for L in single:
        np.testing.assert_allclose(during_generation[L], single[L], atol=1e-5)


def test_capture_reset_and_layer_subset(tiny_model) -> None:
    model, tokenizer = tiny_model
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad(), LastTokenCapture(model, layers=[1]) as cap:
        with pytest.raises(RuntimeError):
            cap.activations()
        model(**enc)
        first = cap.activations()
        cap.reset()
        model(**tokenizer(PROMPTS[:1], return_tensors="pt"))
        second = cap.activations()
    assert list(first) == [1] and first[1].shape == (2, model.config.hidden_size)
    assert second[1].shape == (1, model.config.hidden_size)
    # Hooks are gone after the context: another pass records nothing.
    cap.reset()
    with torch.no_grad():
        model(**enc)
    with pytest.raises(RuntimeError):
        cap.activations()


def test_capture_rejects_layers_out_of_range(tiny_model) -> None:
    model, _ = tiny_model
    with pytest.raises(PipelineError, match="out of range"):
        LastTokenCapture(model, layers=[num_layers(model)])


class _TupleLayer(torch.nn.Module):
    """A decoder layer in the older transformers style: returns (hidden_states, attn_weights)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return x * 2, None


class _TupleModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.model = torch.nn.Module()
        self.model.layers = torch.nn.ModuleList([_TupleLayer(), _TupleLayer()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.model.layers:
            x = layer(x)[0]
        return x


def test_capture_handles_tuple_outputs() -> None:
    model = _TupleModel()
    x = torch.arange(12, dtype=torch.float64).reshape(1, 3, 4)
    with LastTokenCapture(model) as cap:
        model(x)
    acts = cap.activations()
    np.testing.assert_array_equal(acts[0], (x[:, -1] * 2).numpy().astype(np.float32))
    np.testing.assert_array_equal(acts[1], (x[:, -1] * 4).numpy().astype(np.float32))
    assert acts[0].dtype == np.float32
