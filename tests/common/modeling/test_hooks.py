"""common.modeling.hooks reads and adds at TransformerLens's resid_pre/mid/post on Gemma 2, Gemma 3 and Llama.

Tiny random models of each architecture are built locally (no hub). Each site
is checked against what the decoder layer computes: resid_pre(L) is the
layer's input (``hidden_states[L]``), resid_post(L) its output, and
resid_mid(L) is the value from which the MLP half of the layer produces
resid_post(L) (recomputed here from the layer's own submodules). Steering on
Llama is compared with TransformerLens's ``run_with_hooks`` (TransformerLens's
own Llama weight conversion); Gemma 2's comparison is in test_steering.py.
"""

from __future__ import annotations

import pytest
import torch
import transformers

from common.errors import PipelineError
from common.modeling.hooks import HOOK_POINTS, add_hook, check_layers, hook_name, read_hook
from common.modeling.models import decoder_layers
from common.modeling.steering import steer

_TEXT = dict(
    vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
    num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
)


def _build(kind: str) -> transformers.PreTrainedModel:
    torch.manual_seed(0)
    if kind == "gemma2":
        model = transformers.Gemma2ForCausalLM(
            transformers.Gemma2Config(**_TEXT, sliding_window=8, attn_implementation="eager")
        )
    elif kind == "gemma3":
        model = transformers.Gemma3ForCausalLM(
            transformers.Gemma3TextConfig(**_TEXT, sliding_window=8, attn_implementation="eager")
        )
    elif kind == "gemma3_multimodal":
        cfg = transformers.Gemma3Config(
            text_config=dict(_TEXT, sliding_window=8),
            vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                               image_size=28, patch_size=14),
            mm_tokens_per_image=4, attn_implementation="eager",
        )
        model = transformers.Gemma3ForConditionalGeneration(cfg)
    elif kind == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**_TEXT, attn_implementation="eager"))
    else:
        raise ValueError(kind)
    # Larger weights than the default init, so every site carries a clearly non-trivial signal.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.normal_(0.0, 0.1)
    return model.eval()


ARCHS = ("gemma2", "gemma3", "gemma3_multimodal", "llama")


@pytest.fixture(scope="module", params=ARCHS)
def arch_model(request):
    return request.param, _build(request.param)


def _ids() -> torch.Tensor:
    return torch.randint(1, _TEXT["vocab_size"], (2, 12), generator=torch.Generator().manual_seed(1))


