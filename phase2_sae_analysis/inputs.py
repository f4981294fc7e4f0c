"""Phase 2's inputs: which tasks, their labels, and where their activations are.

Two splits (docs/design.md sections 2 and 4, rule 6):

- ``sae``: the tasks of ``data/phase0_1/sae_mbpp.parquet``, labelled by the
  Phase 1.0 greedy run (``passed``), activations under
  ``data/phase1_0/activations/{correct,incorrect}/``.
- ``validation``: the tasks of ``validation_mbpp.parquet``, labelled by the
  Phase 1.2 temperature samples aggregated per task (pass rate over all
  temperatures and samples; majority label), activations under
  ``data/phase1_2/activations/``.

Why strict: a task silently dropped or a layer silently skipped would shift
labels or change what "every layer" means, so every gap is a one-line error
that names the command to run.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common.config import PipelineConfig, check_option_limits
from common.datadir import (
    PHASE1_DATASET,
    PHASE_COMMANDS,
    SPLIT,
    TEMPERATURE_TABLE,
    TemperatureRun,
    load_layer_matrix,
    load_temperature_run,
    phase_dir,
    read_phase1_metadata,
    require_file,
)
from common.errors import PipelineError

logger = logging.getLogger(__name__)

SPLITS = ("sae", "validation")
MAJORITY_RULE = (
    "a validation task is correct when its pass rate over all Phase 1.2 samples (every temperature, "
    "every sample) is > 0.5; a pass rate of exactly 0.5 counts as incorrect"
)
_ACTIVATION_RE = re.compile(r"^(\d+)_layer_(\d+)\.npz$")


@dataclass
class SplitData:
    """Everything Phase 2 needs to know about the tasks of one split.

    ``labels`` are the activation sub-folders (``correct``/``incorrect``) for
    the sae split, and None for the validation split (one flat folder).
    """

    split: str
    task_ids: list[int]
    correct: np.ndarray
    activation_dir: Path
    labels: list[str | None]
    split_table: Path
    label_tables: list[Path]
    label_info: dict[str, Any]
    phase1_model: str | None
    # Which run labelled the tasks: {"phase", "run_id", "metadata", "tables"}; Phase 3 reads it.
    label_source: dict[str, Any] = field(default_factory=dict)
    available_layers: list[int] = field(default_factory=list)

    @property
    def n_correct(self) -> int:
        return int(self.correct.sum())

    @property
    def n_incorrect(self) -> int:
        return int((~self.correct).sum())

    def layer_matrix(self, layer: int) -> np.ndarray:
        """(n_tasks, d_model) float32 activations of ``layer``, rows in ``task_ids`` order."""
        return load_layer_matrix(self.activation_dir, self.task_ids, layer, self.labels)


def split_task_ids(cfg: PipelineConfig, split: str) -> tuple[list[int], Path]:
    """Task ids of a Phase 0.1 split table, sorted."""
    path = require_file(SPLIT.path(cfg.data_dir, split=split), "0.1")
    ids = sorted(int(t) for t in SPLIT.read_table(path, needed=("task_id",))["task_id"])
    if not ids:
        raise PipelineError(f"{path} holds no tasks")
    return ids, path


def load_sae_split(cfg: PipelineConfig) -> SplitData:
    """Sae-split tasks labelled by the newest (or ``--input``) Phase 1.0 dataset table."""
    task_ids, split_path = split_task_ids(cfg, "sae")
    dataset_path = PHASE1_DATASET.resolve(cfg.input, cfg.data_dir)
    if dataset_path.is_dir():
        raise PipelineError(f"--input {dataset_path} is a folder; for --split sae it must be a Phase 1.0 dataset parquet")
    table = PHASE1_DATASET.read_table(dataset_path, needed=("task_id", "passed"))
    phase1_meta = read_phase1_metadata(dataset_path)
    duplicated = table["task_id"][table["task_id"].duplicated()]
    if len(duplicated):
        raise PipelineError(f"{dataset_path} has {len(duplicated)} duplicated task ids (e.g. {int(duplicated.iloc[0])})")
    passed = dict(zip(table["task_id"].astype(int), table["passed"].astype(bool)))
    missing = [t for t in task_ids if t not in passed]
    if missing:
        raise PipelineError(
            f"{len(missing)} of {len(task_ids)} sae-split tasks are missing from {dataset_path} "
            f"(e.g. task {missing[0]}); run `{PHASE_COMMANDS['1']}` over all tasks first"
        )
    correct = np.array([passed[t] for t in task_ids], dtype=bool)
    return SplitData(
        split="sae",
        task_ids=task_ids,
        correct=correct,
        activation_dir=phase_dir(cfg.data_dir, "1", create=False) / "activations",
        labels=["correct" if c else "incorrect" for c in correct],
        split_table=split_path,
        label_tables=[dataset_path],
        label_info={
            "source_tables": [str(dataset_path)],
            "rule": "label = passed of the Phase 1.0 greedy (temperature 0) solution",
        },
        phase1_model=str(phase1_meta["model"]),
        label_source={
            "phase": "1", "run_id": (phase1_meta.get("run") or {}).get("run_id"),
            "metadata": str(dataset_path.with_name(f"{dataset_path.stem}_metadata.json")), "tables": [str(dataset_path)],
        },
    )


def aggregate_pass_rates(samples: pd.DataFrame) -> pd.DataFrame:
    """Per task: number of samples, passes, pass rate and majority label (see :data:`MAJORITY_RULE`).

    Why strictly above one half: a task the model solves as often as it fails
    is not one it reliably solves; counting it as correct would bias the
    correct class towards coin flips.
    """
    grouped = samples.groupby("task_id")["passed"].agg(n_samples="size", n_passed="sum")
    grouped["n_passed"] = grouped["n_passed"].astype(int)
    grouped["pass_rate"] = grouped["n_passed"] / grouped["n_samples"]
    grouped["correct"] = grouped["pass_rate"] > 0.5
    return grouped.reset_index()


def _temperature_run(cfg: PipelineConfig) -> tuple[TemperatureRun, dict[float, Path]]:
    """The Phase 1.2 run (``--input``: its folder, or one of its tables) and the tables to read.

    Only the tables the run's metadata lists are read, each checked against its
    recorded sha256; a folder holding a table of another run is refused.
    """
    given = Path(cfg.input) if cfg.input else None
    if given is not None and not given.exists():
        raise PipelineError(f"--input {cfg.input} does not exist")
    folder = given.parent if given is not None and given.is_file() else (given or phase_dir(cfg.data_dir, "1.2", create=False))
    run = load_temperature_run(folder)
    if run is None:
        raise PipelineError(
            f"no Phase 1.2 run (temperature_metadata.json) in {folder}; run `{PHASE_COMMANDS['1.2']}` first"
        )
    if given is not None and given.is_file():
        chosen = {t: p for t, p in run.tables.items() if p.name == given.name}
        if not chosen:
            raise PipelineError(f"--input {given} is not one of the tables of run {run.record.run_id} in {run.meta_path}")
        return run, chosen
    return run, run.tables


def load_validation_split(cfg: PipelineConfig) -> SplitData:
    """Validation-split tasks labelled by the majority of their Phase 1.2 samples (one run's tables only)."""
    task_ids, split_path = split_task_ids(cfg, "validation")
    run, tables = _temperature_run(cfg)
    table_paths = [p for _, p in sorted(tables.items())]
    samples = pd.concat(
        [TEMPERATURE_TABLE.read_table(p, needed=("task_id", "passed"))[["task_id", "passed"]] for p in table_paths],
        ignore_index=True,
    )
    samples = samples[samples["task_id"].isin(task_ids)]
    rates = aggregate_pass_rates(samples).set_index("task_id")
    missing = [t for t in task_ids if t not in rates.index]
    if missing:
        raise PipelineError(
            f"{len(missing)} of {len(task_ids)} validation-split tasks have no samples in Phase 1.2 run "
            f"{run.record.run_id} ({run.meta_path}) (e.g. task {missing[0]}); "
            f"run `{PHASE_COMMANDS['1.2']}` over all tasks first"
        )
    rates = rates.loc[task_ids]
    correct = rates["correct"].to_numpy(dtype=bool)
    return SplitData(
        split="validation",
        task_ids=task_ids,
        correct=correct,
        activation_dir=run.folder / "activations",
        labels=[None] * len(task_ids),
        split_table=split_path,
        label_tables=table_paths,
        label_info={
            "source_tables": [str(p) for p in table_paths],
            "rule": MAJORITY_RULE,
            "n_samples_per_task": {
                "min": int(rates["n_samples"].min()), "max": int(rates["n_samples"].max())
            },
            "n_tasks_pass_rate_exactly_half": int((rates["pass_rate"] == 0.5).sum()),
            "mean_pass_rate": float(rates["pass_rate"].mean()),
        },
        phase1_model=run.model,
        label_source={
            "phase": "1.2", "run_id": run.record.run_id, "metadata": str(run.meta_path),
            "tables": [str(p) for p in table_paths],
        },
    )


def load_split(cfg: PipelineConfig) -> SplitData:
    """The tasks, labels and activation layout of ``cfg.split``; both classes must be present."""
    check_option_limits(cfg, "2")  # --split among the splits the config declares
    data = load_sae_split(cfg) if cfg.split == "sae" else load_validation_split(cfg)
    if data.n_correct == 0 or data.n_incorrect == 0:
        missing = "correct" if data.n_correct == 0 else "incorrect"
        raise PipelineError(
            f"the {cfg.split} split has no {missing} tasks ({data.n_correct} correct, {data.n_incorrect} incorrect "
            f"of {len(data.task_ids)}): separation scores need both classes"
        )
    return data


def discover_layers(data: SplitData) -> dict[int, set[int]]:
    """``{layer: tasks of the split that have that layer's file}``, from one listing per folder."""
    present: dict[int, set[int]] = defaultdict(set)
    folders = sorted({label for label in data.labels}, key=str)
    wanted = {(t, label) for t, label in zip(data.task_ids, data.labels)}
    for label in folders:
        folder = data.activation_dir if label is None else data.activation_dir / label
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            match = _ACTIVATION_RE.match(path.name)
            if match and (int(match.group(1)), label) in wanted:
                present[int(match.group(2))].add(int(match.group(1)))
    return present


def resolve_layers(data: SplitData, requested: list[int] | None) -> list[int]:
    """The layers to analyse: present for every task (``--layers`` restricts); a gap is an error.

    Also sets ``data.available_layers`` (layers complete for every task),
    which the FVU check uses for the neighbouring layer.
    """
    present = discover_layers(data)
    producer = PHASE_COMMANDS["1"] if data.split == "sae" else PHASE_COMMANDS["1.2"]
    if not present:
        raise PipelineError(
            f"no activation files for the {data.split} split's tasks in {data.activation_dir}; run `{producer}` first"
        )
    n = len(data.task_ids)
    data.available_layers = sorted(layer for layer, tasks in present.items() if len(tasks) == n)
    layers = sorted(present) if requested is None else sorted(set(requested))
    for layer in layers:
        have = present.get(layer, set())
        if not have:
            raise PipelineError(
                f"no layer {layer} activations for any {data.split}-split task in {data.activation_dir} "
                f"(layers present: {sorted(present)})"
            )
        if len(have) < n:
            lacking = [t for t in data.task_ids if t not in have]
            raise PipelineError(
                f"layer {layer} activations are missing for {len(lacking)} of {n} tasks "
                f"(e.g. task {lacking[0]} in {data.activation_dir}); rerun `{producer}` for them"
                + ("" if requested is not None else " or restrict --layers")
            )
    if not layers:
        raise PipelineError("--layers is empty")
    return layers
