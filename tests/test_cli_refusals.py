"""Refusals a new user meets: each is one line, says what is wrong, and comes before any work."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from common.errors import PipelineError
from phase0_1_splitting.splitting import split_tasks
from tests.helpers import DEMO_PROBLEMS, REAL_MBPP, REPO_ROOT, interrupt_run_py, requires_real_mbpp


def _run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO_ROOT / "run.py"), *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env=env, stdin=subprocess.DEVNULL)


def _one_error(out: subprocess.CompletedProcess[str]) -> str:
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ") or ": error: " in line]
    assert out.returncode == 2 and len(errors) == 1 and "Traceback" not in out.stderr, out.stderr
    return errors[0]


def test_phase_1_0_is_phase_1(tmp_path):
    out = _run("phase", "1.0", "--data-dir", str(tmp_path), "--model", str(tmp_path / "no_model"), "--mbpp-path", str(DEMO_PROBLEMS))
    assert "no Phase 0 output" in _one_error(out)  # Phase 1's own first check: the alias ran Phase 1
    assert (tmp_path / "phase1_0" / "logs").is_dir() and not (tmp_path / "phase1.0").exists()


@pytest.mark.parametrize("value", ["-1", "0", "0.5,0"])
def test_temperatures_message_and_rule_agree(tmp_path, value):
    line = _one_error(_run("phase", "1.2", "--data-dir", str(tmp_path), "--temperatures", value))
    assert f"must be greater than 0, got '{value}'" in line
    assert not (tmp_path / "phase1_2").exists()


@pytest.mark.parametrize("value", ["1,0,0", "0.5,0.5,0"])
def test_split_fractions_with_an_empty_split_are_refused(tmp_path, value):
    line = _one_error(_run("phase", "0.1", "--data-dir", str(tmp_path), "--split-fractions", value))
    assert f"must be greater than 0, got '{value}'" in line


def test_a_fraction_too_small_for_the_tasks_leaves_no_split_empty():
    difficulty = pd.DataFrame({"task_id": range(20), "cyclomatic_complexity": [1] * 20})
    with pytest.raises(PipelineError, match=r"leaves the hyperparams split of 20 tasks empty"):
        split_tasks(difficulty, (0.97, 0.01, 0.02), 1, 0)
    with pytest.raises(PipelineError, match="greater than 0"):
        split_tasks(difficulty, (1.0, 0.0, 0.0), 1, 0)
    assert sorted(split_tasks(difficulty, (0.5, 0.1, 0.4), 1, 0)["split"].value_counts().to_dict().items()) == [
        ("hyperparams", 2), ("sae", 10), ("validation", 8)]


def test_train_saes_refuses_too_few_tokens_with_the_minimum(tmp_path):
    from common.config import MIN_TRAIN_TOKENS

    line = _one_error(_run("train-saes", "--model", str(tmp_path / "m"), "--output", str(tmp_path / "out"), "--tokens", "10"))
    assert f"--tokens: must be at least {MIN_TRAIN_TOKENS}" in line
    assert not (tmp_path / "out").exists()


def test_train_saes_output_is_checked_before_the_model_loads(tmp_path):
    (tmp_path / "file").write_text("x")
    line = _one_error(_run("train-saes", "--model", "org/x", "--output", str(tmp_path / "file" / "saes")))
    assert line.startswith(f"error: --output {tmp_path / 'file' / 'saes'}") and "is not a folder" in line


def test_check_humaneval_json_dir_is_refused_before_anything_runs(tmp_path):
    line = _one_error(_run("check-humaneval", "--json", str(tmp_path)))
    assert line == f"error: --json {tmp_path} is a directory; give a file name"
    line = _one_error(_run("check-mbpp", "--mbpp-path", str(DEMO_PROBLEMS), "--json", "/proc/results.json"))
    assert "cannot write in /proc" in line and ".tmp-" not in line


def test_sweep_refuses_humaneval_up_front(tmp_path, tiny_model_dir):
    line = _one_error(_run("sweep", "--models", str(tiny_model_dir), "--data-dir", str(tmp_path / "data"), "--dataset", "humaneval"))
    assert "run.py sweep runs the MBPP study; --dataset humaneval is not part of it" in line
    assert not (tmp_path / "data").exists()


def test_a_failed_sweep_step_exits_2_naming_the_step_and_its_log(tmp_path, tiny_model_dir):
    broken = tmp_path / "mbpp.jsonl"
    broken.write_text("this is not json\n")  # Phase 0, the first step, fails on it
    out = _run("sweep", "--models", str(tiny_model_dir), "--data-dir", str(tmp_path / "data"), "--mbpp-path", str(broken),
               "--device", "cpu")
    line = _one_error(out)
    log = re.search(r"see (\S+)", line)
    assert line.startswith("error: sweep step phase0 failed, see ") and log is not None, line
    assert "not JSON" in Path(log.group(1).rstrip(";")).read_text() or "line 1" in Path(log.group(1).rstrip(";")).read_text()


@requires_real_mbpp
def test_label_after_ctrl_c_says_it_starts_over_and_writes_nothing(tmp_path):
    """SIGINT while programs run: exit 130, a line saying a rerun labels again (it does not resume), no output."""
    slow = "def similar_elements(a, b):\n    import time\n    time.sleep(15)\n    return ()\n"  # task 2's entry point
    rows = [{"task_id": 2, "generated_text": slow} for _ in range(4)]
    source = tmp_path / "gens.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, stderr = interrupt_run_py(
        ["label", "--generations", str(source), "--mbpp-path", str(REAL_MBPP), "--workers", "1", "--timeout", "30"],
        "labelling", tmp_path / "stderr.txt", {"HF_HUB_OFFLINE": "1"}, limit_s=240)
    assert code == 130, stderr
    assert stderr.strip().splitlines()[-1] == (
        "interrupted: nothing was written; rerunning the same command labels every row again (labelling does not resume)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gens.jsonl", "stderr.txt"]
