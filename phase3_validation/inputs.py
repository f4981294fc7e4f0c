"""Phase 3's inputs: Phase 2's chosen latents, the hyperparams and validation tasks, their baseline.

What is read, and from where (docs/design.md sections 2 and 4, rule 6):

- the Phase 2 results JSON (``--input``, else the newest
  ``data/phase2/results_sae_*.json``): the ranked latents of each direction,
  the SAE source, the permutation null, the per-layer score arrays;
- the hyperparams and validation splits (``data/phase0_1/*_mbpp.parquet``):
  the MBPP rows, from which the prompts are rebuilt;
- the Phase 1.0 dataset Phase 2 labelled its tasks with (``label_source`` of
  the results): the greedy baseline programs and labels, which are the
  "before" of every steering comparison and the labels of the statistical
  validation at temperature 0;
- Phase 1.0's activation files, and the Phase 1.2 run (only the tables its
  metadata lists) when present.

Every file is read through ``common.datadir.artifacts``; the models recorded by Phase
1.0, Phase 1.2 and Phase 2 must agree.

Why so strict: a task silently missing from the baseline would turn into a
"correction" or "corruption" that never happened.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common.config import PipelineConfig
from common.datadir import (
    PHASE1_ACTIVATION,
    PHASE1_DATASET,
    PHASE2_RESULTS,
    PHASE2_SCORES,
    PHASE_COMMANDS,
    SPLIT,
    activation_path,
    load_activation,
    load_layer_matrix,
    load_temperature_run,
    newest_phase2_results,
    phase_dir,
    read_phase1_metadata,
    recorded_prompt_format,
    require_file,
)
from common.errors import PipelineError
from common.saes.loading import SAESource
from common.statistics.stats import DIRECTIONS

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class LatentRef:
    """One latent Phase 2 ranked: which direction it prefers, its layer and index, its Phase 2 scores."""

    direction: str
    rank: int
    layer: int
    latent: int
    separation_score: float
    p_family: float | None = None
    f_correct: float | None = None
    f_incorrect: float | None = None

    @property
    def name(self) -> str:
        return f"L{self.layer}/{self.latent}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "direction": self.direction, "rank": self.rank, "layer": self.layer, "latent": self.latent,
            "separation_score": self.separation_score, "p_family": self.p_family,
            "f_correct": self.f_correct, "f_incorrect": self.f_incorrect,
        }


@dataclass
class Phase2Results:
    """What Phase 3 uses from a Phase 2 results file."""

    path: Path
    raw: dict[str, Any]
    sae_source: SAESource
    top: dict[str, list[LatentRef]]
    beats_null: dict[str, bool | None]
    null_info: dict[str, Any]
    scores_dir: Path | None

    def scores(self, layer: int) -> dict[str, np.ndarray]:
        """Phase 2's per-latent score arrays of ``layer`` (``separation_correct``, ``f_correct``, ...)."""
        if self.scores_dir is None:
            raise PipelineError(f"{self.path} names no scores_dir: the control latents cannot be chosen")
        path = self.scores_dir / PHASE2_SCORES.file_name(layer=layer)
        if not path.is_file():
            raise PipelineError(f"Phase 2 score arrays for layer {layer} missing: {path}")
        with np.load(path) as data:
            return {k: np.asarray(data[k]) for k in data.files}


@dataclass
class SplitTasks:
    """One split's tasks (MBPP rows, in task_id order) with their Phase 1.0 baseline."""

    name: str
    table_path: Path
    tasks: pd.DataFrame
    baseline: pd.DataFrame  # Phase 1.0 rows for exactly these tasks, same order
    # The format Phase 1.0 built its prompts in (its metadata): every prompt Phase 3 generates from is built in it.
    prompt_format: str = "plain"
    # Which benchmark's rows ``tasks`` holds: it decides how steering rebuilds each task's prompt and tests.
    benchmark: str = "mbpp"

    @property
    def task_ids(self) -> list[int]:
        return [int(t) for t in self.tasks["task_id"]]

    @property
    def correct(self) -> np.ndarray:
        return self.baseline["passed"].to_numpy(dtype=bool)

    @property
    def label_folders(self) -> list[str]:
        return ["correct" if c else "incorrect" for c in self.correct]

    def __len__(self) -> int:
        return len(self.tasks)


