"""The CLI as a user meets it: one line and exit 2 on bad input, nothing half-written."""

import os
import subprocess
import sys

from tests.paths import DEMO_PROBLEMS, REPO_ROOT


def run_cli(*args, data_dir, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k not in ("PVA_DATA_DIR", "PVA_MBPP_PATH")}
    env.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **(env_extra or {})})
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "run.py"), *args, "--data-dir", str(data_dir)],
        capture_output=True, text=True, timeout=120, env=env, stdin=subprocess.DEVNULL,
    )


def _one_error_line(stderr):
    lines = [l for l in stderr.splitlines() if "error" in l.lower()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_unknown_option_value_is_one_line(tmp_path):
    out = run_cli("phase", "2", "--split", "bogus", data_dir=tmp_path)
    assert out.returncode == 2
    assert "invalid choice: 'bogus'" in _one_error_line(out.stderr)
    out = run_cli("phase", "9", data_dir=tmp_path)
    assert out.returncode == 2


def test_missing_phase0_names_the_command(tmp_path):
    out = run_cli("phase", "0.1", "--mbpp-path", str(DEMO_PROBLEMS), data_dir=tmp_path)
    assert out.returncode == 2
    assert "python3 run.py phase 0" in _one_error_line(out.stderr)
    assert not list((tmp_path / "phase0_1").glob("*.parquet"))


def test_malformed_mbpp_names_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(DEMO_PROBLEMS.read_text().splitlines()[0] + "\n{not json\n")
    out = run_cli("phase", "0", "--mbpp-path", str(bad), data_dir=tmp_path / "d")
    assert out.returncode == 2
    assert "line 2" in _one_error_line(out.stderr)
    assert not list((tmp_path / "d" / "phase0").glob("*.parquet"))


def test_phases_0_and_01_via_cli_and_env(tmp_path):
    env = {"PVA_MBPP_PATH": str(DEMO_PROBLEMS)}
    assert run_cli("phase", "0", data_dir=tmp_path, env_extra=env).returncode == 0
    out = run_cli("phase", "0.1", "--seed", "3", data_dir=tmp_path, env_extra=env)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "phase0_1" / "split_metadata.json").is_file()
    assert list((tmp_path / "phase0_1" / "logs").glob("*.log"))


def test_every_subcommand_has_help(tmp_path):
    for cmd in ("phase", "check-mbpp", "test-gpu", "demo"):
        out = subprocess.run([sys.executable, str(REPO_ROOT / "run.py"), cmd, "--help"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "--data-dir" in out.stdout


def test_artifact_missing_a_column_is_one_line_and_writes_nothing(tmp_path):
    import pandas as pd

    bad = tmp_path / "difficulty_20260101_000000_000000.parquet"
    pd.DataFrame({"task_id": [1, 2]}).to_parquet(bad)
    out = run_cli("phase", "0.1", "--mbpp-path", str(DEMO_PROBLEMS), "--input", str(bad), data_dir=tmp_path)
    assert out.returncode == 2
    line = _one_error_line(out.stderr)
    assert str(bad) in line and "missing cyclomatic_complexity" in line
    assert not list((tmp_path / "phase0_1").glob("*_mbpp.parquet"))
