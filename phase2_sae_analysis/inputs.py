"""Phase 2's inputs: which tasks, their labels, and where their activations are.

Two splits (DESIGN sections 2 and 4, rule 6):

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

from common.activations import load_layer_matrix
from common.config import PipelineConfig
from common.errors import PipelineError
from common.paths import PHASE_COMMANDS, phase_dir, require_file, resolve_input
from common.storage import read_json

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


def _read_table(path: Path, what: str) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises many types for a bad file
        raise PipelineError(f"cannot read {what} {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")


def split_task_ids(cfg: PipelineConfig, split: str) -> tuple[list[int], Path]:
    """Task ids of a Phase 0.1 split table, sorted."""
    path = phase_dir(cfg.data_dir, "0.1", create=False) / f"{split}_mbpp.parquet"
    require_file(path, "0.1")
    table = _read_table(path, f"{split} split")
    if "task_id" not in table.columns:
        raise PipelineError(f"{path} has no task_id column; is it a Phase 0.1 split?")
    ids = sorted(int(t) for t in table["task_id"])
    if not ids:
        raise PipelineError(f"{path} holds no tasks")
    return ids, path


def _model_from_metadata(path: Path) -> str | None:
    if not path.is_file():
        logger.debug("no Phase 1 metadata at %s", path)
        return None
    try:
        model = read_json(path).get("model")
    except (OSError, ValueError) as exc:
        logger.warning("cannot read %s (%s): the model that produced the activations is unknown", path, exc)
        return None
    return str(model) if model else None


def load_sae_split(cfg: PipelineConfig) -> SplitData:
    """Sae-split tasks labelled by the newest (or ``--input``) Phase 1.0 dataset table."""
    task_ids, split_path = split_task_ids(cfg, "sae")
    dataset_path = resolve_input(cfg.input, cfg.data_dir, "1", "dataset_*.parquet")
    if dataset_path.is_dir():
        raise PipelineError(f"--input {dataset_path} is a folder; for --split sae it must be a Phase 1.0 dataset parquet")
    table = _read_table(dataset_path, "Phase 1.0 dataset")
    missing_cols = {"task_id", "passed"} - set(table.columns)
    if missing_cols:
        raise PipelineError(f"{dataset_path} lacks columns {sorted(missing_cols)}; is it a Phase 1.0 dataset?")
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
        phase1_model=_model_from_metadata(dataset_path.with_name(f"{dataset_path.stem}_metadata.json")),
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


def _temperature_tables(cfg: PipelineConfig) -> tuple[list[Path], Path]:
    """The Phase 1.2 tables (``--input`` may be one table or a Phase 1.2 folder) and the folder they are in."""
    if cfg.input:
        given = Path(cfg.input)
        if not given.exists():
            raise PipelineError(f"--input {cfg.input} does not exist")
        if given.is_file():
            return [given], given.parent
        folder = given
    else:
        folder = phase_dir(cfg.data_dir, "1.2", create=False)
    tables = sorted(folder.glob("dataset_temp_*.parquet"))
    if not tables:
        raise PipelineError(
            f"no Phase 1.2 tables (dataset_temp_*.parquet) in {folder}; run `{PHASE_COMMANDS['1.2']}` first"
        )
    return tables, folder


def load_validation_split(cfg: PipelineConfig) -> SplitData:
    """Validation-split tasks labelled by the majority of their Phase 1.2 samples."""
    task_ids, split_path = split_task_ids(cfg, "validation")
    tables, folder = _temperature_tables(cfg)
    frames = []
    for path in tables:
        table = _read_table(path, "Phase 1.2 table")
        missing_cols = {"task_id", "passed"} - set(table.columns)
        if missing_cols:
            raise PipelineError(f"{path} lacks columns {sorted(missing_cols)}; is it a Phase 1.2 table?")
        frames.append(table[["task_id", "passed"]])
    samples = pd.concat(frames, ignore_index=True)
    samples = samples[samples["task_id"].isin(task_ids)]
    rates = aggregate_pass_rates(samples).set_index("task_id")
    missing = [t for t in task_ids if t not in rates.index]
    if missing:
        raise PipelineError(
            f"{len(missing)} of {len(task_ids)} validation-split tasks have no Phase 1.2 samples in {folder} "
            f"(e.g. task {missing[0]}); run `{PHASE_COMMANDS['1.2']}` over all tasks first"
        )
    rates = rates.loc[task_ids]
    correct = rates["correct"].to_numpy(dtype=bool)
    return SplitData(
        split="validation",
        task_ids=task_ids,
        correct=correct,
        activation_dir=phase_dir(cfg.data_dir, "1.2", create=False) / "activations",
        labels=[None] * len(task_ids),
        split_table=split_path,
        label_tables=tables,
        label_info={
            "source_tables": [str(p) for p in tables],
            "rule": MAJORITY_RULE,
            "n_samples_per_task": {
                "min": int(rates["n_samples"].min()), "max": int(rates["n_samples"].max())
            },
            "n_tasks_pass_rate_exactly_half": int((rates["pass_rate"] == 0.5).sum()),
            "mean_pass_rate": float(rates["pass_rate"].mean()),
        },
        phase1_model=_model_from_metadata(folder / "temperature_metadata.json"),
    )


def load_split(cfg: PipelineConfig) -> SplitData:
    """The tasks, labels and activation layout of ``cfg.split``; both classes must be present."""
    if cfg.split not in SPLITS:
        raise PipelineError(f"--split must be one of {', '.join(SPLITS)}, got {cfg.split!r}")
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
