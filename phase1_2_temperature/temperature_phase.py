"""Phase 1.2: temperature robustness on the validation split (MBPP) or on every HumanEval task.

For each temperature (default 0.3, 0.6, 0.9, 1.2) every validation task gets
``samples_per_task`` seeded samples, each executed and labelled; one table per
temperature, ``dataset_temp_0_3.parquet`` etc., one row per sample.

Activations at the last prompt token depend on the prompt only, not on
sampling, so they are captured once per task (during the first temperature's
prefill) into ``activations/{task_id}_layer_{L}.npz``, never once per sample.

Runs (``common.datadir.artifacts``): ``temperature_metadata.json`` lists the tables
of the run with their sha256. A rerun on another slice with the same
settings merges into that run's tables; a rerun with other settings first
moves the earlier run, whole, to ``archive/<run id>/``. Nothing is replaced
silently.

``--dataset humaneval`` writes the same files under ``<data dir>/humaneval/phase1_2/``.
HumanEval has no Phase 0.1 splits (all of it is held-out transfer data), so
every task is sampled, in positions 0..163 by task id as in Phase 1.0's
HumanEval run, with the release's own prompt and HumanEval's labelling.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from common.benchmarks import Benchmark, get_benchmark
from common.config import PipelineConfig, check_option_limits
from common.datadir import (
    PHASE1_DATASET,
    SPLIT,
    TEMPERATURE_METADATA,
    TEMPERATURE_TABLE,
    RecordCheckpointer,
    RunClock,
    RunRecord,
    TemperatureRun,
    activation_path,
    archive,
    build_metadata,
    file_sha256,
    load_temperature_run,
    merge_slices,
    phase_dir,
    read_phase1_metadata,
    recorded_prompt_format,
    require_file,
    save_task_activations,
    settings_with_prompt_format,
    temperature_label,
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
from common.seeding import derive_seed
from common.tasks import model_slug, run_key, tasks_in_range

logger = logging.getLogger(__name__)

SAMPLE_COLUMNS = list(TEMPERATURE_TABLE.fields)


def temperature_table_name(temperature: float) -> str:
    """``0.3`` -> ``dataset_temp_0_3.parquet`` (the name the artifact module declares)."""
    return TEMPERATURE_TABLE.pattern.format(temp=temperature_label(temperature))


def load_validation_tasks(cfg: PipelineConfig) -> tuple[pd.DataFrame, Path]:
    path = Path(cfg.input) if cfg.input else SPLIT.path(cfg.data_dir, split="validation")
    require_file(path, "0.1")
    tasks = SPLIT.read_table(path, needed=("task_id", "text", "test_list", "test_setup_code"))
    return tasks.sort_values("task_id").reset_index(drop=True), path


def all_task_ids(split_path: Path) -> list[int]:
    """Every task of the Phase 0.1 run that wrote ``split_path`` (its three splits partition them)."""
    ids: list[int] = []
    for name in ("sae", "hyperparams", "validation"):
        path = split_path.with_name(SPLIT.pattern.format(split=name))
        require_file(path, "0.1")
        ids += [int(t) for t in SPLIT.read_table(path, needed=("task_id",))["task_id"]]
    return sorted(ids)


def every_task(bench: Benchmark, cfg: PipelineConfig) -> pd.DataFrame:
    """Every problem of a benchmark without splits, in task_id order: all of it is held out, so no split is read."""
    if cfg.input:
        raise PipelineError(f"--input names a Phase 0.1 split of MBPP; --dataset {bench.name} samples every {bench.label} task")
    return bench.load_tasks(cfg)[0].sort_values("task_id").reset_index(drop=True)


def select_tasks(cfg: PipelineConfig) -> tuple[pd.DataFrame, Path | None, int, int]:
    """The validation tasks in positions ``--start..--end`` of the whole task list (see common.tasks).

    A benchmark without splits (HumanEval): every task in those positions (no split file, hence None).
    """
    bench = get_benchmark(cfg.dataset)
    if not bench.has_splits:
        problems = every_task(bench, cfg)
        ids = problems["task_id"].astype(int).tolist()
        start, end, chosen = tasks_in_range(ids, ids, cfg.start, cfg.end, bench.label)
        return problems[problems["task_id"].isin(chosen)].reset_index(drop=True), None, start, end
    tasks, path = load_validation_tasks(cfg)
    start, end, chosen = tasks_in_range(
        all_task_ids(path), tasks["task_id"].astype(int).tolist(), cfg.start, cfg.end, "the validation split"
    )
    return tasks[tasks["task_id"].isin(chosen)].reset_index(drop=True), path, start, end


def task_universe(cfg: PipelineConfig) -> tuple[list[int], list[int]]:
    """(every task id, the validation split's) for the launcher's slicing; without splits: every task, twice."""
    bench = get_benchmark(cfg.dataset)
    if not bench.has_splits:
        ids = every_task(bench, cfg)["task_id"].astype(int).tolist()
        return ids, ids
    tasks, path = load_validation_tasks(cfg)
    return all_task_ids(path), tasks["task_id"].astype(int).tolist()


def phase1_prompt_format(cfg: PipelineConfig) -> str:
    """The prompt format of the newest Phase 1.0 run in the data dir; ``--prompt-format`` only when there is none.

    Why Phase 1's: Phase 3 reads these samples and activations with the
    latents, thresholds and probes found on Phase 1.0's; prompts in another
    format would be another distribution. A differing ``--prompt-format`` (or
    a preset's) is overridden, with a warning, rather than obeyed.
    """
    folder = phase_dir(cfg.data_dir, "1", create=False)
    if not any(p for p in folder.glob(PHASE1_DATASET.glob()) if not p.name.endswith("_metadata.json")):
        return cfg.prompt_format
    newest = PHASE1_DATASET.newest(cfg.data_dir)
    found = recorded_prompt_format(read_phase1_metadata(newest))
    if found != cfg.prompt_format:
        logger.warning("phase 1.2: prompt format %s, as Phase 1.0's %s (not %s)", found, newest.name, cfg.prompt_format)
    return found


def run_settings(cfg: PipelineConfig, split_path: Path | None) -> dict[str, Any]:
    """What two Phase 1.2 runs must share for their slices to form one run's tables.

    MBPP's keys are exactly those of runs made before HumanEval existed, so an
    earlier MBPP run still merges: the split's hash names its tasks. A
    benchmark without splits records the benchmark, the source and, for a
    local file, its sha256 in place of the split's hash.
    """
    bench = get_benchmark(cfg.dataset)
    common = {
        "model": cfg.model, "temperatures": [float(t) for t in cfg.temperatures],
        "samples_per_task": cfg.samples_per_task, "seed": cfg.seed, "max_new_tokens": cfg.max_new_tokens,
        "layers": cfg.layers,
    }
    if not bench.has_splits:
        path = bench.path(cfg)
        return {**common, **benchmark_settings(bench, cfg), "source_sha256": file_sha256(Path(path)) if path else None}
    assert split_path is not None
    return {
        **common, "prompt": bench.prompt_version(cfg.prompt_format), "validation_split_sha256": file_sha256(split_path),
        "prompt_format": phase1_prompt_format(cfg),
    }


def prepare_outputs(data_dir: str, settings: dict[str, Any]) -> TemperatureRun | None:
    """Before any generation: the earlier run to merge with, or None after moving an incompatible one aside.

    Why: a rerun on another slice with the same settings adds to the earlier
    run's tables (as the launcher merges its workers' slices); a rerun with
    other settings (model, temperatures, samples, seed, ...) must not replace
    the earlier tables or mix its activations in, so the earlier run's tables,
    metadata and activations move, whole, to ``archive/<its run id>/``.
    """
    folder = phase_dir(data_dir, "1.2")
    try:
        earlier = load_temperature_run(folder)
    except PipelineError as exc:
        reason, stamp = f"the folder could not be read as one run ({exc})", None
        earlier = None
    else:
        if earlier is not None:
            earlier.record.settings = settings_with_prompt_format(earlier.record.settings, earlier.meta)
        if earlier is None or earlier.record.settings == settings:
            return earlier
        diff = settings_difference(earlier.record.settings, settings)
        reason, stamp = f"the earlier run {earlier.record.run_id} used other {diff}", earlier.record.run_id
    names = [p.name for p in folder.glob(TEMPERATURE_TABLE.glob())] + [TEMPERATURE_METADATA.pattern, "activations"]
    dest = archive(folder, names, stamp)
    if dest is not None:
        logger.warning("phase 1.2: %s; its tables, metadata and activations moved to %s (nothing deleted)", reason, dest)
    return None


def build_jobs(cfg: PipelineConfig, sliced: pd.DataFrame, tokenizer: Any, temperature: float) -> list[Job]:
    """One sampling job per task at ``temperature``: the benchmark's prompt and judge, keyed by task and temperature."""
    return benchmark_jobs(
        get_benchmark(cfg.dataset), sliced, cfg.prompt_format, tokenizer, key=lambda job: f"{job.task_id}@T{temperature:g}",
        extra=lambda row: {"temperature": float(temperature)},
    )


def run_inputs(bench: Benchmark, cfg: PipelineConfig, split_path: Path | None) -> dict[str, str | Path]:
    """The inputs the metadata hashes: MBPP's validation split, or the benchmark's file (none for the hub)."""
    if not bench.has_splits:
        path = bench.path(cfg)
        return {bench.name: path} if path else {}
    assert split_path is not None
    return {"validation_split": split_path}


def publish(
    cfg: PipelineConfig,
    new_tables: dict[float, pd.DataFrame],
    settings: dict[str, Any],
    earlier: TemperatureRun | None,
    slice_range: tuple[int, int],
    inputs: dict[str, str | Path],
    clock: RunClock,
    extra: dict[str, Any],
) -> Path:
    """Write the run's tables (merged with ``earlier``'s other tasks) and then its metadata; return the folder.

    Tasks in both are taken from the new tables (a rerun of a slice with the
    same settings). The metadata is written last, listing every table with its
    sha256, so a reader never takes a half-published folder for a run.
    """
    folder = phase_dir(cfg.data_dir, "1.2")
    record = RunRecord(
        run_id=earlier.record.run_id if earlier else timestamp(), settings=settings,
        slices=merge_slices([*(earlier.record.slices if earlier else []), list(slice_range)]),
    )
    summary: dict[str, Any] = {}
    replaced = 0
    for temperature, table in sorted(new_tables.items()):
        if earlier is not None:
            table, n_replaced = merge_rows(TEMPERATURE_TABLE.read_table(earlier.tables[temperature]), table, ["task_id", "sample_index"])
            replaced = max(replaced, n_replaced)
        table = table.sort_values(["task_id", "sample_index"]).reset_index(drop=True)
        name = temperature_table_name(temperature)
        TEMPERATURE_TABLE.write(table, folder / name)
        record.add_files(folder, [name])
        summary[f"{temperature:g}"] = {
            "n_samples": len(table), "n_tasks": int(table["task_id"].nunique()),
            "pass_rate": float(table["passed"].mean()), **extra.get("per_temperature", {}).get(f"{temperature:g}", {}),
        }
    if earlier is not None:
        logger.info("phase 1.2: merged with run %s (slices %s); %d task(s) rerun and replaced",
                    record.run_id, record.slices, replaced)
    meta = build_metadata(
        "1.2", cfg, clock, inputs=inputs,
        outputs={**{f"T{t:g}": folder / temperature_table_name(t) for t in new_tables}, "activations": folder / "activations"},
        extra={**{k: v for k, v in extra.items() if k != "per_temperature"}, "model": cfg.model,
               "model_preset": cfg.model_preset, "prompt_format": settings["prompt_format"],
               "temperatures": summary, "run": record.to_dict(), "tasks_rerun_and_replaced": replaced},
    )
    TEMPERATURE_METADATA.write(meta, folder / TEMPERATURE_METADATA.pattern)
    return folder


def _check_temperatures(cfg: PipelineConfig) -> None:
    """The grid is not empty and has no repeats (each temperature's bound, above 0, is the option's own)."""
    if not cfg.temperatures:
        raise PipelineError("--temperatures is empty")
    if len(set(cfg.temperatures)) != len(cfg.temperatures):
        raise PipelineError(f"--temperatures has duplicates: {cfg.temperatures}")


@dataclass
class SamplingRun:
    """What every temperature of one Phase 1.2 run shares: the benchmark, tasks, model, batch and its checkpoints."""

    bench: Benchmark
    cfg: PipelineConfig
    sliced: pd.DataFrame
    split_path: Path | None
    start: int
    end: int
    loaded: LoadedModel
    batch_size: int
    settings: dict[str, Any]
    checkpointers: list[RecordCheckpointer] = field(default_factory=list)

    @property
    def activations_dir(self) -> Path:
        return phase_dir(self.cfg.data_dir, "1.2") / "activations"


def run(cfg: PipelineConfig) -> Path:
    """Run Phase 1.2 on the validation tasks in positions ``cfg.start..cfg.end``; return the output folder.

    ``--dataset humaneval``: every HumanEval task in those positions, written under ``<data dir>/humaneval/``.
    """
    clock = RunClock()
    _check_temperatures(cfg)
    bench, cfg = open_benchmark(cfg)  # the format checked before anything is read, loaded or moved aside
    # Every option's declared limits: temperatures above 0, --dataset a benchmark, --samples-per-task at least 1, ...
    check_option_limits(cfg, "1.2")
    sliced, split_path, start, end = select_tasks(cfg)
    # HumanEval's too: its Phase 1.0 run (under <data dir>/humaneval/) chose completion or instruction format.
    cfg = dataclasses.replace(cfg, prompt_format=phase1_prompt_format(cfg))
    settings = run_settings(cfg, split_path)
    loaded = load_generation_model(cfg)
    batch_size = cfg.batch_size or auto_batch_size(loaded.model, loaded.device)
    batch_size = max(batch_size, cfg.samples_per_task)  # one prompt's samples always share a batch
    sampling = SamplingRun(bench, cfg, sliced, split_path, start, end, loaded, batch_size, settings)
    # A launcher worker writes only its slice (the launcher merges and publishes); a run of its own
    # first decides, before anything is generated, whether it adds to the earlier run or sets it aside.
    earlier = None if cfg.shard_dir else prepare_outputs(cfg.data_dir, settings)
    tables, per_temperature, sandbox = _sample_every_temperature(sampling)
    extra = _run_extra(sampling, per_temperature, sandbox)
    if cfg.shard_dir:
        folder = Path(cfg.shard_dir)
        for temperature, table in tables.items():
            TEMPERATURE_TABLE.write(table, folder / temperature_table_name(temperature))
    else:
        folder = publish(cfg, tables, settings, earlier, (start, end), run_inputs(bench, cfg, split_path), clock, extra)
    # Checkpoints go only once every table they hold is written: a crash at the last temperature
    # resumes all of them rather than redoing the finished ones.
    for checkpointer in sampling.checkpointers:
        checkpointer.clear()
    logger.info("phase 1.2 done -> %s", folder)
    return folder


def _run_extra(sampling: SamplingRun, per_temperature: dict[str, Any], sandbox: dict[str, Any]) -> dict[str, Any]:
    """The run's metadata beyond the tables: device, slice, sampling, activations policy, source, sandbox."""
    bench, settings = sampling.bench, sampling.settings
    return {
        **run_extra(bench, sampling.cfg, sampling.loaded),
        "slice": {"start": sampling.start, "end": sampling.end, "n_tasks": len(sampling.sliced),
                  "positions": "among all tasks sorted by task_id; the validation tasks inside run" if bench.has_splits
                  else f"among all {bench.label} tasks sorted by task_id; every one inside runs"},
        "samples_per_task": sampling.cfg.samples_per_task,
        "per_temperature": per_temperature,
        "activations_policy": "captured once per task at the last prompt token (they depend on the prompt only), not once per sample",
        **({} if bench.has_splits else {"source": settings["source"], "source_sha256": settings["source_sha256"]}),
        "executor": sandbox,  # limits, plus whether programs ran without network
    }


def _sample_every_temperature(
    sampling: SamplingRun,
) -> tuple[dict[float, pd.DataFrame], dict[str, Any], dict[str, Any]]:
    """Every temperature's samples, generated and judged: (table per temperature, its seed and settings, sandbox)."""
    tables: dict[float, pd.DataFrame] = {}
    per_temperature: dict[str, Any] = {}
    activations_dir = sampling.activations_dir

    def on_record(job: Job, result: GenerationResult, verdict: ExecutionResult, record: dict[str, Any]) -> None:
        if result.activations and result.sample_index == 0:
            save_task_activations(activations_dir, job.task_id, result.activations)

    with Executor(executor_config_for(sampling.cfg)) as executor:
        for t_index, temperature in enumerate(sampling.cfg.temperatures):
            gen_cfg = _generation_config(sampling, t_index, temperature)
            records = generate_and_execute(
                sampling.loaded.model, sampling.loaded.tokenizer,
                build_jobs(sampling.cfg, sampling.sliced, sampling.loaded.tokenizer, temperature),
                gen_cfg, sampling.loaded.layers if _needs_capture(sampling, t_index) else [], executor,
                _checkpointer(sampling, temperature), on_record, desc=f"phase 1.2 T={temperature:g}",
            )
            table = pd.DataFrame(records)[SAMPLE_COLUMNS].sort_values(["task_id", "sample_index"]).reset_index(drop=True)
            tables[float(temperature)] = table
            per_temperature[f"{temperature:g}"] = {"seed": gen_cfg.seed, "generation": dataclasses.asdict(gen_cfg)}
            logger.info("phase 1.2: T=%g pass rate %.3f over %d samples", temperature, table["passed"].mean(), len(table))
        return tables, per_temperature, executor.sandbox_info()


def _needs_capture(sampling: SamplingRun, t_index: int) -> bool:
    """Activations once per task: captured in the first temperature's prefill only,
    unless a task's files are missing (e.g. the first temperature ran in another slice)."""
    layers = sampling.loaded.layers
    if not layers:
        return False
    return t_index == 0 or any(
        not activation_path(sampling.activations_dir, int(tid), layers[-1]).is_file() for tid in sampling.sliced["task_id"]
    )


def _generation_config(sampling: SamplingRun, t_index: int, temperature: float) -> GenerationConfig:
    """The sampling settings of one temperature: its own seed, the benchmark's stop sequences."""
    cfg = sampling.cfg
    gen_cfg = GenerationConfig(
        max_new_tokens=cfg.max_new_tokens, batch_size=sampling.batch_size, temperature=temperature,
        seed=derive_seed(cfg.seed, t_index), samples_per_prompt=cfg.samples_per_task,
    )
    return with_stop_sequences(gen_cfg, sampling.bench, cfg.prompt_format)


def _checkpointer(sampling: SamplingRun, temperature: float) -> RecordCheckpointer:
    """One temperature's checkpoint folder, keyed by everything that decides its samples."""
    cfg, bench = sampling.cfg, sampling.bench
    identity = {
        "model": cfg.model, "start": sampling.start, "end": sampling.end, "temperature": temperature,
        "samples": cfg.samples_per_task, "max_new_tokens": cfg.max_new_tokens,
        "prompt": bench.prompt_version(cfg.prompt_format), "seed": cfg.seed,
        "split": str(sampling.split_path) if sampling.split_path else sampling.settings["source"],
        "batch_size": sampling.batch_size,
    }
    if not bench.has_splits:  # only then: the split file names MBPP's tasks, and its runs keep their earlier keys
        identity["dataset"] = bench.name
    key = run_key(with_prompt_format(identity, cfg.prompt_format))
    checkpointer = RecordCheckpointer(
        phase_dir(cfg.data_dir, "1.2") / "checkpoints" / f"{model_slug(cfg.model)}_T{temperature:g}_{sampling.start}-{sampling.end}_{key}",
        cfg.checkpoint_every, cfg.autosave_every, cfg.autosave_keep,
    )
    sampling.checkpointers.append(checkpointer)
    return checkpointer
