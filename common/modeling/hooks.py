"""The one place that knows where TransformerLens's residual-stream sites are in a transformers model.

Why one module: capture (Phase 1), the general-text pass (Phase 2), steering
(Phase 3) and SAE training all read or write ``blocks.L.hook_resid_X``. Each
used to install its own hooks, name the site its own way and check the layer
range its own way; an off-by-one between the site read and the site an SAE
was trained on is exactly the bug the study must not have (rule 1 in
``common/saes/loading.py``). Here the site is named once (:func:`hook_name`), layers
are checked once (:func:`check_layers`), and hooks are installed once
(:func:`read_hook`, :func:`add_hook`).

Where the sites are, for the decoder layers the presets use (transformers 5.23):

- ``resid_pre(L)``: the input of decoder layer L (a forward pre-hook; the
  hidden states arrive positionally from the model, a keyword is handled too).
- ``resid_post(L)``: the output of decoder layer L, before any final norm
  (a forward hook; a tensor in transformers 5, a tuple in older versions).
- ``resid_mid(L)``: resid_pre + the attention block's contribution, i.e. what
  the MLP half of the layer adds to. Its value is the input of the norm in
  front of the MLP; to *add* to it, add to the last module of the attention
  half (so the MLP reads the steered value, as in TransformerLens):

  ==================  ===============================  =================================
  architecture        read resid_mid (its norm input)  add to resid_mid (output of)
  ==================  ===============================  =================================
  Gemma 2, Gemma 3    ``pre_feedforward_layernorm``    ``post_attention_layernorm``
  Llama (SmolLM2)     ``post_attention_layernorm``     ``self_attn`` (first item)
  ==================  ===============================  =================================

  Gemma's layers norm the attention output (``post_attention_layernorm``) before
  adding it, Llama's do not, so the same attribute name means different things.
  A layer is treated as Gemma-style when it has ``pre_feedforward_layernorm``.

The language model inside a multimodal Gemma 3 (``Gemma3ForConditionalGeneration``)
is reached through ``get_decoder()``, like a text-only model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import torch

from common.errors import PipelineError
from common.modeling.models import decoder_layers

logger = logging.getLogger(__name__)

HOOK_POINTS: tuple[str, ...] = ("resid_pre", "resid_mid", "resid_post")

# callback(resid) for reading; delta(resid-shaped tensor) -> tensor to add, or None to leave it.
ReadFn = Callable[[torch.Tensor], None]
DeltaFn = Callable[[torch.Tensor], "torch.Tensor | None"]


def hook_name(layer: int, hook_point: str = "resid_post") -> str:
    """The TransformerLens name of a residual-stream site, e.g. ``blocks.12.hook_resid_post``."""
    check_hook_point(hook_point)
    return f"blocks.{layer}.hook_{hook_point}"


def check_hook_point(hook_point: str) -> None:
    """Refuse anything but resid_pre, resid_mid and resid_post."""
    if hook_point not in HOOK_POINTS:
        raise PipelineError(f"hook point must be one of {', '.join(HOOK_POINTS)}, got {hook_point!r}")


def check_layers(layers: Iterable[int], n_layers: int, what: str = "layers") -> list[int]:
    """The layers sorted and deduplicated, or one line naming those outside 0..n_layers-1."""
    chosen = sorted(set(int(layer) for layer in layers))
    bad = [layer for layer in chosen if not 0 <= layer < n_layers]
    if bad:
        raise PipelineError(f"{what} {bad} out of range: the model has layers 0..{n_layers - 1}")
    return chosen


def model_layers(model: torch.nn.Module, layers: Iterable[int] | None = None, what: str = "layers") -> list[int]:
    """``layers`` checked against ``model`` (all of them when None)."""
    n = len(decoder_layers(model))
    return list(range(n)) if layers is None else check_layers(layers, n, what)


def hidden_from_output(output: Any) -> torch.Tensor:
    """A module returns a tensor (transformers 5) or a tuple whose first item is the hidden states."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"unexpected module output type {type(output).__name__}")


