"""What a benchmark is to the pipeline: the facts and steps that differ between MBPP and HumanEval.

Why one interface: the generating phases, ``run.py label``, Phase 3's steering
and the launcher used to ask ``cfg.dataset == "humaneval"`` at every step; a
third benchmark would have meant finding every such test. Now each of them
asks the benchmark object (``get_benchmark(cfg.dataset)``), and everything
that is one benchmark's lives in its module (``common/benchmarks/<name>.py``).

A benchmark is a frozen dataclass of facts plus methods; each module defines
a subclass with the methods and one instance, ``BENCHMARK``, listed in the
registry (``common/benchmarks/__init__.py``). This module imports nothing
heavy, so ``common.config`` can read the registry's names.
"""

from __future__ import annotations

import concurrent.futures
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.errors import PipelineError

if TYPE_CHECKING:
    import pandas as pd

    from common.modeling.generation_loop import Job
    from common.sandbox.executor import ExecutionResult, Executor


@dataclass(frozen=True)
class Benchmark(ABC):
    """One benchmark: its facts (fields) and its steps (abstract methods: a subclass that misses one cannot be built)."""

    name: str  # the --dataset value, and the key in metadata and run settings
    label: str  # as messages name it ("MBPP")
    path_option: str  # the config field naming a local copy (mbpp_path); None there means the hub
    prompt_formats: tuple[str, ...]  # the --prompt-format values it has prompts for
    # Where its outputs go inside the data directory: "" is the data directory itself (MBPP's,
    # so the study's files keep their places); any other is a folder of that name in it.
    output_subdir: str
    # Phase 0 (difficulty) and Phase 0.1 (splits) exist for it: Phase 1.0 reads a difficulty
    # mapping (--input) and Phase 1.2 samples the validation split. Without splits the tasks are
    # named by the benchmark's source, so Phase 1.2's settings and checkpoint keys record it.
    has_splits: bool
    # The study's benchmark: Phases 2 and 3 choose latents on its Phase 1 outputs, the sweep runs it.
    in_study: bool
    supports_launcher: bool  # multi_gpu_launcher.py knows its task list, settings and folders
    # How a completion is labelled when not by MBPP's extraction and asserts: recorded as "judge"
    # in metadata and run settings (labels from another judge are other labels). None: MBPP's way.
    judge_version: str | None

    @property
    def path_flag(self) -> str:
        """The command-line flag of :attr:`path_option` (``--mbpp-path``)."""
        return "--" + self.path_option.replace("_", "-")

    def path(self, cfg: Any) -> str | None:
        """The local copy the config names, or None for the hub."""
        value = getattr(cfg, self.path_option)
        return None if value is None else str(value)

    def data_dir(self, data_dir: str | Path) -> Path:
        """Where this benchmark's outputs live inside ``data_dir``."""
        return Path(data_dir) / self.output_subdir if self.output_subdir else Path(data_dir)

    def judge_fields(self) -> dict[str, str]:
        """``{"judge": version}`` for metadata and settings, or nothing for MBPP's labelling."""
        return {"judge": self.judge_version} if self.judge_version else {}

    def source(self, cfg: Any) -> str:
        """The source as metadata names it: the local file, or the hub dataset."""
        return self.source_description(self.path(cfg))

    # --- steps each benchmark implements -------------------------------------------------

    @abstractmethod
    def check_prompt_format(self, prompt_format: str) -> None:
        """One line when the benchmark has no prompt in ``prompt_format`` (called before anything is written)."""
        ...

    @abstractmethod
    def source_description(self, path: str | Path | None) -> str:
        ...

    @abstractmethod
    def load_problems(self, path: str | Path | None) -> pd.DataFrame:
        """Every problem, validated, one row per integer ``task_id``."""
        ...

    @abstractmethod
    def load_tasks(self, cfg: Any) -> tuple[pd.DataFrame, Path | None]:
        """Phase 1.0's tasks with their ``cyclomatic_complexity``, and the difficulty file read (or None)."""
        ...

    @abstractmethod
    def prompt_version(self, prompt_format: str) -> str:
        """The versioned name of the prompt in ``prompt_format`` (metadata, run settings, checkpoint keys)."""
        ...

    @abstractmethod
    def stop_sequences(self, prompt_format: str) -> tuple[str, ...]:
        """Where generation stops: the judge cuts the completion there too."""
        ...

    @abstractmethod
    def job(self, problem: dict[str, Any], prompt_format: str, tokenizer: Any) -> Job:
        """A greedy generation job for one problem (key: its task id), labelled as the benchmark labels."""
        ...

    @abstractmethod
    def submit(
        self, executor: Executor, problem: dict[str, Any], text: str, prompt: Any
    ) -> tuple[str, concurrent.futures.Future[ExecutionResult]]:
        """Judge one generated text as the generating phase judges it (``prompt``: the row's, or None)."""
        ...

    @abstractmethod
    def sample_ids(self, df: pd.DataFrame, path: Path) -> pd.DataFrame:
        """A generations table's ids and text columns as ``run.py label`` reads them (another tool's format accepted)."""
        ...

    @abstractmethod
    def check_prompts(self, df: pd.DataFrame, problems: pd.DataFrame, source: str) -> None:
        """One line when a row's ``prompt`` is not the prompt of its task in this benchmark."""
        ...

    def task_id_hint(self, problems: pd.DataFrame) -> str:
        """What an unknown task id message adds (how this benchmark numbers its tasks), or ""."""
        return ""


def refuse_unknown(name: str, known: list[str]) -> PipelineError:
    """The one-line refusal of a --dataset that names no benchmark (worded as the option parser words it)."""
    return PipelineError(f"--dataset: must be one of {', '.join(known)}, got {name!r}")
