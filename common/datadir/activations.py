"""The activation files of Phases 1.0 and 1.2: one float32 vector per task and layer.

Layout (docs/design.md section 2): ``activations/{correct,incorrect}/{task_id}_layer_{L}.npz``
for Phase 1.0 (the folder is the label), ``activations/{task_id}_layer_{L}.npz``
for Phase 1.2 (samples of one task may differ in label; the prompt, and so the
activation, is the same for all of them). Each file holds ``activation``
(d_model float32) plus the ``layer`` and ``task_id`` it belongs to, so a file
moved by hand still says what it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from common.datadir.artifacts import PHASE1_ACTIVATION
from common.datadir.storage import save_npz
from common.errors import PipelineError

CLASSES = ("correct", "incorrect")


def activation_path(folder: str | Path, task_id: int, layer: int, label: str | None = None) -> Path:
    base = Path(folder) if label is None else Path(folder) / label
    return base / PHASE1_ACTIVATION.file_name(task_id=task_id, layer=layer)


def save_task_activations(
    folder: str | Path, task_id: int, activations: dict[int, np.ndarray], label: str | None = None
) -> None:
    """Write one file per layer; with a label, remove stale files of the other class first."""
    if label is not None:
        if label not in CLASSES:
            raise ValueError(f"label must be one of {CLASSES}")
        other = CLASSES[1 - CLASSES.index(label)]
        for layer in activations:
            activation_path(folder, task_id, layer, other).unlink(missing_ok=True)
    for layer, vector in activations.items():
        save_npz(
            activation_path(folder, task_id, layer, label),
            activation=np.asarray(vector, dtype=np.float32),
            layer=np.int64(layer),
            task_id=np.int64(task_id),
        )


def load_activation(path: Path) -> np.ndarray:
    with np.load(path) as data:
        return data["activation"].astype(np.float32, copy=False)


def load_layer_matrix(
    folder: str | Path, task_ids: list[int], layer: int, labels: Sequence[str | None] | None = None
) -> np.ndarray:
    """Stack the vectors of ``task_ids`` for one layer, in that order (n, d_model) float32.

    A missing file is a PipelineError naming it: a silently skipped task would
    shift every label after it.
    """
    rows = []
    for i, task_id in enumerate(task_ids):
        label = labels[i] if labels is not None else None
        path = activation_path(folder, task_id, layer, label)
        if not path.is_file():
            raise PipelineError(f"activations missing for task {task_id} layer {layer}: {path}")
        rows.append(load_activation(path))
    if not rows:
        raise PipelineError(f"no tasks to load activations for (layer {layer})")
    return np.stack(rows)
