"""common.modeling.steering adds to exactly the site TransformerLens calls ``blocks.L.hook_resid_X``."""

from __future__ import annotations

import pytest
import torch

from common.errors import PipelineError
from common.modeling.models import decoder_layers, num_layers, to_hooked_transformer
from common.modeling.steering import HOOK_POINTS, steer, transformer_lens_hook_name


@pytest.fixture(scope="module")
def hooked(tiny_model):
    model, tokenizer = tiny_model
    return to_hooked_transformer(model, tokenizer)


def _ids(tokenizer, n: int = 40) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(4, len(tokenizer), (2, n), generator=generator)
    ids[:, 0] = tokenizer.bos_token_id
    return ids


def _vector(d_model: int, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(d_model, generator=torch.Generator().manual_seed(2)) * scale


@pytest.mark.parametrize("hook_point", HOOK_POINTS)
def test_steer_matches_transformer_lens_run_with_hooks(tiny_model, hooked, hook_point):
    model, tokenizer = tiny_model
    ids = _ids(tokenizer)
    d_model = model.config.hidden_size
    vector = _vector(d_model)
    with torch.no_grad():
        clean = model(ids).logits
        for layer in range(num_layers(model)):
            name = transformer_lens_hook_name(layer, hook_point)
            tl_logits = hooked.run_with_hooks(ids, fwd_hooks=[(name, lambda act, hook: act + vector)])
            with steer(model, layer, vector, hook_point, positions="prompt"):
                hf_logits = model(ids).logits
            torch.testing.assert_close(hf_logits, tl_logits, atol=1e-4, rtol=1e-4)
            assert (hf_logits - clean).abs().max() > 1e-2, f"{name}: the vector changed nothing"


@pytest.mark.parametrize("hook_point", HOOK_POINTS)
def test_zero_vector_is_bit_identical_and_hooks_are_removed(tiny_model, hook_point):
    model, tokenizer = tiny_model
    ids = _ids(tokenizer)
    before = _hook_ids(model)
    with torch.no_grad():
        clean = model(ids).logits
        for positions in ("prompt", "all"):
            with steer(model, 1, torch.zeros(model.config.hidden_size), hook_point, positions) as adder:
                zero = model(ids).logits
            assert adder.calls == 1
            assert torch.equal(zero, clean)
        with pytest.raises(RuntimeError, match="boom"):
            with steer(model, 0, _vector(model.config.hidden_size), hook_point):
                raise RuntimeError("boom")
        assert torch.equal(model(ids).logits, clean)
    # transformers itself may keep output-recording hooks on the layers (output_hidden_states
    # is implemented with hooks since v5): compare with what was there before, not with none.
    assert _hook_ids(model) == before


def _hook_ids(model) -> list[tuple[set, set, set]]:
    return [
        (set(layer._forward_hooks), set(layer._forward_pre_hooks), set(layer.post_attention_layernorm._forward_hooks))
        for layer in decoder_layers(model)
    ]


def test_resid_pre_as_keyword_and_tuple_outputs(tiny_model):
    """The layer input may come as a keyword; an old-style tuple output is steered in its first item."""
    model, _ = tiny_model
    layer = decoder_layers(model)[0]
    hidden = torch.randn(1, 5, model.config.hidden_size)
    vector = _vector(model.config.hidden_size)
    position_embeddings = model.model.rotary_emb(hidden, torch.arange(5)[None])
    with torch.no_grad():
        want = layer(hidden_states=hidden + vector, position_embeddings=position_embeddings)
        existing_pre = set(layer._forward_pre_hooks)
        existing_post = set(layer._forward_hooks)
        with steer(model, 0, vector, "resid_pre"):
            got = layer(hidden_states=hidden, position_embeddings=position_embeddings)
            (hook,) = [h for k, h in layer._forward_pre_hooks.items() if k not in existing_pre]
            args, _ = hook(layer, (hidden,), {})
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(args[0], hidden + vector)
        with steer(model, 0, vector, "resid_post"):
            (hook,) = [h for k, h in layer._forward_hooks.items() if k not in existing_post]
            out = hook(layer, (), (hidden, "extra"))
    assert isinstance(out, tuple) and out[1] == "extra"
    torch.testing.assert_close(out[0], hidden + vector)


def test_position_policy_prompt_skips_decode_steps(tiny_model):
    """"prompt" steers multi-token (prefill) passes only; "all" also every one-token decode step."""
    model, tokenizer = tiny_model
    ids = _ids(tokenizer, 12)[:1]
    vector = _vector(model.config.hidden_size)
    with torch.no_grad():
        clean_full = model(ids).logits
        clean_step = model(ids[:, :1]).logits
        with steer(model, 1, vector, "resid_post", "prompt") as adder:
            assert torch.equal(model(ids[:, :1]).logits, clean_step)
            assert not torch.allclose(model(ids).logits, clean_full)
        assert adder.calls == 1
        with steer(model, 1, vector, "resid_post", "all"):
            assert not torch.allclose(model(ids[:, :1]).logits, clean_step)

        enc = tokenizer(["def add(a, b):"], return_tensors="pt")
        kwargs = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        with steer(model, 1, vector, "resid_post", "prompt") as prompt_only:
            model.generate(**enc, **kwargs)
        with steer(model, 1, vector, "resid_post", "all") as every:
            model.generate(**enc, **kwargs)
    assert prompt_only.calls == 1  # the prefill
    assert every.calls == 6  # the prefill and 5 decode steps


def test_bad_arguments_are_pipeline_errors(tiny_model):
    model, _ = tiny_model
    d = model.config.hidden_size
    with pytest.raises(PipelineError, match="hook point"):
        with steer(model, 0, torch.zeros(d), "resid_late"):
            pass
    with pytest.raises(PipelineError, match="positions"):
        with steer(model, 0, torch.zeros(d), "resid_post", "some"):
            pass
    with pytest.raises(PipelineError, match="out of range"):
        with steer(model, 5, torch.zeros(d)):
            pass
    with pytest.raises(PipelineError, match="shape"):
        with steer(model, 0, torch.zeros(d + 1)):
            pass
