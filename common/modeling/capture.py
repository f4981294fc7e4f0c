"""Reading the residual stream at the last prompt token during the prefill pass.

Why forward hooks on the decoder layers (not ``output_hidden_states``):
GemmaScope's residual SAE ``layer_L`` was trained on ``blocks.L.hook_resid_post``,
the OUTPUT of decoder layer L before any final norm (docs/design.md rule 1). In
transformers ``hidden_states[L + 1]`` is that for every layer but the last,
whose entry has the model's final norm applied. A forward hook on layer L reads
its output directly, for every L, with one rule and no off-by-one. (A forward
PRE-hook on layer L would read resid_pre(L) = resid_post(L - 1): wrong SAE.)

Why the prefill only: the last prompt token's vector depends on the prompt
alone; decode steps process one new token each and must be ignored. The
first call of each hooked layer inside the context is the prefill.

Why column -1: batches are LEFT padded, so the last prompt token of every row
sits in the last column of the prefill (``generation.py`` checks the padding
side). Position ids must come from the attention mask, as ``generate`` does,
or padding would shift the rotary positions.
"""

from __future__ import annotations

import logging
from types import TracebackType

import numpy as np
import torch

from common.modeling.hooks import hidden_from_output, model_layers, read_hook, remove_all

logger = logging.getLogger(__name__)

__all__ = ["LastTokenCapture", "hidden_from_output"]


class LastTokenCapture:
    """Context manager recording resid_post(L) at the last column of the first forward pass.

    Usage::

        with LastTokenCapture(model, layers=[0, 5, 25]) as cap:
            model.generate(**batch, ...)
        acts = cap.activations()   # {layer: float32 array (batch, d_model)}

    ``reset()`` arms it again for the next batch, so the hooks can stay
    registered across batches.
    """

    def __init__(self, model: torch.nn.Module, layers: list[int] | None = None) -> None:
        self._model = model
        self.layers: list[int] = model_layers(model, layers)
        self._captured: dict[int, np.ndarray] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _make_hook(self, layer: int):
        def hook(hidden: torch.Tensor) -> None:
            if layer in self._captured:
                return  # a decode step: the prompt's vector was recorded in the prefill
            self._captured[layer] = hidden[:, -1, :].detach().to(torch.float32).cpu().numpy()

        return hook

    def __enter__(self) -> LastTokenCapture:
        self.reset()
        for layer in self.layers:
            self._handles.append(read_hook(self._model, layer, self._make_hook(layer)))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        remove_all(self._handles)

    def reset(self) -> None:
        """Forget what was recorded, so the next forward pass counts as a prefill again."""
        self._captured = {}

    def activations(self) -> dict[int, np.ndarray]:
        """``{layer: float32 array (batch, d_model)}`` for every requested layer; fails if none was recorded."""
        missing = [layer for layer in self.layers if layer not in self._captured]
        if missing:
            raise RuntimeError(f"no forward pass recorded for layers {missing}")
        return {layer: self._captured[layer] for layer in self.layers}
