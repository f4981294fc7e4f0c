"""Phase 1.2: temperature robustness on the validation split (MBPP) or on every HumanEval task.

For each temperature (default 0.3, 0.6, 0.9, 1.2) every validation task gets
``samples_per_task`` seeded samples, each executed and labelled; one table per
temperature, ``dataset_temp_0_3.parquet`` etc., one row per sample.

Activations at the last prompt token depend on the prompt only, not on
sampling, so they are captured once per task (during the first temperature's
prefill) into ``activations/{task_id}_layer_{L}.npz``, never once per sample.

Runs (``common.artifacts``): ``temperature_metadata.json`` lists the tables
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
from pathlib import Path
from typing import Any

import pandas as pd

from common.activations import activation_path, save_task_activations
from common.artifacts import (
    PHASE1_DATASET,
    SPLIT,
    TEMPERATURE_METADATA,
    TEMPERATURE_TABLE,
    RunRecord,
    TemperatureRun,
    archive,
    load_temperature_run,
    merge_slices,
    read_phase1_metadata,
    recorded_prompt_format,
    settings_with_prompt_format,
    temperature_label,
)
from common.config import PipelineConfig, benchmark_data_dir, check_option_limits
from common.errors import PipelineError
from common.executor import ExecutionResult, Executor, executor_config_for
from common.generation import GenerationConfig, GenerationResult, auto_batch_size
from common.generation_loop import Job, generate_and_execute
from common.hooks import check_layers
from common.humaneval import (
    HUMANEVAL_JUDGE_VERSION,
    check_humaneval_format,
    humaneval_job,
    humaneval_prompt_version,
    humaneval_source_description,
    humaneval_stop_sequences,
    humaneval_tasks,
)
from common.metadata import RunClock, build_metadata, file_sha256
from common.model_presets import apply_prompt_format
from common.models import default_dtype, load_model_and_tokenizer, num_layers, resolve_device
from common.paths import phase_dir, require_file, timestamp
from common.prompts import EXTRACTION_VERSION, PROMPT_TEMPLATE_VERSION, build_prompt
from common.seeding import derive_seed
from common.storage import RecordCheckpointer
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


def load_humaneval_tasks(cfg: PipelineConfig) -> pd.DataFrame:
    """Every HumanEval problem, in task_id order: all of HumanEval is held out, so there is no split to read."""
    if cfg.input:
        raise PipelineError("--input names a Phase 0.1 split of MBPP; --dataset humaneval samples every HumanEval task")
    return humaneval_tasks(cfg.humaneval_path).sort_values("task_id").reset_index(drop=True)


def select_tasks(cfg: PipelineConfig) -> tuple[pd.DataFrame, Path | None, int, int]:
    """The validation tasks in positions ``--start..--end`` of the whole task list (see common.tasks).

    HumanEval: every task in those positions (no split file, hence None).
    """
    if cfg.dataset == "humaneval":
        problems = load_humaneval_tasks(cfg)
        ids = problems["task_id"].astype(int).tolist()
        start, end, chosen = tasks_in_range(ids, ids, cfg.start, cfg.end, "HumanEval")
        return problems[problems["task_id"].isin(chosen)].reset_index(drop=True), None, start, end
    tasks, path = load_validation_tasks(cfg)
    start, end, chosen = tasks_in_range(
        all_task_ids(path), tasks["task_id"].astype(int).tolist(), cfg.start, cfg.end, "the validation split"
    )
    return tasks[tasks["task_id"].isin(chosen)].reset_index(drop=True), path, start, end


def task_universe(cfg: PipelineConfig) -> tuple[list[int], list[int]]:
    """(every task id, the validation split's) for the launcher's slicing; HumanEval: every task, twice."""
    if cfg.dataset == "humaneval":
        ids = load_humaneval_tasks(cfg)["task_id"].astype(int).tolist()
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
    earlier MBPP run still merges. HumanEval records the benchmark, the source
    and, for a local file, its sha256 in place of the split's hash.
    """
    common = {
        "model": cfg.model, "temperatures": [float(t) for t in cfg.temperatures],
        "samples_per_task": cfg.samples_per_task, "seed": cfg.seed, "max_new_tokens": cfg.max_new_tokens,
        "layers": cfg.layers,
    }
    if cfg.dataset == "humaneval":
        source_hash = file_sha256(Path(cfg.humaneval_path)) if cfg.humaneval_path else None
        return {
            **common, "prompt": humaneval_prompt_version(cfg.prompt_format), "dataset": "humaneval",
            "source": humaneval_source_description(cfg.humaneval_path), "source_sha256": source_hash,
            "prompt_format": cfg.prompt_format, "judge": HUMANEVAL_JUDGE_VERSION,
        }
    assert split_path is not None
    return {
        **common, "prompt": PROMPT_TEMPLATE_VERSION, "validation_split_sha256": file_sha256(split_path),
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
        diff = sorted(k for k in settings if earlier.record.settings.get(k) != settings[k])
        reason, stamp = f"the earlier run {earlier.record.run_id} used other {', '.join(diff)}", earlier.record.run_id
    names = [p.name for p in folder.glob(TEMPERATURE_TABLE.glob())] + [TEMPERATURE_METADATA.pattern, "activations"]
    dest = archive(folder, names, stamp)
    if dest is not None:
        logger.warning("phase 1.2: %s; its tables, metadata and activations moved to %s (nothing deleted)", reason, dest)
    return None


def prompt_version(cfg: PipelineConfig) -> str:
    return humaneval_prompt_version(cfg.prompt_format) if cfg.dataset == "humaneval" else PROMPT_TEMPLATE_VERSION


def build_jobs(cfg: PipelineConfig, sliced: pd.DataFrame, tokenizer: Any, temperature: float) -> list[Job]:
    """One sampling job per task at ``temperature``: MBPP's template, or HumanEval's own prompt and check."""
    extra = {"temperature": float(temperature)}
    if cfg.dataset == "humaneval":
        return [
            dataclasses.replace(humaneval_job(row, cfg.prompt_format, tokenizer), key=f"{int(row['task_id'])}@T{temperature:g}", extra=extra)
            for row in sliced.to_dict("records")
        ]
    return [
        Job(
            key=f"{int(row.task_id)}@T{temperature:g}",
            task_id=int(row.task_id),
            prompt=apply_prompt_format(tokenizer, build_prompt(row.text, list(row.test_list)), cfg.prompt_format),
            test_setup_code=row.test_setup_code,
            tests=list(row.test_list),
            extra=dict(extra),
        )
        for row in sliced.itertuples()
    ]


def run_inputs(cfg: PipelineConfig, split_path: Path | None) -> dict[str, str | Path]:
    """The inputs the metadata hashes: MBPP's validation split, or the HumanEval file (none for the hub)."""
    if cfg.dataset == "humaneval":
        return {"humaneval": cfg.humaneval_path} if cfg.humaneval_path else {}
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
            old = TEMPERATURE_TABLE.read_table(earlier.tables[temperature])
            overlap = old["task_id"].isin(table["task_id"])
            replaced = max(replaced, int(old.loc[overlap, "task_id"].nunique()))
            table = pd.concat([old[~overlap], table], ignore_index=True)
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


def run(cfg: PipelineConfig) -> Path:
    """Run Phase 1.2 on the validation tasks in positions ``cfg.start..cfg.end``; return the output folder.

    ``--dataset humaneval``: every HumanEval task in those positions, written under ``<data dir>/humaneval/``.
    """
    clock = RunClock()
    _check_temperatures(cfg)
    if cfg.dataset == "humaneval":
        check_humaneval_format(cfg.prompt_format)  # before anything is read, loaded or moved aside
    # Every option's declared limits: temperatures above 0, --dataset a benchmark, --samples-per-task at least 1, ...
    check_option_limits(cfg, "1.2")
    cfg = dataclasses.replace(cfg, data_dir=str(benchmark_data_dir(cfg.data_dir, cfg.dataset)))
    sliced, split_path, start, end = select_tasks(cfg)
    # HumanEval's too: its Phase 1.0 run (under <data dir>/humaneval/) chose completion or instruction format.
    cfg = dataclasses.replace(cfg, prompt_format=phase1_prompt_format(cfg))
    settings = run_settings(cfg, split_path)
    device = resolve_device(cfg.device)
    model, tokenizer = load_model_and_tokenizer(cfg.model, device, default_dtype(device))
    n_layers = num_layers(model)
    layers = list(range(n_layers)) if cfg.layers is None else check_layers(cfg.layers, n_layers, "--layers")
    k = cfg.samples_per_task
    batch_size = cfg.batch_size or auto_batch_size(model, device)
    batch_size = max(batch_size, k)  # one prompt's samples always share a batch

    # A launcher worker writes only its slice (the launcher merges and publishes); a run of its own
    # first decides, before anything is generated, whether it adds to the earlier run or sets it aside.
    earlier = None if cfg.shard_dir else prepare_outputs(cfg.data_dir, settings)
    out_root = phase_dir(cfg.data_dir, "1.2")
    activations_dir = out_root / "activations"
    executor_cfg = executor_config_for(cfg)
    tables: dict[float, pd.DataFrame] = {}
    per_temperature: dict[str, Any] = {}
    checkpointers: list[RecordCheckpointer] = []

    def on_record(job: Job, result: GenerationResult, verdict: ExecutionResult, record: dict[str, Any]) -> None:
        if result.activations and result.sample_index == 0:
            save_task_activations(activations_dir, job.task_id, result.activations)

    with Executor(executor_cfg) as executor:
        for t_index, temperature in enumerate(cfg.temperatures):
            # Activations once per task: captured in the first temperature's prefill only,
            # unless a task's files are missing (e.g. the first temperature ran in another slice).
            need_capture = t_index == 0 or any(
                not activation_path(activations_dir, int(tid), layers[-1]).is_file() for tid in sliced["task_id"]
            ) if layers else False
            seed = derive_seed(cfg.seed, t_index)
            gen_cfg = GenerationConfig(
                max_new_tokens=cfg.max_new_tokens, batch_size=batch_size, temperature=temperature,
                seed=seed, samples_per_prompt=k,
            )
            if cfg.dataset == "humaneval":
                gen_cfg = dataclasses.replace(gen_cfg, stop_sequences=humaneval_stop_sequences(cfg.prompt_format))
            identity = {
                "model": cfg.model, "start": start, "end": end, "temperature": temperature, "samples": k,
                "max_new_tokens": cfg.max_new_tokens, "prompt": prompt_version(cfg), "seed": cfg.seed,
                "split": str(split_path) if split_path else settings["source"], "batch_size": batch_size,
            }
            if cfg.dataset == "humaneval":  # only then: MBPP runs keep their earlier checkpoint keys
                identity["dataset"] = cfg.dataset
            if cfg.prompt_format != "plain":  # only then: plain runs keep their earlier checkpoint keys
                identity["prompt_format"] = cfg.prompt_format
            checkpointer = RecordCheckpointer(
                out_root / "checkpoints" / f"{model_slug(cfg.model)}_T{temperature:g}_{start}-{end}_{run_key(identity)}",
                cfg.checkpoint_every, cfg.autosave_every, cfg.autosave_keep,
            )
            checkpointers.append(checkpointer)
            jobs = build_jobs(cfg, sliced, tokenizer, temperature)
            records = generate_and_execute(
                model, tokenizer, jobs, gen_cfg, layers if need_capture else [], executor, checkpointer,
                on_record, desc=f"phase 1.2 T={temperature:g}",
            )
            table = pd.DataFrame(records)[SAMPLE_COLUMNS].sort_values(["task_id", "sample_index"]).reset_index(drop=True)
            tables[float(temperature)] = table
            per_temperature[f"{temperature:g}"] = {"seed": seed, "generation": dataclasses.asdict(gen_cfg)}
            logger.info("phase 1.2: T=%g pass rate %.3f over %d samples", temperature, table["passed"].mean(), len(table))
        sandbox = executor.sandbox_info()

    extra = {
        "device": str(device),
        "dtype": str(default_dtype(device)),
        "dataset": cfg.dataset,
        "slice": {"start": start, "end": end, "n_tasks": len(sliced),
                  "positions": "among all HumanEval tasks sorted by task_id; every one inside runs"
                  if cfg.dataset == "humaneval" else "among all tasks sorted by task_id; the validation tasks inside run"},
        "layers": layers,
        "samples_per_task": k,
        "per_temperature": per_temperature,
        "activations_policy": "captured once per task at the last prompt token (they depend on the prompt only), not once per sample",
        "prompt_template_version": prompt_version(cfg),
        **({"source": settings["source"], "source_sha256": settings["source_sha256"]} if cfg.dataset == "humaneval" else {}),
        "executor": sandbox,  # limits, plus whether programs ran without network
        "extraction_version": EXTRACTION_VERSION,
    }
    if cfg.shard_dir:
        folder = Path(cfg.shard_dir)
        for temperature, table in tables.items():
            TEMPERATURE_TABLE.write(table, folder / temperature_table_name(temperature))
    else:
        folder = publish(cfg, tables, settings, earlier, (start, end), run_inputs(cfg, split_path), clock, extra)
    # Checkpoints go only once every table they hold is written: a crash at the last temperature
    # resumes all of them rather than redoing the finished ones.
    for checkpointer in checkpointers:
        checkpointer.clear()
    logger.info("phase 1.2 done -> %s", folder)
    return folder
