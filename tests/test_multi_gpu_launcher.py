"""The launcher with CPU workers: slices, per-worker logs, merge check, failure exit, resume."""

import subprocess
import sys

import pandas as pd

import phase0_difficulty
from common.config import PipelineConfig
from tests.paths import DEMO_PROBLEMS, REPO_ROOT


def _launch(data, model_dir, *extra):
    cmd = [
        sys.executable, str(REPO_ROOT / "multi_gpu_launcher.py"), "--phase", "1", "--start", "2", "--end", "6",
        "--model", str(model_dir), "--gpus", "2", "--data-dir", str(data), "--mbpp-path", str(DEMO_PROBLEMS),
        "--max-new-tokens", "8", "--batch-size", "3", "--workers", "1", *extra,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=400)


def test_two_cpu_workers_merge_and_resume(tmp_path, tiny_model_dir):
    data = tmp_path / "data"
    phase0_difficulty.run(PipelineConfig(data_dir=str(data), mbpp_path=str(DEMO_PROBLEMS)))
    out = _launch(data, tiny_model_dir)
    assert out.returncode == 0, out.stdout + out.stderr
    merged = sorted((data / "phase1_0").glob("dataset_*.parquet"))
    assert len(merged) == 1
    df = pd.read_parquet(merged[0])
    problems = sorted(int(l.split('"task_id": ')[1].split(",")[0]) for l in DEMO_PROBLEMS.read_text().splitlines())
    assert df["task_id"].tolist() == problems[2:7]
    logs = list((data / "phase1_0" / "logs").glob("launcher_*/worker_*.log"))
    assert len(logs) == 2
    # a rerun keeps the finished slices and merges again
    again = _launch(data, tiny_model_dir)
    assert again.returncode == 0 and again.stdout.count("done earlier (kept)") == 2


def test_failed_worker_exits_nonzero_and_names_it(tmp_path, tiny_model_dir):
    data = tmp_path / "data"
    phase0_difficulty.run(PipelineConfig(data_dir=str(data), mbpp_path=str(DEMO_PROBLEMS)))
    out = _launch(data, tiny_model_dir, "--layers", "0,9")  # layer 9 does not exist: each worker fails
    assert out.returncode != 0
    assert "worker 0" in out.stdout and "FAILED" in out.stdout
    assert not list((data / "phase1_0").glob("dataset_*.parquet"))
