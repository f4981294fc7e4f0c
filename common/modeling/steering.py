"""Adding a vector to the residual stream of a transformers model, at TransformerLens's sites.

Why this module: Phase 3 steers the model along an SAE latent's decoder
direction while it *generates* (batched, KV-cached ``model.generate``), which
the TransformerLens view cannot do efficiently. So the intervention is done on
the transformers model, and its meaning is pinned to TransformerLens's stable
hook names (docs/design.md section 9): ``steer(model, L, v, "resid_X")`` adds ``v`` to
exactly the tensor that ``blocks.L.hook_resid_X`` sees (tested against
``HookedTransformer.run_with_hooks``).

Where each site is, for Gemma 2, Gemma 3 and Llama decoder layers, is
``common/modeling/hooks.py``'s business: this module only decides *what* to add and
*when* (the position policy) and installs it with ``hooks.add_hook``.
``resid_post`` is the site GemmaScope ``layer_L`` was trained on (rule 1).

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

import torch

from common.errors import PipelineError
from common.modeling.hooks import HOOK_POINTS, add_hook, check_hook_point, model_layers
from common.modeling.hooks import hook_name as transformer_lens_hook_name
from common.modeling.models import text_sizes

logger = logging.getLogger(__name__)

__all__ = ["HOOK_POINTS", "POSITION_POLICIES", "steer", "transformer_lens_hook_name"]

POSITION_POLICIES: tuple[str, ...] = ("prompt", "all")


class _Adder:
    """Adds the vector to a (batch, seq, d_model) tensor, cast once per dtype/device."""

    def __init__(self, vector: torch.Tensor, positions: str) -> None:
        self.vector = vector.detach()
        self.positions = positions
        self._cast: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}
        self.calls = 0

    def active(self, hidden: torch.Tensor) -> bool:
        return self.positions == "all" or hidden.shape[1] > 1

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """The vector to add to ``hidden`` (cast to its dtype and device), or None when this pass is not steered."""
        if not self.active(hidden):
            return None
        key = (hidden.dtype, hidden.device)
        if key not in self._cast:
            self._cast[key] = self.vector.to(dtype=hidden.dtype, device=hidden.device)
        self.calls += 1
        return self._cast[key]


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
    check_hook_point(hook_point)
    if positions not in POSITION_POLICIES:
        raise PipelineError(f"steering positions must be one of {', '.join(POSITION_POLICIES)}, got {positions!r}")
    model_layers(model, [layer], "steering layer")
    vector = torch.as_tensor(vector)
    d_model = text_sizes(model).d_model
    if vector.ndim != 1 or vector.shape[0] != d_model:
        raise PipelineError(f"steering vector must have shape ({d_model},), got {tuple(vector.shape)}")
    adder = _Adder(vector, positions)
    handle = add_hook(model, layer, adder, hook_point)
    logger.debug("steering %s (positions %s, |v| = %.4g)", transformer_lens_hook_name(layer, hook_point),
                 positions, float(vector.float().norm()))
    try:
        yield adder
    finally:
        handle.remove()
