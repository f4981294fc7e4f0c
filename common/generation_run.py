"""The skeleton Phase 1.0 (greedy) and Phase 1.2 (sampled) share around ``generate_and_execute``.

Why here: both phases pick the benchmark, move the data directory to its
folder, load the model and its layers, build one job per task, record the
same benchmark facts in their run settings and metadata, and merge a rerun's
rows into an earlier run's. Written twice, the two copies drifted; phases
never import each other, so what they share lives in ``common/``. What is one
benchmark's (prompts, tests, labels, folders) is asked of the benchmark
object (``common.benchmarks``), never tested by name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from common.benchmarks import Benchmark, get_benchmark
from common.config import PipelineConfig
from common.modeling.generation import GenerationConfig
from common.modeling.generation_loop import Job
from common.modeling.hooks import check_layers
from common.prompts import EXTRACTION_VERSION


def open_benchmark(cfg: PipelineConfig) -> tuple[Benchmark, PipelineConfig]:
    """``--dataset``'s benchmark, its prompt format checked, and ``cfg`` with the data dir moved to its folder.

    Called first: a refused format writes nothing and moves no earlier run aside.
    """
    bench = get_benchmark(cfg.dataset)
    bench.check_prompt_format(cfg.prompt_format)
    return bench, dataclasses.replace(cfg, data_dir=str(bench.data_dir(cfg.data_dir)))


@dataclass
class LoadedModel:
    """The model a generating phase runs, where, and the layers it captures."""

    device: Any
    dtype: Any
    model: Any
    tokenizer: Any
    layers: list[int]


def load_generation_model(cfg: PipelineConfig) -> LoadedModel:
    """``--model`` on ``--device`` in its default dtype; ``--layers`` checked against it (None: every layer)."""
    from common.modeling.models import default_dtype, load_model_and_tokenizer, num_layers, resolve_device

    device = resolve_device(cfg.device)
    model, tokenizer = load_model_and_tokenizer(cfg.model, device, default_dtype(device))
    n_layers = num_layers(model)
    layers = list(range(n_layers)) if cfg.layers is None else check_layers(cfg.layers, n_layers, "--layers")
    return LoadedModel(device, default_dtype(device), model, tokenizer, layers)


def benchmark_jobs(
    bench: Benchmark, tasks: pd.DataFrame, prompt_format: str, tokenizer: Any,
    key: Callable[[Job], str], extra: Callable[[dict[str, Any]], dict[str, Any]],
) -> list[Job]:
    """One job per task row: the benchmark's prompt and judge, with the phase's key and extra record fields."""
    jobs = []
    for row in tasks.to_dict("records"):
        job = bench.job(row, prompt_format, tokenizer)
        jobs.append(dataclasses.replace(job, key=key(job), extra=extra(row)))
    return jobs


def benchmark_settings(bench: Benchmark, cfg: PipelineConfig) -> dict[str, Any]:
    """The run settings that name the benchmark, its prompt and its judge (two runs must share them to merge)."""
    return {
        "prompt": bench.prompt_version(cfg.prompt_format), "dataset": bench.name, "source": bench.source(cfg),
        # Chat and plain prompts give other programs and other activations: never one dataset.
        "prompt_format": cfg.prompt_format,
        # Labels from another judge are other labels: never one dataset.
        **bench.judge_fields(),
    }


def with_prompt_format(identity: dict[str, Any], prompt_format: str) -> dict[str, Any]:
    """A checkpoint identity with the format added, only when not plain: plain runs keep their earlier keys."""
    return identity if prompt_format == "plain" else {**identity, "prompt_format": prompt_format}


def with_stop_sequences(gen_cfg: GenerationConfig, bench: Benchmark, prompt_format: str) -> GenerationConfig:
    """Generation stops where the benchmark's judge cuts the completion."""
    return dataclasses.replace(gen_cfg, stop_sequences=bench.stop_sequences(prompt_format))


def run_extra(bench: Benchmark, cfg: PipelineConfig, loaded: LoadedModel) -> dict[str, Any]:
    """The metadata both phases record about the device, the benchmark and the prompt."""
    return {
        "device": str(loaded.device), "dtype": str(loaded.dtype), "dataset": bench.name, "layers": loaded.layers,
        "prompt_template_version": bench.prompt_version(cfg.prompt_format), "extraction_version": EXTRACTION_VERSION,
    }


def settings_difference(earlier: dict[str, Any], settings: dict[str, Any]) -> str:
    """``the earlier run used other model, seed``: why an earlier run is moved aside, not merged."""
    return ", ".join(sorted(k for k in settings if earlier.get(k) != settings[k]))


def merge_rows(old: pd.DataFrame, new: pd.DataFrame, order: list[str]) -> tuple[pd.DataFrame, int]:
    """``old``'s rows of tasks ``new`` lacks, then ``new``'s, sorted by ``order``; and how many of old's tasks were replaced.

    Why tasks, not rows: a rerun of a task replaces every sample of it.
    """
    overlap = old["task_id"].isin(new["task_id"])
    replaced = int(old.loc[overlap, "task_id"].nunique())
    merged = pd.concat([old[~overlap], new], ignore_index=True)
    return merged.sort_values(order).reset_index(drop=True), replaced
