"""Phase 1.2: temperature robustness on the validation split.

For each temperature (default 0.3, 0.6, 0.9, 1.2) every validation task gets
``samples_per_task`` seeded samples, each executed and labelled; one table per
temperature, ``dataset_temp_0_3.parquet`` etc., one row per sample.

Activations at the last prompt token depend on the prompt only, not on
sampling, so they are captured once per task (during the first temperature's
prefill) into ``activations/{task_id}_layer_{L}.npz``, never once per sample.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common.activations import activation_path, save_task_activations
from common.config import PipelineConfig
from common.errors import PipelineError
from common.executor import ExecutionResult, Executor, executor_config_for
from common.generation import GenerationConfig, GenerationResult, auto_batch_size
from common.generation_loop import Job, generate_and_execute
from common.hooks import check_layers
from common.metadata import RunClock, build_metadata
from common.model_presets import apply_prompt_format
from common.models import default_dtype, load_model_and_tokenizer, num_layers, resolve_device
from common.paths import phase_dir, require_file
from common.prompts import PROMPT_TEMPLATE_VERSION, build_prompt
from common.storage import RecordCheckpointer, write_json, write_parquet
from common.tasks import model_slug, run_key, slice_bounds

logger = logging.getLogger(__name__)

SAMPLE_COLUMNS = [
    "task_id", "temperature", "sample_index", "prompt", "generated_text", "extracted_code", "passed",
    "outcome", "detail", "n_generated_tokens", "stop_reason", "gen_time_s", "exec_time_s",
]


def temperature_table_name(temperature: float) -> str:
    """``0.3`` -> ``dataset_temp_0_3.parquet`` (DESIGN section 2)."""
    text = f"{temperature:g}".replace("-", "m").replace(".", "_")
    if "_" not in text:
        text += "_0"
    return f"dataset_temp_{text}.parquet"


def load_validation_tasks(cfg: PipelineConfig) -> tuple[pd.DataFrame, Path]:
    path = Path(cfg.input) if cfg.input else phase_dir(cfg.data_dir, "0.1", create=False) / "validation_mbpp.parquet"
    require_file(path, "0.1")
    try:
        tasks = pd.read_parquet(path)
    except Exception as exc:
        raise PipelineError(f"cannot read validation split {path}: {exc}")
    needed = {"task_id", "text", "test_list", "test_setup_code"}
    if not needed <= set(tasks.columns):
        raise PipelineError(f"{path} lacks columns {sorted(needed - set(tasks.columns))}; is it a Phase 0.1 split?")
    return tasks.sort_values("task_id").reset_index(drop=True), path


def task_count(cfg: PipelineConfig) -> int:
    return len(load_validation_tasks(cfg)[0])


def _check_temperatures(temperatures: list[float], samples: int) -> None:
    if not temperatures:
        raise PipelineError("--temperatures is empty")
    if any(t <= 0 for t in temperatures):
        raise PipelineError(f"--temperatures must be > 0 (temperature 0 is Phase 1.0), got {temperatures}")
    if len(set(temperatures)) != len(temperatures):
        raise PipelineError(f"--temperatures has duplicates: {temperatures}")
    if samples < 1:
        raise PipelineError("--samples-per-task must be at least 1")


def run(cfg: PipelineConfig) -> Path:
    """Run Phase 1.2 on validation positions ``cfg.start..cfg.end``; return the output folder."""
    clock = RunClock()
    _check_temperatures(cfg.temperatures, cfg.samples_per_task)
    tasks, split_path = load_validation_tasks(cfg)
    start, end = slice_bounds(len(tasks), cfg.start, cfg.end)
    sliced = tasks.iloc[start : end + 1]
    device = resolve_device(cfg.device)
    model, tokenizer = load_model_and_tokenizer(cfg.model, device, default_dtype(device))
    n_layers = num_layers(model)
    layers = list(range(n_layers)) if cfg.layers is None else check_layers(cfg.layers, n_layers, "--layers")
    k = cfg.samples_per_task
    batch_size = cfg.batch_size or auto_batch_size(model, device)
    batch_size = max(batch_size, k)  # one prompt's samples always share a batch

    out_root = phase_dir(cfg.data_dir, "1.2")
    activations_dir = out_root / "activations"
    out_dir = Path(cfg.shard_dir) if cfg.shard_dir else out_root
    out_dir.mkdir(parents=True, exist_ok=True)
    executor_cfg = executor_config_for(cfg)
    outputs: dict[str, Path] = {}
    summary: dict[str, Any] = {}

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
            seed = int(np.random.SeedSequence([cfg.seed, t_index]).generate_state(1)[0] % (2**31 - 1))
            gen_cfg = GenerationConfig(
                max_new_tokens=cfg.max_new_tokens, batch_size=batch_size, temperature=temperature,
                seed=seed, samples_per_prompt=k,
            )
            identity = {
                "model": cfg.model, "start": start, "end": end, "temperature": temperature, "samples": k,
                "max_new_tokens": cfg.max_new_tokens, "prompt": PROMPT_TEMPLATE_VERSION, "seed": cfg.seed,
                "split": str(split_path), "batch_size": batch_size,
            }
            checkpointer = RecordCheckpointer(
                out_root / "checkpoints" / f"{model_slug(cfg.model)}_T{temperature:g}_{start}-{end}_{run_key(identity)}",
                cfg.checkpoint_every, cfg.autosave_every, cfg.autosave_keep,
            )
            jobs = [
                Job(
                    key=f"{int(row.task_id)}@T{temperature:g}",
                    task_id=int(row.task_id),
                    prompt=apply_prompt_format(tokenizer, build_prompt(row.text, list(row.test_list)), cfg.prompt_format),
                    test_setup_code=row.test_setup_code,
                    tests=list(row.test_list),
                    extra={"temperature": float(temperature)},
                )
                for row in sliced.itertuples()
            ]
            records = generate_and_execute(
                model, tokenizer, jobs, gen_cfg, layers if need_capture else [], executor, checkpointer,
                on_record, desc=f"phase 1.2 T={temperature:g}",
            )
            table = pd.DataFrame(records)[SAMPLE_COLUMNS].sort_values(["task_id", "sample_index"]).reset_index(drop=True)
            path = out_dir / temperature_table_name(temperature)
            write_parquet(table, path)
            checkpointer.clear()
            outputs[f"T{temperature:g}"] = path
            summary[f"{temperature:g}"] = {
                "n_samples": len(table),
                "pass_rate": float(table["passed"].mean()),
                "seed": seed,
                "generation": dataclasses.asdict(gen_cfg),
            }
            logger.info("phase 1.2: T=%g pass rate %.3f over %d samples -> %s", temperature, table["passed"].mean(), len(table), path)

    meta = build_metadata(
        "1.2", cfg, clock,
        inputs={"validation_split": split_path},
        outputs={**outputs, "activations": activations_dir},
        extra={
            "model": cfg.model,
            "device": str(device),
            "dtype": str(default_dtype(device)),
            "slice": {"start": start, "end": end, "n_tasks": len(sliced)},
            "layers": layers,
            "samples_per_task": k,
            "temperatures": summary,
            "activations_policy": "captured once per task at the last prompt token (they depend on the prompt only), not once per sample",
            "prompt_template_version": PROMPT_TEMPLATE_VERSION,
            "executor": executor_cfg.to_dict(),
        },
    )
    write_json(out_dir / "temperature_metadata.json", meta)
    return out_dir
