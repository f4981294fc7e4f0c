"""``run.py study --preset tiny`` end to end on the trained demo model (slow): every step, resume, the page.

Why the demo model and not SmolLM2: the real study takes hours on a CPU; this
runs the same chain of commands (corpora from the installed Python, Phases
0-3, ``train-saes``, HumanEval's Phase 1 on the problems in HumanEval's
format, the results page) in minutes, and checks that a rerun skips every
finished step and that the page's numbers equal the files'.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from common.benchmarks.mbpp import load_mbpp
from demo.humaneval_view import write_humaneval_view
from tests.helpers import DEMO_PROBLEMS, REPO_ROOT

N_PROBLEMS = 40


@pytest.mark.slow
def test_tiny_study_runs_every_step_resumes_and_writes_its_page(demo_trained_model, tmp_path):
    pytest.importorskip("sae_lens")
    problems = tmp_path / "problems.jsonl"
    problems.write_text("\n".join(DEMO_PROBLEMS.read_text().splitlines()[:N_PROBLEMS]) + "\n")
    view = write_humaneval_view(load_mbpp(str(problems)), tmp_path / "humaneval_view.jsonl.gz")
    data, page = tmp_path / "data", tmp_path / "results" / "tiny.md"
    cmd = [sys.executable, str(REPO_ROOT / "run.py"), "study", "--preset", "tiny", "--model", str(demo_trained_model.model_dir),
           "--data-dir", str(data), "--mbpp-path", str(problems), "--humaneval-path", str(view), "--report", str(page),
           "--device", "cpu"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=3000)
    logs = "".join(f"\n--- {p.name}\n" + p.read_text()[-2000:] for p in sorted(data.glob("study/run_*/logs/*.log")))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-2000:] + logs[-6000:]
    record = json.loads(next((data / "study").glob("run_*/study.json")).read_text())
    assert record["finished"] and record["failed_steps"] == [] and record["preset"] == "tiny"
    assert "--preset tiny" in record["command"]
    dataset = pd.read_parquet(next((data / "phase1_0").glob("dataset_*.parquet")))
    text = page.read_text()
    assert f"Pass rate, all tasks: {int(dataset['passed'].sum())}/{len(dataset)} = " in text
    meta = json.loads(next((data / "phase1_0").glob("dataset_*_metadata.json")).read_text())
    assert meta["peak_rss_mb"] > 0 and f"| phase 1 (MBPP) | {meta['wall_time_s']:.1f} | {meta['peak_rss_mb']:.1f} |" in text
    saes = json.loads(next((data / "study" / "saes").glob("*/sae_training_report.json")).read_text())["resources"]
    assert f"| train-saes | {saes['wall_time_s']:.1f} | {saes['peak_rss_mb']:.1f} |" in text
    assert "| code |" in text and "| text |" in text and "not measured (no Phase 3 output)" not in text
    assert (page.parent / "tiny" / "mbpp_generations.jsonl").is_file()

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    n_steps = len(record["steps"])
    assert again.stdout.count("[done earlier]") == n_steps and ": running" not in again.stdout