def _read_all(model) -> tuple[dict[tuple[int, str], torch.Tensor], object]:
    seen: dict[tuple[int, str], torch.Tensor] = {}
    handles = []
    for layer in range(len(decoder_layers(model))):
        for point in HOOK_POINTS:
            def keep(x, key=(layer, point)):
                seen[key] = x.detach().clone()
            handles.append(read_hook(model, layer, keep, point))
    try:
        with torch.no_grad():
            out = model(input_ids=_ids(), output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    return seen, out


def _mlp_half(layer_module, mid: torch.Tensor) -> torch.Tensor:
    """What the layer adds to resid_mid to make resid_post, recomputed from its submodules."""
    if hasattr(layer_module, "pre_feedforward_layernorm"):  # Gemma 2 / Gemma 3
        return layer_module.post_feedforward_layernorm(layer_module.mlp(layer_module.pre_feedforward_layernorm(mid)))
    return layer_module.mlp(layer_module.post_attention_layernorm(mid))  # Llama


def test_read_sites_match_the_decoder_layers(arch_model):
    _kind, model = arch_model
    seen, out = _read_all(model)
    layers = decoder_layers(model)
    hidden = out.hidden_states
    n = len(layers)
    for layer in range(n):
        torch.testing.assert_close(seen[(layer, "resid_pre")], hidden[layer])
        if layer < n - 1:
            torch.testing.assert_close(seen[(layer, "resid_post")], hidden[layer + 1])
            torch.testing.assert_close(seen[(layer, "resid_post")], seen[(layer + 1, "resid_pre")])
        with torch.no_grad():
            rebuilt = seen[(layer, "resid_mid")] + _mlp_half(layers[layer], seen[(layer, "resid_mid")])
        torch.testing.assert_close(rebuilt, seen[(layer, "resid_post")], atol=1e-5, rtol=1e-5)
        # resid_mid is neither site around it: the attention half and the MLP half both add something.
        assert (seen[(layer, "resid_mid")] - seen[(layer, "resid_pre")]).abs().max() > 1e-3
        assert (seen[(layer, "resid_post")] - seen[(layer, "resid_mid")]).abs().max() > 1e-3
    # The last entry of hidden_states has the final norm; the hook reads the layer output before it.
    final_norm = model.get_decoder().norm
    with torch.no_grad():
        torch.testing.assert_close(final_norm(seen[(n - 1, "resid_post")]), hidden[-1])


@pytest.mark.parametrize("point", HOOK_POINTS)
def test_add_changes_exactly_the_site_it_names(arch_model, point):
    """Adding v at a site: the site reads its clean value + v, the site before it is untouched."""
    _kind, model = arch_model
    clean, _ = _read_all(model)
    vector = torch.randn(_TEXT["hidden_size"], generator=torch.Generator().manual_seed(2))
    layer = 1
    handle = add_hook(model, layer, lambda t: vector, point)
    try:
        steered, _ = _read_all(model)
    finally:
        handle.remove()
    torch.testing.assert_close(steered[(layer, point)], clean[(layer, point)] + vector, atol=1e-5, rtol=1e-5)
    earlier = {"resid_pre": (layer - 1, "resid_post"), "resid_mid": (layer, "resid_pre"),
               "resid_post": (layer, "resid_mid")}[point]
    assert torch.equal(steered[earlier], clean[earlier])
    after, _ = _read_all(model)
    assert torch.equal(after[(layer, point)], clean[(layer, point)]), "the hook was not removed"


def test_zero_steer_is_bit_identical_on_every_architecture(arch_model):
    _kind, model = arch_model
    ids = _ids()
    with torch.no_grad():
        clean = model(input_ids=ids).logits
        for point in HOOK_POINTS:
            with steer(model, 2, torch.zeros(_TEXT["hidden_size"]), point) as adder:
                assert torch.equal(model(input_ids=ids).logits, clean)
            assert adder.calls == 1


def _llama_hooked(model):
    """TransformerLens's HookedTransformer for the tiny Llama, with TransformerLens's own weight conversion."""
    import warnings

    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights

    c = model.config
    cfg = HookedTransformerConfig(
        d_model=c.hidden_size, d_head=c.head_dim, n_heads=c.num_attention_heads, d_mlp=c.intermediate_size,
        n_layers=c.num_hidden_layers, n_ctx=c.max_position_embeddings, eps=c.rms_norm_eps, d_vocab=c.vocab_size,
        act_fn=c.hidden_act, n_key_value_heads=c.num_key_value_heads, normalization_type="RMS",
        positional_embedding_type="rotary", rotary_adjacent_pairs=False, rotary_dim=c.head_dim,
        rotary_base=c.rope_parameters["rope_theta"], final_rms=True, gated_mlp=True,
        original_architecture="LlamaForCausalLM", device="cpu", dtype=torch.float32, init_weights=False,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        hooked = HookedTransformer(cfg, move_to_device=False)
    hooked.load_and_process_state_dict(
        convert_llama_weights(model, cfg), fold_ln=False, center_writing_weights=False, center_unembed=False,
        fold_value_biases=False, refactor_factored_attn_matrices=False,
    )
    return hooked.eval()


@pytest.mark.parametrize("point", HOOK_POINTS)
def test_llama_steering_matches_transformer_lens(point):
    model = _build("llama")
    hooked = _llama_hooked(model)
    ids = _ids()
    vector = torch.randn(_TEXT["hidden_size"], generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(hooked(ids), model(input_ids=ids).logits, atol=1e-4, rtol=1e-4)
        clean = model(input_ids=ids).logits
        for layer in range(_TEXT["num_hidden_layers"]):
            tl = hooked.run_with_hooks(ids, fwd_hooks=[(hook_name(layer, point), lambda act, hook: act + vector)])
            with steer(model, layer, vector, point, positions="prompt"):
                hf = model(input_ids=ids).logits
            torch.testing.assert_close(hf, tl, atol=1e-4, rtol=1e-4)
            assert (hf - clean).abs().max() > 1e-2


def test_names_and_layer_check():
    assert hook_name(3) == "blocks.3.hook_resid_post"
    assert hook_name(0, "resid_mid") == "blocks.0.hook_resid_mid"
    assert check_layers([2, 0, 2], 3) == [0, 2]
    with pytest.raises(PipelineError, match=r"layers \[3, 7\] out of range: the model has layers 0..2"):
        check_layers([0, 3, 7], 3)
    with pytest.raises(PipelineError, match="hook point must be one of"):
        hook_name(0, "attn_out")
