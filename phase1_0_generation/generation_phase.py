"""Phase 1.0: every problem in the slice, solved greedily, executed, labelled, activations saved.

Outputs (docs/design.md section 2):
- ``data/phase1_0/dataset_<ts>.parquet`` (or, for a launcher worker, a shard
  table under ``--shard-dir``), one row per task;
- ``data/phase1_0/activations/{correct,incorrect}/{task_id}_layer_{L}.npz``.

Resume: records are checkpointed under ``data/phase1_0/checkpoints/<run key>/``;
rerunning the same command skips every checkpointed task.

Runs (``common.datadir.artifacts``): each dataset's metadata carries a run record
(settings, slices covered, files). A run on another slice with the same
settings writes a new dataset holding the earlier run's other tasks too; a
run with other settings (another model, layers, ...) first moves the earlier
datasets and the activations they describe to ``archive/<run id>/``, so the
activations of two models never mix.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from common.benchmarks import Benchmark, get_benchmark
from common.config import PipelineConfig
from common.datadir import (
    PHASE1_DATASET,
    PHASE1_METADATA,
    RecordCheckpointer,
    RunClock,
    RunRecord,
    archive,
    build_metadata,
    merge_slices,
    metadata_path_of,
    phase_dir,
    save_task_activations,
    settings_with_prompt_format,
    timestamp,
)
from common.errors import PipelineError
from common.generation_run import (
    LoadedModel,
    benchmark_jobs,
    benchmark_settings,
    load_generation_model,
    merge_rows,
    open_benchmark,
    run_extra,
    settings_difference,
    with_prompt_format,
    with_stop_sequences,
)
from common.modeling.generation import GenerationConfig, GenerationResult, auto_batch_size
from common.modeling.generation_loop import Job, generate_and_execute
from common.sandbox.executor import ExecutionResult, Executor, executor_config_for
from common.tasks import model_slug, run_key, tasks_in_range

logger = logging.getLogger(__name__)

DATASET_COLUMNS = list(PHASE1_DATASET.fields)


def task_universe(cfg: PipelineConfig) -> tuple[list[int], list[int]]:
    """(every task id, the tasks Phase 1.0 runs: all of them) for the launcher's slicing."""
    ids = get_benchmark(cfg.dataset).load_tasks(cfg)[0]["task_id"].astype(int).tolist()
    return ids, ids


def build_jobs(cfg: PipelineConfig, sliced: pd.DataFrame, tokenizer: Any) -> list[Job]:
    """One greedy generation job per task, with the tests its program must pass; its record keeps the complexity."""
    return benchmark_jobs(
        get_benchmark(cfg.dataset), sliced, cfg.prompt_format, tokenizer, key=lambda job: job.key,
        extra=lambda row: {"cyclomatic_complexity": int(row["cyclomatic_complexity"])},
    )


def run_settings(cfg: PipelineConfig) -> dict[str, Any]:
    """What two Phase 1.0 runs must share for their slices to form one dataset."""
    return {
        "model": cfg.model, "layers": cfg.layers, "max_new_tokens": cfg.max_new_tokens, "seed": cfg.seed,
        **benchmark_settings(get_benchmark(cfg.dataset), cfg),
    }


