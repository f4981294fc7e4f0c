"""The CLI as a user meets it: one line and exit 2 on bad input, nothing half-written."""

import os
import subprocess
import sys

from tests.helpers import DEMO_PROBLEMS, REPO_ROOT


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
    for cmd in ("phase", "check-mbpp", "test-gpu", "demo", "options"):
        out = subprocess.run([sys.executable, str(REPO_ROOT / "run.py"), cmd, "--help"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "--data-dir" in out.stdout


def _parse(*argv):
    import run

    parser = run.build_parser()
    args = parser.parse_args(list(argv))
    run._refuse_foreign_options(parser, args)
    return run._config_from_args(args)


def test_options_meaning_nothing_are_refused(tmp_path):
    out = run_cli("phase", "0", "--start", "0", "--end", "7", data_dir=tmp_path)
    assert out.returncode == 2
    assert "--start does not apply to phase 0" in _one_error_line(out.stderr)
    out = run_cli("phase", "3", "--sae-release", "other", data_dir=tmp_path)
    assert out.returncode == 2 and "--sae-release does not apply to phase 3" in out.stderr
    assert not (tmp_path / "phase0").exists()


def test_empty_and_out_of_range_values_are_one_line(tmp_path):
    for argv, expected in [
        (("phase", "1", "--layers", ""), "--layers: expected at least one value"),
        (("phase", "1", "--batch-size", "0"), "--batch-size: must be at least 1"),
        (("phase", "0.1", "--n-strata", "0"), "--n-strata: must be at least 1"),
        (("phase", "1", "--max-new-tokens", "0"), "--max-new-tokens: must be at least 1"),
        (("phase", "1", "--layers", "-1"), "--layers: must be at least 0"),
    ]:
        out = run_cli(*argv, data_dir=tmp_path)
        assert out.returncode == 2, argv
        assert expected in _one_error_line(out.stderr)


def test_global_options_before_or_after_the_subcommand(tmp_path):
    before = _parse("--data-dir", "/x", "--seed", "7", "phase", "0")
    after = _parse("phase", "0", "--data-dir", "/x", "--seed", "7")
    assert before == after
    assert before.data_dir == "/x" and before.seed == 7
    assert _parse("phase", "2", "--no-general-filter").general_filter is False
    assert _parse("phase", "1", "--layers", "0,2", "--timeout", "5").layers == [0, 2]
    env = {"PVA_MBPP_PATH": str(DEMO_PROBLEMS)}
    out = subprocess.run(
        [sys.executable, str(REPO_ROOT / "run.py"), "--data-dir", str(tmp_path), "phase", "0"],
        capture_output=True, text=True, timeout=120, env={**os.environ, **env}, stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 0, out.stderr
    assert list((tmp_path / "phase0").glob("difficulty_*.parquet"))


def test_environment_problems_are_one_line(tmp_path):
    """A file where the data directory should be, a directory as the MBPP file: one line each, no traceback."""
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    out = run_cli("phase", "0", "--mbpp-path", str(DEMO_PROBLEMS), data_dir=blocker)
    assert out.returncode == 2
    assert "Not a directory" in _one_error_line(out.stderr)
    out = run_cli("phase", "0", "--mbpp-path", str(tmp_path), data_dir=tmp_path / "d")
    assert out.returncode == 2
    assert "is a directory, not a file" in _one_error_line(out.stderr)


def test_artifact_missing_a_column_is_one_line_and_writes_nothing(tmp_path):
    import pandas as pd

    bad = tmp_path / "difficulty_20260101_000000_000000.parquet"
    pd.DataFrame({"task_id": [1, 2]}).to_parquet(bad)
    out = run_cli("phase", "0.1", "--mbpp-path", str(DEMO_PROBLEMS), "--input", str(bad), data_dir=tmp_path)
    assert out.returncode == 2
    line = _one_error_line(out.stderr)
    assert str(bad) in line and "missing cyclomatic_complexity" in line
    assert not list((tmp_path / "phase0_1").glob("*_mbpp.parquet"))
