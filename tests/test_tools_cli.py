"""run.py check-mbpp and test-gpu as a user runs them."""

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import DEMO_PROBLEMS, REAL_MBPP, REPO_ROOT, requires_real_mbpp


def _run(*args, timeout=300):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(REPO_ROOT / "run.py"), *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_check_mbpp_on_bundled_problems_and_a_broken_copy(tmp_path):
    out = _run("check-mbpp", "--mbpp-path", str(DEMO_PROBLEMS), "--workers", "2", "--json", str(tmp_path / "r.json"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "passed 100/100" in out.stdout
    rows = json.loads((tmp_path / "r.json").read_text())
    assert len(rows) == 100 and set(rows[0]) == {"task_id", "passed", "outcome", "detail", "duration_s"}
    lines = DEMO_PROBLEMS.read_text().splitlines()
    broken = json.loads(lines[0])
    broken["code"] = broken["code"].replace("return", "return None and", 1)
    (tmp_path / "broken.jsonl").write_text(json.dumps(broken) + "\n" + "\n".join(lines[1:5]) + "\n")
    out = _run("check-mbpp", "--mbpp-path", str(tmp_path / "broken.jsonl"), "--workers", "2")
    assert out.returncode == 1
    assert "passed 4/5" in out.stdout and "assertion: 1" in out.stdout


@requires_real_mbpp
@pytest.mark.slow
def test_check_mbpp_all_974_pass():
    # a generous per-program limit: task 123 needs seconds of CPU, more on a loaded machine
    out = _run("check-mbpp", "--mbpp-path", str(REAL_MBPP), "--workers", "2", "--timeout", "30", timeout=600)
    assert out.returncode == 0, out.stdout[-3000:]
    assert "passed 974/974" in out.stdout


def test_test_gpu_smoke_on_tiny_model(tiny_model_dir):
    out = _run("test-gpu", "--model", str(tiny_model_dir), "--device", "cpu")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "CUDA available" in out.stdout and "test-gpu: OK" in out.stdout
    assert "activations: 2 layers, shape (64,), dtype float32" in out.stdout


def test_test_gpu_unknown_model_is_one_line(tmp_path):
    out = _run("test-gpu", "--model", str(tmp_path / "missing"), "--device", "cpu")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().count("\n") == 0 or out.stderr.strip().splitlines()[-1].startswith("error:")
