"""``run.py demo``: the whole pipeline offline, on a tiny model trained here, in minutes.

Steps, each through the same code as the real run:
1. train a tokenizer and a small Gemma-2 on part of the bundled problems
   (``demo/problems.jsonl``; the rest stay unseen, so correctness follows from
   familiarity, docs/design.md section 6) and save it as an ordinary model folder;
2. train one small SAE per layer on its residual stream with SAE Lens and save
   them as a folder ``--sae-path`` takes;
3. run Phases 0, 0.1, 1, 1.2, 2 (sae and validation splits) and 3 on them,
   with a Phase 1 run on the same problems in HumanEval's format
   (``demo/humaneval_view.py``) so Phase 3 shows its transfer table.

The trained model and SAEs are cached under ``<data dir>/demo/<size>/`` and
reused unless ``--retrain``. Everything is seeded: two runs give the same
results.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from common.benchmarks.mbpp import load_mbpp
from common.config import PipelineConfig
from common.datadir import write_json
from common.errors import PipelineError
from common.phases import PHASES
from demo.humaneval_view import write_humaneval_view

logger = logging.getLogger(__name__)

DEMO_DIR = Path(__file__).resolve().parent
DEMO_PROBLEMS = DEMO_DIR / "problems.jsonl"
DEMO_GENERAL_TEXT = DEMO_DIR / "general_text.txt"

# Run settings per size: "demo" is what a user sees; "test" is the CI end-to-end test.
_RUN_SETTINGS: dict[str, dict[str, Any]] = {
    "demo": dict(max_new_tokens=96, batch_size=16, temperatures=[0.4, 0.8], samples_per_task=3,
                 coefficients=[-1.0, -0.5, 0.0, 0.5, 1.0], n_random_controls=3, permutations=2000, bootstrap=1000),
    "test": dict(max_new_tokens=64, batch_size=16, temperatures=[0.8], samples_per_task=2,
                 coefficients=[-1.0, 0.0, 1.0], n_random_controls=2, permutations=2000, bootstrap=200),
}


def demo_config(data_dir: str, size: str, model_dir: Path, sae_dir: Path, seed: int) -> PipelineConfig:
    """The pipeline config the demo runs every phase with (recorded in every phase's metadata)."""
    settings = _RUN_SETTINGS[size]
    return PipelineConfig(
        data_dir=data_dir, mbpp_path=str(DEMO_PROBLEMS), model=str(model_dir), sae_path=str(sae_dir),
        device="cpu", seed=seed, workers=2, general_corpus=str(DEMO_GENERAL_TEXT),
        general_corpus_samples=20, general_corpus_tokens=64, top_latents_validated=3, **settings,
    )


def _train_or_reuse(cache: Path, size: str, retrain: bool, seed: int) -> tuple[Path, Path, dict[str, Any]]:
    from demo.sae_training import REPORT_FILENAME as SAE_REPORT
    from demo.sae_training import DemoSAEConfig, demo_sae_texts, train_demo_saes
    from demo.training import REPORT_FILENAME as MODEL_REPORT
    from demo.training import DemoModelConfig, TrainingReport, train_demo_model

    problems = load_mbpp(DEMO_PROBLEMS)
    model_dir, sae_dir = cache / "model", cache / "saes"
    model_cfg = DemoModelConfig.for_size(size, seed=seed)
    if not retrain and (model_dir / MODEL_REPORT).is_file() and TrainingReport.load(model_dir).config != model_cfg.to_dict():
        # A model cached by an older version (e.g. trained on MBPP's format only) is not what this demo describes.
        print(f"demo: the cached model in {model_dir} was trained with other settings; training again")
        retrain = True
    if retrain:
        shutil.rmtree(cache, ignore_errors=True)
    if (model_dir / MODEL_REPORT).is_file():
        report = TrainingReport.load(model_dir)
        print(f"demo: reusing the trained model in {model_dir} (--retrain to train again)")
    else:
        print(f"demo: training the {size} model on the bundled problems ...")
        report = train_demo_model(problems, model_dir, model_cfg)
    if (sae_dir / SAE_REPORT).is_file():
        print(f"demo: reusing the trained SAEs in {sae_dir}")
    else:
        print("demo: training one SAE per layer with SAE Lens ...")
        n_layers = int(report.config["num_hidden_layers"])
        train_demo_saes(model_dir, demo_sae_texts(problems), list(range(n_layers)), sae_dir, DemoSAEConfig.for_size(size, seed=seed))
    summary = {
        "model_dir": str(model_dir),
        "sae_dir": str(sae_dir),
        "share_solved": report.share_solved,
        "share_solved_seen": report.share_solved_seen,
        "share_solved_unseen": report.share_solved_unseen,
        "n_seen": len(report.seen_task_ids),
        "n_unseen": len(report.unseen_task_ids),
        "train_seconds": report.train_seconds,
        # The same problems in HumanEval's format (NaN for a cached model trained on MBPP's format only).
        "share_solved_humaneval_seen": report.share_solved_humaneval_seen,
        "share_solved_humaneval_unseen": report.share_solved_humaneval_unseen,
        "n_solved_humaneval": sum(report.solved_humaneval.values()),
    }
    return model_dir, sae_dir, summary


def demo_steps(cfg: PipelineConfig, humaneval_view: Path) -> list[tuple[str, str, PipelineConfig]]:
    """(step name, phase key, config) of every phase in registry order: a phase with splits once per split,
    and after the last generating phase a Phase 1 run on the HumanEval view (Phase 3's transfer table reads it).
    """
    generating = [p.key for p in PHASES if p.generates]
    steps: list[tuple[str, str, PipelineConfig]] = []
    for spec in PHASES:
        if spec.splits:
            steps += [(f"{spec.key} ({split})", spec.key, dataclasses.replace(cfg, split=split)) for split in spec.splits]
        else:
            steps.append((spec.key, spec.key, cfg))
        if generating and spec.key == generating[-1]:
            first = generating[0]
            steps.append((f"{first} (humaneval)", first,
                          dataclasses.replace(cfg, dataset="humaneval", humaneval_path=str(humaneval_view))))
    return steps


def run_demo(data_dir: str, size: str = "demo", retrain: bool = False, seed: int = 42) -> dict[str, Any]:
    """Train (or reuse) the demo model and SAEs, then run every phase; return the output paths."""
    from common.phase_runner import run_phase

    if size not in _RUN_SETTINGS:
        raise PipelineError(f"unknown demo size {size!r}: use demo or test")
    t0 = time.perf_counter()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    cache = Path(data_dir) / "demo" / size
    model_dir, sae_dir, training = _train_or_reuse(cache, size, retrain, seed)
    cfg = demo_config(data_dir, size, model_dir, sae_dir, seed)
    # The second problem set: the bundled problems in HumanEval's format, for Phase 3's transfer table.
    view = write_humaneval_view(load_mbpp(DEMO_PROBLEMS), cache / "humaneval_view.jsonl.gz")
    timings: dict[str, float] = {"training": time.perf_counter() - t0}
    outputs: dict[str, str] = {}
    # Each phase through run.py's own entry (lock and log file included), never its run() directly.
    for name, key, phase_cfg in demo_steps(cfg, view):
        print(f"demo: phase {name} ...")
        t = time.perf_counter()
        outputs[name] = str(run_phase(key, phase_cfg))
        timings[f"phase {name}"] = round(time.perf_counter() - t, 1)
    timings["total"] = round(time.perf_counter() - t0, 1)
    report = {"size": size, "seed": seed, "training": training, "outputs": outputs, "timings_s": timings, "config": cfg.to_dict()}
    write_json(Path(data_dir) / "demo" / f"demo_report_{size}.json", report)
    return report


def run_demo_cli(cfg: PipelineConfig, retrain: bool = False, size: str = "demo") -> int:
    report = run_demo(cfg.data_dir, size=size, retrain=retrain, seed=cfg.seed)
    t = report["training"]
    print(
        f"demo model: {t['share_solved']:.0%} of the problems solved at temperature 0 "
        f"(seen {t['share_solved_seen']:.0%}, unseen {t['share_solved_unseen']:.0%}); "
        f"in HumanEval's format {t['n_solved_humaneval']} of {t['n_seen'] + t['n_unseen']} "
        f"(seen {t['share_solved_humaneval_seen']:.0%}, unseen {t['share_solved_humaneval_unseen']:.0%})"
    )
    summary = Path(report["outputs"]["3"])
    print(f"demo done in {report['timings_s']['total']:.0f} s")
    print(f"summary: {summary}")
    print(f"plots and tables: {summary.parent}")
    print(f"Phase 2 results: {report['outputs']['2 (sae)']}")
    return 0