def _gemma_style(layer_module: torch.nn.Module) -> bool:
    return hasattr(layer_module, "pre_feedforward_layernorm")


def _mid_modules(layer_module: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(module whose input is resid_mid, module whose output is added to make resid_mid)."""
    if _gemma_style(layer_module) and hasattr(layer_module, "post_attention_layernorm"):
        return layer_module.pre_feedforward_layernorm, layer_module.post_attention_layernorm
    if hasattr(layer_module, "post_attention_layernorm") and hasattr(layer_module, "self_attn"):
        return layer_module.post_attention_layernorm, layer_module.self_attn
    raise PipelineError(f"resid_mid is not known for decoder layers of type {type(layer_module).__name__}")


def _layer_module(model: torch.nn.Module, layer: int) -> torch.nn.Module:
    layers = decoder_layers(model)
    check_layers([layer], len(layers), "layer")
    return layers[layer]


def _input_pre_hook(fn: Callable[[torch.Tensor], torch.Tensor | None]):
    """A pre-hook giving ``fn`` the module's hidden-states input; a returned tensor replaces it."""

    def pre_hook(_module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict] | None:
        if args:
            new = fn(args[0])
            return None if new is None else ((new, *args[1:]), kwargs)
        new = fn(kwargs["hidden_states"])
        return None if new is None else (args, {**kwargs, "hidden_states": new})

    return pre_hook


def _output_hook(fn: Callable[[torch.Tensor], torch.Tensor | None]):
    """A forward hook giving ``fn`` the module's hidden-states output; a returned tensor replaces it."""

    def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> Any:
        new = fn(hidden_from_output(output))
        if new is None:
            return None
        if isinstance(output, torch.Tensor):
            return new
        return type(output)((new, *output[1:]))

    return hook


def read_hook(
    model: torch.nn.Module, layer: int, callback: ReadFn, hook_point: str = "resid_post"
) -> torch.utils.hooks.RemovableHandle:
    """Call ``callback(x)`` with the value of ``blocks.{layer}.hook_{hook_point}`` on every forward pass.

    ``x`` is (batch, seq, d_model), exactly what TransformerLens's hook sees;
    the caller removes the returned handle.
    """
    check_hook_point(hook_point)
    module = _layer_module(model, layer)

    def observe(hidden: torch.Tensor) -> None:
        callback(hidden)

    if hook_point == "resid_post":
        return module.register_forward_hook(_output_hook(observe))
    target = module if hook_point == "resid_pre" else _mid_modules(module)[0]
    return target.register_forward_pre_hook(_input_pre_hook(observe), with_kwargs=True)


def add_hook(
    model: torch.nn.Module, layer: int, delta: DeltaFn, hook_point: str = "resid_post"
) -> torch.utils.hooks.RemovableHandle:
    """Add ``delta(t)`` to the residual stream at ``blocks.{layer}.hook_{hook_point}`` on every forward pass.

    ``t`` has the site's shape, dtype and device (for resid_mid it is the
    attention half's output, not resid_mid's value); ``delta`` returns what to
    add (broadcast against ``t``), or None to leave this pass alone. Adding
    to resid_pre changes what attention reads and the residual, adding to
    resid_mid changes what the MLP reads and the residual, as TransformerLens's
    hooks do.
    """
    check_hook_point(hook_point)
    module = _layer_module(model, layer)

    def shift(hidden: torch.Tensor) -> torch.Tensor | None:
        vector = delta(hidden)
        return None if vector is None else hidden + vector

    if hook_point == "resid_pre":
        return module.register_forward_pre_hook(_input_pre_hook(shift), with_kwargs=True)
    target = module if hook_point == "resid_post" else _mid_modules(module)[1]
    return target.register_forward_hook(_output_hook(shift))


def remove_all(handles: list[torch.utils.hooks.RemovableHandle]) -> None:
    """Remove every handle (also after an exception) and empty the list."""
    for handle in handles:
        handle.remove()
    handles.clear()
