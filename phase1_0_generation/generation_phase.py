"""Phase 1.0: every problem in the slice, solved greedily, executed, labelled, activations saved.

Outputs (DESIGN section 2):
- ``data/phase1_0/dataset_<ts>.parquet`` (or, for a launcher worker, a shard
  table under ``--shard-dir``), one row per task;
- ``data/phase1_0/activations/{correct,incorrect}/{task_id}_layer_{L}.npz``.

Resume: records are checkpointed under ``data/phase1_0/checkpoints/<run key>/``;
rerunning the same command skips every checkpointed task.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from common.activations import save_task_activations
from common.config import PipelineConfig
from common.errors import PipelineError
from common.executor import ExecutionResult, Executor, executor_config_for
from common.generation import GenerationConfig, GenerationResult, auto_batch_size
from common.generation_loop import Job, generate_and_execute
from common.hooks import check_layers
from common.mbpp import load_mbpp, mbpp_source_description
from common.metadata import RunClock, build_metadata
from common.model_presets import apply_prompt_format
from common.models import default_dtype, load_model_and_tokenizer, num_layers, resolve_device
from common.paths import phase_dir, resolve_input, timestamp
from common.prompts import PROMPT_TEMPLATE_VERSION, build_prompt
from common.storage import RecordCheckpointer, write_json, write_parquet
from common.tasks import model_slug, run_key, slice_bounds

logger = logging.getLogger(__name__)

DATASET_COLUMNS = [
    "task_id", "prompt", "generated_text", "extracted_code", "passed", "outcome", "detail",
    "n_generated_tokens", "stop_reason", "gen_time_s", "exec_time_s", "cyclomatic_complexity",
]


def load_tasks(cfg: PipelineConfig) -> tuple[pd.DataFrame, Path]:
    """MBPP problems joined with the Phase 0 difficulty mapping, in task_id order."""
    difficulty_path = resolve_input(cfg.input, cfg.data_dir, "0", "difficulty_*.parquet")
    try:
        difficulty = pd.read_parquet(difficulty_path)
    except Exception as exc:
        raise PipelineError(f"cannot read difficulty mapping {difficulty_path}: {exc}")
    if not {"task_id", "cyclomatic_complexity"} <= set(difficulty.columns):
        raise PipelineError(f"{difficulty_path} is not a Phase 0 difficulty mapping")
    problems = load_mbpp(cfg.mbpp_path)
    tasks = problems.merge(difficulty[["task_id", "cyclomatic_complexity"]], on="task_id", how="inner")
    if len(tasks) != len(problems):
        raise PipelineError(
            f"{difficulty_path} covers {len(tasks)} of {len(problems)} MBPP tasks; rerun phase 0 with the same --mbpp-path"
        )
    return tasks.sort_values("task_id").reset_index(drop=True), difficulty_path


def task_count(cfg: PipelineConfig) -> int:
    """How many tasks Phase 1.0 covers (for the launcher's default range)."""
    return len(load_tasks(cfg)[0])


def resolve_layers(requested: list[int] | None, n_layers: int) -> list[int]:
    if requested is None:
        return list(range(n_layers))
    return check_layers(requested, n_layers, "--layers")


def run(cfg: PipelineConfig) -> Path:
    """Run Phase 1.0 on the slice ``cfg.start..cfg.end``; return the table written."""
    clock = RunClock()
    tasks, difficulty_path = load_tasks(cfg)
    start, end = slice_bounds(len(tasks), cfg.start, cfg.end)
    sliced = tasks.iloc[start : end + 1]
    device = resolve_device(cfg.device)
    model, tokenizer = load_model_and_tokenizer(cfg.model, device, default_dtype(device))
    layers = resolve_layers(cfg.layers, num_layers(model))
    batch_size = cfg.batch_size or auto_batch_size(model, device)
    if batch_size < 1:
        raise PipelineError("--batch-size must be at least 1")
    gen_cfg = GenerationConfig(max_new_tokens=cfg.max_new_tokens, batch_size=batch_size, temperature=0.0, seed=cfg.seed)

    out_root = phase_dir(cfg.data_dir, "1")
    activations_dir = out_root / "activations"
    identity = {
        "model": cfg.model, "start": start, "end": end, "layers": layers, "max_new_tokens": cfg.max_new_tokens,
        "prompt": PROMPT_TEMPLATE_VERSION, "mbpp": mbpp_source_description(cfg.mbpp_path), "seed": cfg.seed,
    }
    key = run_key(identity)
    checkpointer = RecordCheckpointer(
        out_root / "checkpoints" / f"{model_slug(cfg.model)}_{start}-{end}_{key}",
        cfg.checkpoint_every, cfg.autosave_every, cfg.autosave_keep,
    )
    jobs = [
        Job(
            key=str(int(row.task_id)),
            task_id=int(row.task_id),
            prompt=apply_prompt_format(tokenizer, build_prompt(row.text, list(row.test_list)), cfg.prompt_format),
            test_setup_code=row.test_setup_code,
            tests=list(row.test_list),
            extra={"cyclomatic_complexity": int(row.cyclomatic_complexity)},
        )
        for row in sliced.itertuples()
    ]

    def on_record(job: Job, result: GenerationResult, verdict: ExecutionResult, record: dict[str, Any]) -> None:
        label = "correct" if verdict.passed else "incorrect"
        save_task_activations(activations_dir, job.task_id, result.activations, label)

    logger.info("phase 1: tasks %d..%d (%d), model %s, layers %s, batch %d", start, end, len(jobs), cfg.model, f"{layers[0]}..{layers[-1]}" if layers else "none", batch_size)
    with Executor(executor_config_for(cfg)) as executor:
        records = generate_and_execute(
            model, tokenizer, jobs, gen_cfg, layers, executor, checkpointer, on_record, desc="phase 1"
        )
    dataset = pd.DataFrame(records)[DATASET_COLUMNS].sort_values("task_id").reset_index(drop=True)

    stamp = timestamp()
    out_dir = Path(cfg.shard_dir) if cfg.shard_dir else out_root
    out_dir.mkdir(parents=True, exist_ok=True)
    out_path = out_dir / f"dataset_{stamp}.parquet"
    write_parquet(dataset, out_path)
    n_pass = int(dataset["passed"].sum())
    meta = build_metadata(
        "1", cfg, clock,
        inputs={"difficulty": difficulty_path, **({"mbpp": cfg.mbpp_path} if cfg.mbpp_path else {})},
        outputs={"dataset": out_path, "activations": activations_dir},
        extra={
            "model": cfg.model,
            "device": str(device),
            "dtype": str(default_dtype(device)),
            "mbpp_source": mbpp_source_description(cfg.mbpp_path),
            "slice": {"start": start, "end": end, "n_tasks": len(dataset)},
            "layers": layers,
            "capture_site": "blocks.{L}.hook_resid_post (output of decoder layer L, before the final norm), last prompt token",
            "prompt_template_version": PROMPT_TEMPLATE_VERSION,
            "generation": dataclasses.asdict(gen_cfg),
            "executor": executor_config_for(cfg).to_dict(),
            "n_correct": n_pass,
            "n_incorrect": len(dataset) - n_pass,
            "pass_rate": n_pass / len(dataset),
            "outcome_counts": dataset["outcome"].value_counts().to_dict(),
            "run_key": key,
        },
    )
    write_json(out_path.with_name(f"dataset_{stamp}_metadata.json"), meta)
    checkpointer.clear()
    logger.info("phase 1: %d/%d passed -> %s", n_pass, len(dataset), out_path)
    return out_path
