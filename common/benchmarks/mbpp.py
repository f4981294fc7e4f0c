"""MBPP: loading and validating its problems, and the benchmark object (prompts, labels, folders).

Sources: the hub (``google-research-datasets/mbpp``, config ``full``, every
split, sorted by task_id) through ``datasets``, or a local file in the
original jsonl format (or parquet with the same columns). Every row is
validated, because a silently malformed row would become a silently wrong
label hours later.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from common.benchmarks.base import Benchmark
from common.datadir import jsonl_objects
from common.errors import PipelineError
from common.modeling.model_presets import PROMPT_FORMATS
from common.prompts import PROMPT_TEMPLATE_VERSION, STOP_SEQUENCES, build_prompt

logger = logging.getLogger(__name__)

HUB_DATASET = "google-research-datasets/mbpp"
HUB_CONFIG = "full"
COLUMNS = ["task_id", "text", "code", "test_list", "test_setup_code", "challenge_test_list"]


def _validate_row(row: dict[str, Any], where: str) -> dict[str, Any]:
    """Check one problem; ``where`` names the row (``line 12``) in the error."""
    for key in COLUMNS:
        if key not in row:
            raise PipelineError(f"MBPP {where}: missing field {key!r}")
    task_id = row["task_id"]
    if isinstance(task_id, bool) or not isinstance(task_id, int):
        try:
            if float(task_id) != int(task_id):
                raise ValueError
            task_id = int(task_id)
        except (TypeError, ValueError):
            raise PipelineError(f"MBPP {where}: field 'task_id' must be an integer, got {task_id!r}")
    for key in ("text", "code", "test_setup_code"):
        if not isinstance(row[key], str):
            raise PipelineError(f"MBPP {where}: field {key!r} must be a string")
    if not row["text"].strip():
        raise PipelineError(f"MBPP {where}: field 'text' is empty")
    tests = list(row["test_list"]) if not isinstance(row["test_list"], str) else None
    if tests is None or not tests or not all(isinstance(t, str) for t in tests):
        raise PipelineError(f"MBPP {where}: field 'test_list' must be a non-empty list of strings")
    for test in tests:
        if not test.lstrip().startswith("assert"):
            raise PipelineError(f"MBPP {where}: field 'test_list' has a test not starting with 'assert': {test[:60]!r}")
    challenge = row["challenge_test_list"]
    challenge = [] if challenge is None else list(challenge) if not isinstance(challenge, str) else None
    if challenge is None or not all(isinstance(t, str) for t in challenge):
        raise PipelineError(f"MBPP {where}: field 'challenge_test_list' must be a list of strings")
    return {
        "task_id": task_id,
        "text": row["text"],
        "code": row["code"],
        "test_list": tests,
        "test_setup_code": row["test_setup_code"],
        "challenge_test_list": challenge,
    }


def _rows_from_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineError(f"cannot read MBPP file {path}: {exc}")
    objects = jsonl_objects(lines, lambda number, error: f"MBPP {path} line {number}: not valid JSON ({error})",
                            lambda number: f"MBPP {path} line {number}: not a JSON object")
    return [_validate_row(obj, f"{path} line {number}") for number, obj in objects]


def _rows_from_parquet(path: Path) -> list[dict[str, Any]]:
    try:
        df = pd.read_parquet(path)
    except Exception as exc:
        raise PipelineError(f"cannot read MBPP parquet {path}: {exc}")
    return [_validate_row(dict(r), f"{path} row {i}") for i, r in enumerate(df.to_dict("records"))]


def _rows_from_hub() -> list[dict[str, Any]]:
    try:
        import datasets

        dsd = datasets.load_dataset(HUB_DATASET, HUB_CONFIG)
    except Exception as exc:
        raise PipelineError(
            f"cannot load MBPP ({HUB_DATASET}, config {HUB_CONFIG}) from the Hugging Face hub "
            f"({type(exc).__name__}); point --mbpp-path (or PVA_MBPP_PATH) at a local mbpp.jsonl"
        )
    rows = []
    for split in dsd:
        for i, r in enumerate(dsd[split]):
            rows.append(_validate_row(dict(r), f"hub split {split} row {i}"))
    return rows


def load_mbpp(path: str | Path | None = None) -> pd.DataFrame:
    """All problems, validated, one row per task, sorted by task_id.

    ``path`` None means the hub. A duplicate task_id is an error: every later
    phase keys on it.
    """
    if path is None:
        rows = _rows_from_hub()
        source = f"hub:{HUB_DATASET}/{HUB_CONFIG}"
    else:
        p = Path(path)
        if p.is_dir():
            raise PipelineError(f"MBPP path {p} is a directory, not a file: give the jsonl or parquet file (--mbpp-path / PVA_MBPP_PATH)")
        if not p.is_file():
            raise PipelineError(f"MBPP file {p} does not exist (check --mbpp-path / PVA_MBPP_PATH)")
        rows = _rows_from_parquet(p) if p.suffix == ".parquet" else _rows_from_jsonl(p)
        source = str(p)
    if not rows:
        raise PipelineError(f"MBPP source {source} holds no problems")
    df = pd.DataFrame(rows, columns=COLUMNS)
    duplicated = df["task_id"][df["task_id"].duplicated()].tolist()
    if duplicated:
        raise PipelineError(f"MBPP source {source}: duplicate task_id {duplicated[0]}")
    df = df.sort_values("task_id", kind="stable").reset_index(drop=True)
    df.attrs["source"] = source
    logger.info("loaded %d MBPP problems from %s", len(df), source)
    return df


def mbpp_source_description(path: str | Path | None) -> str:
    return f"hub:{HUB_DATASET}/{HUB_CONFIG}" if path is None else str(path)


_HUMANEVAL_ID = re.compile(r"HumanEval/(\d+)")


@dataclass(frozen=True)
class MBPP(Benchmark):
    """MBPP: the study's benchmark. A fixed template (``common.prompts``) in either format; labels from the asserts.

    The prompt template and the extraction stay in ``common.prompts``: Phase 3
    rebuilds MBPP prompts from its split rows with them.
    """

    def check_prompt_format(self, prompt_format: str) -> None:
        """Nothing to check here: ``common.modeling.model_presets.apply_prompt_format`` refuses a format it does not know."""

    def source_description(self, path: str | Path | None) -> str:
        return mbpp_source_description(path)

    def load_problems(self, path: str | Path | None) -> pd.DataFrame:
        return load_mbpp(path)

    def load_tasks(self, cfg: Any) -> tuple[pd.DataFrame, Path | None]:
        """The problems joined with the Phase 0 difficulty mapping (``--input`` or the newest), in task_id order."""
        from common.datadir import DIFFICULTY

        difficulty_path = DIFFICULTY.resolve(cfg.input, cfg.data_dir)
        difficulty = DIFFICULTY.read_table(difficulty_path)
        problems = load_mbpp(cfg.mbpp_path)
        tasks = problems.merge(difficulty[["task_id", "cyclomatic_complexity"]], on="task_id", how="inner")
        if len(tasks) != len(problems):
            raise PipelineError(
                f"{difficulty_path} covers {len(tasks)} of {len(problems)} MBPP tasks; rerun phase 0 with the same --mbpp-path"
            )
        return tasks.sort_values("task_id").reset_index(drop=True), difficulty_path

    def prompt_version(self, prompt_format: str) -> str:
        return PROMPT_TEMPLATE_VERSION  # the format is recorded on its own (prompt_format)

    def stop_sequences(self, prompt_format: str) -> tuple[str, ...]:
        return STOP_SEQUENCES

    def job(self, problem: dict[str, Any], prompt_format: str, tokenizer: Any) -> Any:
        """The template's prompt in ``prompt_format``; the program is extracted and run against the asserts."""
        from common.modeling.generation_loop import Job
        from common.modeling.model_presets import apply_prompt_format

        tests = list(problem["test_list"])
        return Job(
            key=str(int(problem["task_id"])),
            task_id=int(problem["task_id"]),
            prompt=apply_prompt_format(tokenizer, build_prompt(problem["text"], tests), prompt_format),
            test_setup_code=problem["test_setup_code"],
            tests=tests,
        )

    def submit(self, executor: Any, problem: dict[str, Any], text: str, prompt: Any) -> tuple[str, Any]:
        from common.sandbox.labelling import submit_generation

        return submit_generation(executor, int(problem["task_id"]), text, problem["test_setup_code"], list(problem["test_list"]))

    def sample_ids(self, df: pd.DataFrame, path: Path) -> pd.DataFrame:
        """The table as it is; HumanEval's "HumanEval/N" ids are refused with the flag they need."""
        if "task_id" in df.columns and df["task_id"].map(lambda t: bool(_HUMANEVAL_ID.fullmatch(str(t)))).any():
            raise PipelineError(f"generations file {path} holds HumanEval task ids (\"HumanEval/N\"); add --dataset humaneval")
        return df

    def check_prompts(self, df: pd.DataFrame, problems: pd.DataFrame, source: str) -> None:
        """Each prompt holds its task's statement (the template and the chat format wrap it, never change it)."""
        statements = dict(zip(problems["task_id"].astype(int), problems["text"].astype(str).str.strip(), strict=True))
        for position, (task_id, prompt) in enumerate(zip(df["task_id"], df["prompt"], strict=True)):
            statement = statements[int(task_id)]
            if isinstance(prompt, str) and statement not in prompt:
                raise PipelineError(
                    f"generations file {source}: row {position} (task_id {task_id}) has a prompt without MBPP task "
                    f"{task_id}'s statement ({statement[:50]!r}); is --mbpp-path the file the generations were made from?"
                    " (use --dataset humaneval for HumanEval generations)"
                )


BENCHMARK = MBPP(
    name="mbpp", label="MBPP", path_option="mbpp_path", prompt_formats=PROMPT_FORMATS, output_subdir="",
    has_splits=True, in_study=True, supports_launcher=True, judge_version=None,
)