@dataclass
class TemperatureData:
    """Phase 1.2 samples of the validation split, when present (one row per sample)."""

    tables: list[Path] = field(default_factory=list)
    samples: pd.DataFrame | None = None
    activation_dir: Path | None = None
    note: str | None = None

    @property
    def temperatures(self) -> list[float]:
        if self.samples is None:
            return []
        return sorted(float(t) for t in self.samples["temperature"].unique())


@dataclass
class Phase3Inputs:
    results: Phase2Results
    hyperparams: SplitTasks
    validation: SplitTasks
    dataset_path: Path
    phase1_meta: dict[str, Any]
    activation_dir: Path
    temperature: TemperatureData
    # The sae split (Phase 0.1) with its Phase 1.0 labels: what the probe baselines are fitted on; None if absent.
    sae: SplitTasks | None = None
    sae_note: str | None = None

    def saved_layers(self) -> list[int]:
        """Layers Phase 1.0 saved activations for (read from the first hyperparams task's files)."""
        task, label = self.hyperparams.task_ids[0], self.hyperparams.label_folders[0]
        found = PHASE1_ACTIVATION.in_folder(self.activation_dir / label, task_id=task)
        return sorted(int(p.stem.rsplit("_", 1)[1]) for p in found)

    def activations(self, split: SplitTasks, layer: int) -> np.ndarray:
        """(n_tasks, d_model) float32 Phase 1.0 activations of ``layer`` for a split, in task order."""
        return load_layer_matrix(self.activation_dir, split.task_ids, layer, split.label_folders)

    def input_paths(self) -> dict[str, Path]:
        paths = {
            "phase2_results": self.results.path,
            "phase1_dataset": self.dataset_path,
            "hyperparams_split": self.hyperparams.table_path,
            "validation_split": self.validation.table_path,
        }
        if self.results.scores_dir is not None:
            paths["phase2_scores_dir"] = self.results.scores_dir
        for table in self.temperature.tables:
            paths[f"phase1_2_{table.stem}"] = table
        return paths


# --------------------------------------------------------------------------- Phase 2 results


def _resolve_relative(value: str | None, results_path: Path, data_dir: Path) -> Path | None:
    """A path recorded in the results file: as written, else relative to the data dir or the file's folder."""
    if not value:
        return None
    raw = Path(value)
    for candidate in (raw, data_dir / raw, results_path.parent / raw, results_path.parent / raw.name):
        if candidate.exists():
            return candidate
    return raw


def _latent_refs(raw: list[dict[str, Any]], direction: str, path: Path) -> list[LatentRef]:
    refs = []
    for i, item in enumerate(raw):
        try:
            refs.append(LatentRef(
                direction=direction,
                rank=int(item.get("rank", i + 1)),
                layer=int(item["layer"]),
                latent=int(item["latent"]),
                separation_score=float(item.get("separation_score", np.nan)),
                p_family=None if item.get("p_family") is None else float(item["p_family"]),
                f_correct=None if item.get("f_correct") is None else float(item["f_correct"]),
                f_incorrect=None if item.get("f_incorrect") is None else float(item["f_incorrect"]),
            ))
        except (KeyError, TypeError, ValueError) as exc:
            raise PipelineError(f"{path}: top_latents.{direction}[{i}] is malformed ({exc!r})") from exc
    return sorted(refs, key=lambda r: r.rank)


def load_phase2_results(cfg: PipelineConfig) -> Phase2Results:
    """The Phase 2 results file (``--input`` or the newest ``results_sae_*.json``), checked."""
    path = Path(cfg.input) if cfg.input else newest_phase2_results(cfg.data_dir, "sae")
    if cfg.input and not path.exists():
        raise PipelineError(f"--input {cfg.input} does not exist")
    if path.suffix != ".json" or not path.is_file():
        raise PipelineError(f"--input {path} is not a Phase 2 results .json file")
    raw = PHASE2_RESULTS.read_json(path)
    if raw["split"] != "sae":
        raise PipelineError(
            f"{path} ranks latents on the {raw['split']!r} split; Phase 3 validates latents chosen on the "
            "sae split (rule 6): use a results_sae_*.json"
        )
    sae_fields = {k: v for k, v in raw["sae"].items() if k in {"release", "id_template", "width", "local_path"}}
    source = SAESource.from_dict(sae_fields)
    if cfg.sae_path:
        source.local_path = cfg.sae_path
    top = {d: _latent_refs(raw["top_latents"].get(d, []), d, path) for d in DIRECTIONS}
    null = raw["permutation_null"] or {}
    beats = null.get("beats_null") or {}
    data_dir = Path(cfg.data_dir)
    return Phase2Results(
        path=path,
        raw=raw,
        sae_source=source,
        top=top,
        beats_null={d: (None if beats.get(d) is None else bool(beats[d])) for d in DIRECTIONS},
        null_info={k: v for k, v in null.items()
                   if k not in ("null_max", "null_max_correct", "null_max_incorrect", "null_max_family")},
        scores_dir=_resolve_relative(raw["scores_dir"], path, data_dir),
    )