def prepare_outputs(data_dir: str, settings: dict[str, Any]) -> tuple[Path, RunRecord] | None:
    """Before any generation: the newest earlier dataset to merge with, or None after moving others aside.

    The activation folder is shared by every dataset in ``phase1_0/``; a run
    with other settings would overwrite some of its files, so the earlier
    datasets and the activations go, together, to ``archive/<run id>/``.
    """
    folder = phase_dir(data_dir, "1")
    # Exact names only: a labelled copy or any other file dropped here is neither merged nor archived.
    datasets = PHASE1_DATASET.existing(data_dir)
    if not datasets:  # nothing published yet (a first run, or one resuming after a crash)
        return None
    listed = [p for p in datasets if PHASE1_DATASET.listed_by_its_run(p)]
    newest = PHASE1_DATASET.newest(data_dir) if listed else max(datasets)
    record = None
    try:
        meta = PHASE1_METADATA.read_json(metadata_path_of(newest), needed=("run",))
        record = RunRecord.from_dict(meta["run"], metadata_path_of(newest))
        record.settings = settings_with_prompt_format(record.settings, meta)
    except PipelineError as exc:
        logger.warning("phase 1: %s", exc)
    if record is not None and record.settings == settings:
        return newest, record
    reason = (
        f"the earlier run used other {settings_difference(record.settings, settings)}"
        if record is not None else f"{newest.name} has no run record"
    )
    names = [p.name for p in datasets] + [metadata_path_of(p).name for p in datasets] + ["activations"]
    dest = archive(folder, names, record.run_id if record is not None else None)
    logger.warning("phase 1: %s; earlier datasets and activations moved to %s (nothing deleted)", reason, dest)
    return None


def run(cfg: PipelineConfig) -> Path:
    """Run Phase 1.0 on the slice ``cfg.start..cfg.end``; return the table written.

    ``--dataset humaneval`` writes the same files under ``<data dir>/humaneval/``.
    """
    clock = RunClock()
    bench, cfg = open_benchmark(cfg)  # the format checked before an earlier run could be moved aside
    tasks, difficulty_path = bench.load_tasks(cfg)
    ids = tasks["task_id"].astype(int).tolist()
    start, end, chosen = tasks_in_range(ids, ids, cfg.start, cfg.end, bench.label)
    sliced = tasks[tasks["task_id"].isin(chosen)]
    loaded = load_generation_model(cfg)
    batch_size = cfg.batch_size or auto_batch_size(loaded.model, loaded.device)
    if batch_size < 1:
        raise PipelineError("--batch-size must be at least 1")
    gen_cfg = GenerationConfig(max_new_tokens=cfg.max_new_tokens, batch_size=batch_size, temperature=0.0, seed=cfg.seed)
    gen_cfg = with_stop_sequences(gen_cfg, bench, cfg.prompt_format)
    settings = run_settings(cfg)
    # A launcher worker writes only its slice; the launcher merges and publishes.
    earlier = None if cfg.shard_dir else prepare_outputs(cfg.data_dir, settings)
    checkpointer, key = _checkpointer(bench, cfg, loaded, start, end)
    jobs = build_jobs(cfg, sliced, loaded.tokenizer)
    layers = loaded.layers
    logger.info("phase 1: tasks %d..%d (%d), model %s, layers %s, batch %d", start, end, len(jobs), cfg.model, f"{layers[0]}..{layers[-1]}" if layers else "none", batch_size)
    records, sandbox = _generate(cfg, loaded, jobs, gen_cfg, checkpointer)
    dataset = pd.DataFrame(records)[DATASET_COLUMNS].sort_values("task_id").reset_index(drop=True)
    extra = {
        **run_extra(bench, cfg, loaded),
        "source": bench.source(cfg),
        "slice": {"start": start, "end": end, "n_tasks": len(dataset)},
        "capture_site": "blocks.{L}.hook_resid_post (output of decoder layer L, before the final norm), last prompt token",
        "generation": dataclasses.asdict(gen_cfg),
        "executor": sandbox,  # limits, plus whether programs ran without network
        "run_key": key,
        **bench.judge_fields(),
    }
    inputs: dict[str, str | Path] = {
        **({"difficulty": difficulty_path} if difficulty_path else {}),
        **({bench.name: path} if (path := bench.path(cfg)) else {}),
    }
    out_path = publish(cfg, dataset, settings, earlier, (start, end), inputs, clock, extra)
    checkpointer.clear()
    return out_path


