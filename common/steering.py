"""Adding a vector to the residual stream of a transformers Gemma-2 model, at TransformerLens's sites.

Why this module: Phase 3 steers the model along an SAE latent's decoder
direction while it *generates* (batched, KV-cached ``model.generate``), which
the TransformerLens view cannot do efficiently. So the intervention is done on
the transformers model, and its meaning is pinned to TransformerLens's stable
hook names (DESIGN section 9): ``steer(model, L, v, "resid_X")`` adds ``v`` to
exactly the tensor that ``blocks.L.hook_resid_X`` sees (tested against
``HookedTransformer.run_with_hooks``).

Where each site is in ``Gemma2DecoderLayer.forward`` (transformers 5.23)::

    residual = hidden_states                              # resid_pre(L): the layer's input
    h = post_attention_layernorm(self_attn(input_layernorm(hidden_states)))
    hidden_states = residual + h                          # resid_mid(L)
    ... hidden_states = residual + post_feedforward_layernorm(mlp(...))
    return hidden_states                                  # resid_post(L): the layer's output

- ``resid_pre``: a forward pre-hook on decoder layer L (``hidden_states`` comes
  positionally from ``Gemma2Model.forward``, but a keyword is handled too).
  Adding to the input changes both the residual and what attention reads, as
  TransformerLens's ``hook_resid_pre`` does.
- ``resid_mid``: resid_mid = residual + post_attention_layernorm(attn_out), so
  adding ``v`` to the output of ``post_attention_layernorm`` adds exactly ``v``
  to resid_mid (TransformerLens: ``hook_resid_mid(resid_pre + ln1_post(attn_out))``),
  and the MLP then reads the steered value, as in TransformerLens.
- ``resid_post``: a forward hook on decoder layer L (tensor output in
  transformers 5, tuple in older versions), the site GemmaScope ``layer_L``
  was trained on (rule 1).

Position policy: ``"prompt"`` steers only the prefill forward pass (sequence
length > 1: every prompt position, padding included, which attention masks
out anyway); decode steps (one new token each) run unsteered, but they attend
to the steered prompt's cached keys and values. ``"all"`` also steers every
decode step, i.e. every generated token.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch

from common.errors import PipelineError
from common.models import decoder_layers

logger = logging.getLogger(__name__)

HOOK_POINTS: tuple[str, ...] = ("resid_pre", "resid_mid", "resid_post")
POSITION_POLICIES: tuple[str, ...] = ("prompt", "all")


def transformer_lens_hook_name(layer: int, hook_point: str) -> str:
    """The TransformerLens name of the site ``steer`` adds to, for metadata and tests."""
    return f"blocks.{layer}.hook_{hook_point}"


class _Adder:
    """Adds the vector to a (batch, seq, d_model) tensor, cast once per dtype/device."""

    def __init__(self, vector: torch.Tensor, positions: str) -> None:
        self.vector = vector.detach()
        self.positions = positions
        self._cast: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}
        self.calls = 0

    def active(self, hidden: torch.Tensor) -> bool:
        return self.positions == "all" or hidden.shape[1] > 1

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        key = (hidden.dtype, hidden.device)
        if key not in self._cast:
            self._cast[key] = self.vector.to(dtype=hidden.dtype, device=hidden.device)
        self.calls += 1
        return hidden + self._cast[key]


@contextlib.contextmanager
def steer(
    model: torch.nn.Module,
    layer: int,
    vector: torch.Tensor,
    hook_point: str = "resid_post",
    positions: str = "all",
) -> Iterator[_Adder]:
    """Add ``vector`` (d_model,) to the residual stream at ``blocks.{layer}.hook_{hook_point}``.

    Every forward pass inside the ``with`` block is steered (per ``positions``);
    the hooks are removed on exit, also when the block raises. A zero vector
    leaves outputs bit-identical (``x + 0 == x``), which is what Phase 3's
    alpha = 0 check relies on. Yields the adder, whose ``calls`` counts how
    many forward passes were steered.
    """
    if hook_point not in HOOK_POINTS:
        raise PipelineError(f"hook point must be one of {', '.join(HOOK_POINTS)}, got {hook_point!r}")
    if positions not in POSITION_POLICIES:
        raise PipelineError(f"steering positions must be one of {', '.join(POSITION_POLICIES)}, got {positions!r}")
    layers = decoder_layers(model)
    if not 0 <= layer < len(layers):
        raise PipelineError(f"steering layer {layer} out of range: the model has layers 0..{len(layers) - 1}")
    vector = torch.as_tensor(vector)
    d_model = layers[layer].hidden_size if hasattr(layers[layer], "hidden_size") else None
    if vector.ndim != 1 or (d_model is not None and vector.shape[0] != d_model):
        raise PipelineError(f"steering vector must have shape ({d_model},), got {tuple(vector.shape)}")
    adder = _Adder(vector, positions)
    decoder_layer = layers[layer]

    if hook_point == "resid_pre":

        def pre_hook(_module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict] | None:
            if args:
                if not adder.active(args[0]):
                    return None
                return (adder(args[0]), *args[1:]), kwargs
            hidden = kwargs["hidden_states"]
            if not adder.active(hidden):
                return None
            return args, {**kwargs, "hidden_states": adder(hidden)}

        handle = decoder_layer.register_forward_pre_hook(pre_hook, with_kwargs=True)
    else:
        target = decoder_layer.post_attention_layernorm if hook_point == "resid_mid" else decoder_layer

        def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> Any:
            if isinstance(output, torch.Tensor):
                return adder(output) if adder.active(output) else None
            if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
                if not adder.active(output[0]):
                    return None
                return type(output)((adder(output[0]), *output[1:]))
            raise TypeError(f"unexpected output type {type(output).__name__} at {hook_point}")

        handle = target.register_forward_hook(hook)
    logger.debug("steering %s (positions %s, |v| = %.4g)", transformer_lens_hook_name(layer, hook_point),
                 positions, float(vector.float().norm()))
    try:
        yield adder
    finally:
        handle.remove()
