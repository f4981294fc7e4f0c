"""Synthetic Phase 1.0 / 1.2 runs and Phase 3 results written through ``common.datadir.artifacts``, for tests of the readers.

Why through the artifact module: a fixture that writes its own idea of a
table would let a reader pass on a schema no phase writes. Here the tables
get every declared column (the ones a test does not care about filled with
neutral values) and a metadata file with a run record, as the phases write.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from common.config import DEFAULT_MODEL, PipelineConfig
from common.datadir import (
    PHASE1_DATASET,
    PHASE1_METADATA,
    SCHEMA_VERSION,
    TEMPERATURE_METADATA,
    TEMPERATURE_TABLE,
    Artifact,
    DirectionSteeringResult,
    LatentResult,
    Phase2Null,
    Phase3Configuration,
    Phase3Result,
    ProbeSection,
    RunRecord,
    StatisticalSection,
    SteeringSection,
    TopLatent,
    TransferSection,
    metadata_path_of,
    temperature_label,
    timestamp,
)

_TEXT = {"prompt", "generated_text", "extracted_code", "detail", "stop_reason", "outcome"}


def full_table(artifact: Artifact, rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with every column ``artifact`` declares; absent ones get neutral values."""
    table = rows.copy()
    for column in artifact.fields:
        if column in table.columns:
            continue
        if column == "outcome" and "passed" in table.columns:
            table[column] = ["passed" if p else "assertion" for p in table["passed"]]
        elif column in _TEXT:
            table[column] = ""
        else:
            table[column] = 0
    return table[list(artifact.fields)]


def _meta(phase: str, model: str, record: RunRecord, outputs: dict[str, Any]) -> dict[str, Any]:
    return {
        "phase": phase, "config": PipelineConfig(model=model).to_dict(), "inputs": {}, "outputs": outputs,
        "model": model, "run": record.to_dict(),
    }


def write_phase1_run(data: Path, rows: pd.DataFrame, model: str = DEFAULT_MODEL, stamp: str | None = None) -> Path:
    """A Phase 1.0 dataset (``rows`` need task_id and passed) and its metadata; returns the dataset path."""
    stamp = stamp or timestamp()
    path = PHASE1_DATASET.path(data, ts=stamp)
    PHASE1_DATASET.write(full_table(PHASE1_DATASET, rows).sort_values("task_id").reset_index(drop=True), path)
    record = RunRecord(run_id=stamp, settings={"model": model}, slices=[[0, len(rows) - 1]])
    record.add_files(path.parent, [path.name])
    PHASE1_METADATA.write(_meta("1", model, record, {"dataset": str(path)}), metadata_path_of(path))
    return path


def write_temperature_run(data: Path, tables: dict[float, pd.DataFrame], model: str = DEFAULT_MODEL) -> Path:
    """Phase 1.2 tables (each needs task_id, sample_index, passed) and the metadata listing them."""
    folder = data / "phase1_2"
    record = RunRecord(run_id=timestamp(), settings={"model": model, "temperatures": sorted(tables)}, slices=[])
    for temperature, rows in tables.items():
        name = TEMPERATURE_TABLE.pattern.format(temp=temperature_label(temperature))
        TEMPERATURE_TABLE.write(full_table(TEMPERATURE_TABLE, rows.assign(temperature=float(temperature))), folder / name)
        record.add_files(folder, [name])
    TEMPERATURE_METADATA.write(
        _meta("1.2", model, record, {f"T{t:g}": str(folder / n) for t, n in zip(sorted(tables), sorted(record.files))}),
        folder / TEMPERATURE_METADATA.pattern,
    )
    return folder


def validation_ids_in_positions(data: Path, start: int, end: int) -> set[int]:
    """--start/--end count positions among all tasks (sorted by task_id): the validation tasks in that window."""
    split = data / "phase0_1"
    every = sorted(int(t) for n in ("sae", "hyperparams", "validation") for t in pd.read_parquet(split / f"{n}_mbpp.parquet")["task_id"])
    validation = set(pd.read_parquet(split / "validation_mbpp.parquet")["task_id"].astype(int))
    return validation & set(every[start : end + 1])


def phase3_result(stamp: str, *, latents: list[LatentResult] | None = None, probes: ProbeSection | None = None,
                  reviewer: dict[str, Any] | None = None, directions: dict[str, DirectionSteeringResult] | None = None,
                  phase2_top: dict[str, TopLatent | None] | None = None, beats_null: dict[str, bool | None] | None = None,
                  outputs: dict[str, str] | None = None) -> Phase3Result:
    """A Phase 3 result document of the current schema; the parts a test does not give are empty or neutral."""
    configuration = Phase3Configuration(
        model=DEFAULT_MODEL, model_choice="Phase 1.0's model", phase1_model=DEFAULT_MODEL, device="cpu",
        dtype="torch.float32", sae_source={}, sae_ids={}, split_sizes={}, seed=0, bootstrap=0, top_latents_validated=1,
        coefficients=[0.0, 1.0], hook_point="resid_post", hook_names={}, steer_positions="all", n_random_controls=1,
        control_max_separation=0.05, max_new_tokens=8, phase1_max_new_tokens=8, batch_size=1, phase1_batch_size=1,
        prompt_template_version="v", prompt_format="plain", executor={}, git_commit=None, prompting_instruction="",
        self_assessment_prompt=None,
    )
    no_probes = ProbeSection(rules={}, best_layer_rule="", note="not computed", small_note=None, best_layer={},
                             chosen_c={}, probes=[])
    statistical = StatisticalSection(threshold_rule="", baselines={}, temperatures=[], temperature_note=None,
                                     latents=latents or [], probes=probes or no_probes, reviewer_baselines=reviewer or {})
    transfer = TransferSection(benchmark="humaneval", measured=False, note="no run", rule="", dataset=None, model=None,
                               prompt_template_version=None, slice=None, sizes={}, latents=[], probes=[], probe_note=None,
                               steering={"measured": False, "note": "no run"})
    steering = SteeringSection(selection_rule="", opposite_sign_rule="", baseline="", scale_rule="", control_test_rule="",
                               degenerate_rule="", position_policy="all", directions=directions or {}, alpha0_check={},
                               prompting_baseline={}, unsteered_degenerate={})
    return Phase3Result(
        schema_version=SCHEMA_VERSION, phase="3", timestamp=stamp, configuration=configuration, inputs={},
        phase2_null=Phase2Null({"beats_null": beats_null or {}}), phase2_top=phase2_top or {}, statistical=statistical,
        small_split_notes=[], transfer=transfer, steering=steering, outputs=outputs or {},
    )


def direction_steering(target: TopLatent, chosen_alpha: float, validation: dict[str, Any]) -> DirectionSteeringResult:
    """One direction's steering with the given target, alpha and validation numbers; the rest empty."""
    return DirectionSteeringResult(
        target=target, hypothesis="", hook_name="", residual_norm=1.0, scale_layer=None, saved_layer_norm=None,
        scale_rule="", selection_rule="", chosen_alpha=chosen_alpha, grid_hyperparams=[], validation=validation,
        control_test={}, opposite_sign={"grid_hyperparams": []}, diff_means=None, diff_means_note="not run",
        control_selection={"latents": []}, flipped_example_task_ids={},
    )