def _phase1_dataset_of(results: Phase2Results, data_dir: Path) -> Path:
    """The Phase 1.0 dataset Phase 2 labelled its tasks with (its ``label_source``); it must still exist."""
    source = results.raw["label_source"] or {}
    tables = source.get("tables") or []
    if source.get("phase") != "1" or len(tables) != 1:
        raise PipelineError(f"{results.path}: label_source names no Phase 1.0 dataset ({source})")
    resolved = _resolve_relative(tables[0], results.path, data_dir)
    if resolved is None or not resolved.is_file():
        raise PipelineError(
            f"{results.path} was computed from {tables[0]}, which no longer exists (moved to an archive/ folder "
            f"by a Phase 1 run with other settings?); rerun `{PHASE_COMMANDS['2']}`"
        )
    return resolved


# --------------------------------------------------------------------------- splits and baseline


def _load_split(data_dir: str, name: str, dataset: pd.DataFrame, dataset_path: Path, prompt_format: str) -> SplitTasks:
    path = require_file(SPLIT.path(data_dir, split=name), "0.1")
    table = SPLIT.read_table(path, needed=("task_id", "text", "test_list", "test_setup_code"))
    if table.empty:
        raise PipelineError(f"the {name} split {path} holds no tasks")
    table = table.sort_values("task_id").reset_index(drop=True)
    indexed = dataset.set_index("task_id")
    missing = [int(t) for t in table["task_id"] if int(t) not in indexed.index]
    if missing:
        raise PipelineError(
            f"{len(missing)} of {len(table)} {name}-split tasks are missing from {dataset_path} "
            f"(e.g. task {missing[0]}); run `{PHASE_COMMANDS['1']}` over all tasks first"
        )
    baseline = indexed.loc[table["task_id"].astype(int)].reset_index()
    return SplitTasks(name=name, table_path=path, tasks=table, baseline=baseline, prompt_format=prompt_format)


def _load_temperatures(data_dir: str, validation: SplitTasks, phase1_model: str, dataset_path: Path) -> TemperatureData:
    """The Phase 1.2 run, when present: only the tables its metadata lists, from the same model as Phase 1."""
    folder = phase_dir(data_dir, "1.2", create=False)
    run = load_temperature_run(folder)
    if run is None:
        note = f"Phase 1.2 outputs absent (no temperature_metadata.json in {folder}): metrics at temperature > 0 skipped; run `{PHASE_COMMANDS['1.2']}` to add them"
        logger.warning(note)
        return TemperatureData(note=note)
    if run.model != phase1_model:
        raise PipelineError(
            f"{run.meta_path}: the Phase 1.2 tables are from model {run.model!r} but the Phase 1.0 dataset "
            f"{dataset_path.name} is from {phase1_model!r}; rerun `{PHASE_COMMANDS['1.2']}` with the same --model"
        )
    if run.prompt_format != validation.prompt_format:
        raise PipelineError(
            f"{run.meta_path}: the Phase 1.2 prompts are in the {run.prompt_format} format but the Phase 1.0 dataset "
            f"{dataset_path.name} used {validation.prompt_format}; rerun `{PHASE_COMMANDS['1.2']}` (it takes Phase 1.0's)"
        )
    tables = [p for _, p in sorted(run.tables.items())]
    samples = run.samples(("task_id", "temperature", "sample_index", "passed"))
    samples = samples[samples["task_id"].isin(validation.task_ids)].reset_index(drop=True)
    if samples.empty:
        note = f"Phase 1.2 tables in {folder} hold no validation-split task: metrics at temperature > 0 skipped"
        logger.warning(note)
        return TemperatureData(tables=tables, note=note)
    samples["task_id"] = samples["task_id"].astype(int)
    samples["passed"] = samples["passed"].astype(bool)
    return TemperatureData(tables=tables, samples=samples, activation_dir=folder / "activations")


