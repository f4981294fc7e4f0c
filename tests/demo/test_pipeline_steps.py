"""The demo's phases come from the registry and run through run.py's entry: lock and log file included."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from common.datadir import exclusive
from common.errors import PipelineError
from demo.pipeline import DEMO_PROBLEMS, demo_config, demo_steps


def _cfg(tmp_path: Path):
    return demo_config(str(tmp_path / "data"), "test", tmp_path / "model", tmp_path / "saes", seed=3)


def test_steps_follow_the_registry_in_the_demo_order(tmp_path):
    steps = demo_steps(_cfg(tmp_path), tmp_path / "view.jsonl.gz")
    assert [(name, key) for name, key, _ in steps] == [
        ("0", "0"), ("0.1", "0.1"), ("1", "1"), ("1.2", "1.2"), ("1 (humaneval)", "1"),
        ("2 (sae)", "2"), ("2 (validation)", "2"), ("3", "3"),
    ]
    by_name = {name: cfg for name, _, cfg in steps}
    assert by_name["1 (humaneval)"].dataset == "humaneval"
    assert by_name["1 (humaneval)"].humaneval_path == str(tmp_path / "view.jsonl.gz")
    assert by_name["1"].dataset == "mbpp"
    assert (by_name["2 (sae)"].split, by_name["2 (validation)"].split) == ("sae", "validation")


def test_a_demo_phase_writes_its_log_and_respects_the_lock(tmp_path, caplog):
    """Phase 0 through the demo's entry: its output, and a log file beside it; a held lock refuses the run."""
    from common.phase_runner import run_phase

    caplog.set_level(logging.INFO)  # run.py's console set-up does this; the file log gets what the root passes
    cfg = _cfg(tmp_path)
    assert cfg.mbpp_path == str(DEMO_PROBLEMS)
    result = Path(str(run_phase("0", cfg)))
    folder = tmp_path / "data" / "phase0"
    assert result.parent == folder and result.is_file()
    logs = list((folder / "logs").glob("phase0_*.log"))
    assert len(logs) == 1 and "phase 0: log file" in logs[0].read_text()
    with exclusive(folder, "another run"), pytest.raises(PipelineError, match="phase 0 is already running"):
        run_phase("0", cfg)
    assert len(list((folder / "logs").glob("phase0_*.log"))) == 1  # the refused run wrote no log