def _checkpointer(
    bench: Benchmark, cfg: PipelineConfig, loaded: LoadedModel, start: int, end: int
) -> tuple[RecordCheckpointer, str]:
    """The slice's checkpoint folder and its key: everything that decides the records."""
    key = run_key(with_prompt_format({
        "model": cfg.model, "start": start, "end": end, "layers": loaded.layers, "max_new_tokens": cfg.max_new_tokens,
        "prompt": bench.prompt_version(cfg.prompt_format), "source": bench.source(cfg), "seed": cfg.seed,
    }, cfg.prompt_format))
    checkpointer = RecordCheckpointer(
        phase_dir(cfg.data_dir, "1") / "checkpoints" / f"{model_slug(cfg.model)}_{start}-{end}_{key}",
        cfg.checkpoint_every, cfg.autosave_every, cfg.autosave_keep,
    )
    return checkpointer, key


def _generate(
    cfg: PipelineConfig, loaded: LoadedModel, jobs: list[Job], gen_cfg: GenerationConfig, checkpointer: RecordCheckpointer
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every job generated and judged; each task's activations saved under its label. Returns records and sandbox."""
    activations_dir = phase_dir(cfg.data_dir, "1") / "activations"

    def on_record(job: Job, result: GenerationResult, verdict: ExecutionResult, record: dict[str, Any]) -> None:
        label = "correct" if verdict.passed else "incorrect"
        save_task_activations(activations_dir, job.task_id, result.activations, label)

    with Executor(executor_config_for(cfg)) as executor:
        records = generate_and_execute(
            loaded.model, loaded.tokenizer, jobs, gen_cfg, loaded.layers, executor, checkpointer, on_record, desc="phase 1"
        )
        return records, executor.sandbox_info()


def publish(
    cfg: PipelineConfig,
    dataset: pd.DataFrame,
    settings: dict[str, Any],
    earlier: tuple[Path, RunRecord] | None,
    slice_range: tuple[int, int],
    inputs: dict[str, str | Path],
    clock: RunClock,
    extra: dict[str, Any],
) -> Path:
    """Write ``dataset_<ts>.parquet`` (with ``earlier``'s other tasks merged in) and then its metadata.

    A launcher worker (``cfg.shard_dir``) writes its slice there instead. The
    earlier dataset stays where it is under its own timestamp; tasks in both
    come from this run.
    """
    stamp = timestamp()
    out_dir = Path(cfg.shard_dir) if cfg.shard_dir else phase_dir(cfg.data_dir, "1")
    slices = [list(slice_range)]
    run_id = stamp
    if earlier is not None:
        old_path, old_record = earlier
        dataset = merge_rows(PHASE1_DATASET.read_table(old_path), dataset, ["task_id"])[0]
        slices += old_record.slices
        run_id = old_record.run_id
        inputs = {**inputs, "merged_with": old_path}
        logger.info("phase 1: merged with %s (run %s)", old_path.name, run_id)
    out_path = out_dir / PHASE1_DATASET.pattern.format(ts=stamp)
    PHASE1_DATASET.write(dataset, out_path)
    record = RunRecord(run_id=run_id, settings=settings, slices=merge_slices(slices))
    record.add_files(out_dir, [out_path.name])
    n_pass = int(dataset["passed"].sum())
    meta = build_metadata(
        "1", cfg, clock, inputs=inputs,
        outputs={"dataset": out_path, "activations": phase_dir(cfg.data_dir, "1") / "activations"},
        extra={
            **extra,
            "model": cfg.model,
            "model_preset": cfg.model_preset,  # the --model preset that named it, None for a hub id or folder
            # What Phase 1.2 and Phase 3 rebuild their prompts in (they take no format of their own).
            "prompt_format": cfg.prompt_format,
            "n_tasks": len(dataset),
            "n_correct": n_pass,
            "n_incorrect": len(dataset) - n_pass,
            "pass_rate": n_pass / len(dataset),
            "outcome_counts": dataset["outcome"].value_counts().to_dict(),
            "run": record.to_dict(),
        },
    )
    PHASE1_METADATA.write(meta, metadata_path_of(out_path))
    logger.info("phase 1: %d/%d passed -> %s", n_pass, len(dataset), out_path)
    return out_path