def temperature_activations(temps: TemperatureData, task_ids: list[int], layer: int) -> dict[int, np.ndarray]:
    """Phase 1.2's per-task activation of ``layer`` (captured once per task), for ``task_ids``."""
    assert temps.activation_dir is not None
    out = {}
    for task_id in task_ids:
        path = activation_path(temps.activation_dir, task_id, layer)
        if not path.is_file():
            raise PipelineError(
                f"Phase 1.2 activations missing for task {task_id} layer {layer}: {path}; rerun `{PHASE_COMMANDS['1.2']}`"
            )
        out[task_id] = load_activation(path)
    return out


def load_inputs(cfg: PipelineConfig) -> Phase3Inputs:
    """Everything Phase 3 reads, checked for consistency before any GPU time is spent."""
    results = load_phase2_results(cfg)
    data_dir = Path(cfg.data_dir)
    dataset_path = _phase1_dataset_of(results, data_dir)
    dataset = PHASE1_DATASET.read_table(dataset_path, needed=("task_id", "passed", "extracted_code", "generated_text", "prompt"))
    if dataset["task_id"].duplicated().any():
        raise PipelineError(f"{dataset_path} has duplicated task ids")
    dataset = dataset.assign(task_id=dataset["task_id"].astype(int), passed=dataset["passed"].astype(bool))
    phase1_meta = read_phase1_metadata(dataset_path)
    phase1_model = str(phase1_meta["model"])
    if results.raw["phase1_model"] != phase1_model:
        raise PipelineError(
            f"{results.path}: Phase 2 read activations of model {results.raw['phase1_model']!r} but the Phase 1.0 "
            f"dataset {dataset_path.name} is from {phase1_model!r}; rerun `{PHASE_COMMANDS['2']}`"
        )
    # Never cfg.prompt_format: Phase 3 rebuilds exactly the prompts Phase 1.0 used.
    prompt_format = recorded_prompt_format(phase1_meta)
    hyperparams = _load_split(cfg.data_dir, "hyperparams", dataset, dataset_path, prompt_format)
    validation = _load_split(cfg.data_dir, "validation", dataset, dataset_path, prompt_format)
    overlap = set(hyperparams.task_ids) & set(validation.task_ids)
    if overlap:
        raise PipelineError(f"{len(overlap)} task(s) are in both the hyperparams and validation splits (e.g. {min(overlap)})")
    return Phase3Inputs(
        results=results,
        hyperparams=hyperparams,
        validation=validation,
        dataset_path=dataset_path,
        phase1_meta=phase1_meta,
        # The activations beside the dataset: a Phase 1 run with other settings moves both to an archive together.
        activation_dir=dataset_path.parent / "activations",
        temperature=_load_temperatures(cfg.data_dir, validation, phase1_model, dataset_path),
        **_load_sae_split(cfg.data_dir, dataset, dataset_path, hyperparams, validation, prompt_format),
    )


def _load_sae_split(data_dir: str, dataset: pd.DataFrame, dataset_path: Path,
                    hyperparams: SplitTasks, validation: SplitTasks, prompt_format: str) -> dict[str, Any]:
    """The sae split for the probe baselines, or a note saying why there is none (Phase 3 goes on without)."""
    path = SPLIT.path(data_dir, split="sae")
    if not path.is_file():
        note = f"no sae split ({path}): the probe baselines, which are fitted on it, are skipped"
        logger.warning(note)
        return {"sae": None, "sae_note": note}
    sae = _load_split(data_dir, "sae", dataset, dataset_path, prompt_format)
    overlap = set(sae.task_ids) & (set(hyperparams.task_ids) | set(validation.task_ids))
    if overlap:
        raise PipelineError(f"{len(overlap)} task(s) of the sae split are also in hyperparams or validation "
                            f"(e.g. {min(overlap)}): probes fitted on them would be scored on their own tasks")
    return {"sae": sae, "sae_note": None}
