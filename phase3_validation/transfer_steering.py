"""Steering transfer to HumanEval (does the effect hold on another benchmark?): MBPP's steering applied unchanged to HumanEval tasks.

The statistical half of the transfer (``transfer.py``) asks whether a latent
chosen on MBPP still *predicts* correctness on HumanEval; this half asks
whether adding its direction still *changes* correctness there. For the
rank-1 latent of each direction the HumanEval run reuses, unchanged:

- the alpha chosen on the MBPP hyperparams split (nothing is re-chosen: no
  HumanEval grid is run);
- the same unit vector (the SAE decoder row) at the same hook site;
- the same scale, the mean residual norm measured on the MBPP hyperparams
  split (HumanEval's own norm is not measured: it would be a HumanEval-side
  choice of the vector's length);
- the same control latents, at the same alpha and norm.

Rates are against HumanEval's own alpha = 0 rerun, generated with the same
batches as the steered runs (the rule MBPP follows); the HumanEval Phase 1.0
labels are shown beside. The HumanEval prompts are rebuilt from the HumanEval
file and must equal the ones the HumanEval Phase 1 run used. A HumanEval set
whose rerun has one class gives the rate that exists and a note for the
other; the predicted effect then counts the flips that could happen.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from common.benchmarks.humaneval import humaneval_tasks
from common.datadir import PHASE1_DATASET, recorded_prompt_format
from common.errors import PipelineError
from phase3_validation.inputs import SplitTasks
from phase3_validation.steering_eval import (
    DirectionSteering,
    SplitBaseline,
    SteeringContext,
    humaneval_split_jobs,
    measure_at_alpha,
    rates_with_baselines,
    record_outcomes,
    steered_generation,
    steering_row,
)
from phase3_validation.transfer import BENCHMARK, TransferSet

logger = logging.getLogger(__name__)

RULE = ("for each direction's rank-1 latent: the alpha chosen on the MBPP hyperparams split, the same unit vector, "
        "hook site and residual-norm scale (measured on MBPP hyperparams) and the same control latents, applied "
        "unchanged to HumanEval; rates against HumanEval's alpha = 0 rerun (same batches); nothing is chosen on HumanEval")
ALPHA_SOURCE = "chosen on the MBPP hyperparams split (not re-chosen on HumanEval)"
SCALE_SOURCE = ("mean L2 norm of the residual stream at the hook point, measured by a forward pass over the MBPP "
                "hyperparams split's prompts at their last token (the MBPP steering's scale; not re-measured on HumanEval)")
BASELINE = "HumanEval alpha = 0 rerun (same batches as the steered runs); HumanEval Phase 1.0 labels beside"
ROLE = "transfer"


def _problem_source(tset: TransferSet, humaneval_path: str | None) -> str | None:
    """``--humaneval-path`` if given, else the file the HumanEval Phase 1 run recorded; None means the hub."""
    if humaneval_path:
        return humaneval_path
    recorded = tset.meta.get("source")
    if isinstance(recorded, str) and recorded and not recorded.startswith("hub:"):
        return recorded
    return None


def load_transfer_split(tset: TransferSet, humaneval_path: str | None) -> tuple[SplitTasks, str | None]:
    """The HumanEval tasks of the Phase 1 run as a steering split, their prompts checked now (before any model loads).

    Why the problems are read again: the Phase 1 dataset keeps the prompt but
    not the ``test`` code and ``entry_point`` a steered program must run with.
    Returns the split and the file read (None: the hub).
    """
    source = _problem_source(tset, humaneval_path)
    problems = humaneval_tasks(source).set_index("task_id", drop=False)
    missing = [t for t in tset.task_ids if t not in problems.index]
    if missing:
        raise PipelineError(
            f"the HumanEval file {source or 'from the hub'} has no task {missing[0]} of the HumanEval Phase 1 run "
            f"{tset.dataset_path} ({len(missing)} missing): give the file that run used (--humaneval-path)"
        )
    table = PHASE1_DATASET.read_table(tset.dataset_path, needed=("task_id", "prompt", "generated_text",
                                                                   "extracted_code", "passed", "outcome"))
    table = table.assign(task_id=table["task_id"].astype(int)).set_index("task_id", drop=False)
    split = SplitTasks(
        name=BENCHMARK, table_path=tset.dataset_path,
        tasks=problems.loc[tset.task_ids].reset_index(drop=True),
        baseline=table.loc[tset.task_ids].reset_index(drop=True), benchmark=BENCHMARK,
        prompt_format=recorded_prompt_format(tset.meta),
    )
    humaneval_split_jobs(split)  # a prompt that differs from the Phase 1 run's is one line now, not after the model loads
    return split, source


def not_measured(note: str) -> dict[str, Any]:
    return {"measured": False, "note": note, "rule": RULE}


def _one_class_note(correct: np.ndarray) -> str | None:
    n, n_correct = int(correct.size), int(correct.sum())
    if n_correct == n:
        return (f"every HumanEval task passes in the alpha = 0 rerun ({n} of {n}): the correction rate is undefined, "
                "only corruption and preservation are measured")
    if n_correct == 0:
        return (f"no HumanEval task passes in the alpha = 0 rerun (0 of {n}): the corruption and preservation rates "
                "are undefined, only correction is measured")
    return None


def _alpha0_notes(split: SplitTasks, tset: TransferSet, ctx: SteeringContext, dtype: str) -> list[str]:
    """Known reasons, other than a bug, why HumanEval's alpha = 0 rerun could differ from its Phase 1.0 run."""
    gen = tset.meta.get("generation") or {}
    notes = []
    if gen.get("max_new_tokens") not in (None, ctx.gen_cfg.max_new_tokens):
        notes.append(f"steering used max_new_tokens {ctx.gen_cfg.max_new_tokens} (MBPP's), the HumanEval Phase 1 run "
                     f"used {gen['max_new_tokens']}: programs cut at different lengths differ for that reason alone")
    if tset.meta.get("dtype") and tset.meta["dtype"] != dtype:
        notes.append(f"the HumanEval Phase 1 run was in {tset.meta['dtype']}, this run in {dtype}")
    n_phase1 = (tset.meta.get("slice") or {}).get("n_tasks")
    if gen.get("batch_size") not in (None, ctx.gen_cfg.batch_size) or n_phase1 not in (None, len(split)):
        notes.append("batches hold other tasks than in the HumanEval Phase 1 run (different task set or batch size)")
    return notes


def _mbpp_beside(info: DirectionSteering) -> dict[str, Any]:
    """MBPP validation's numbers at the same alpha, for the table that sets the two side by side."""
    v, test = info.latent["validation"], info.latent["control_test"]
    keys = ("n_corrected", "n_initially_incorrect", "correction_rate", "correction_ci_lo", "correction_ci_hi",
            "n_corrupted", "n_initially_correct", "corruption_rate", "corruption_ci_lo", "corruption_ci_hi",
            "predicted_effect", "mcnemar_p")
    return {**{k: v[k] for k in keys}, "n_controls_beaten": test["n_beaten"], "n_controls": test["n_controls"],
            "p_vs_controls": test["p_vs_controls"]}


def steer_transfer(
    ctx: SteeringContext,
    split: SplitTasks | None,
    tset: TransferSet | None,
    steered: dict[str, DirectionSteering],
    zero_layer: int,
    dtype: str,
    absent_note: str,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """HumanEval's alpha = 0 rerun, then each direction's rank-1 latent and its controls at the MBPP alpha.

    Returns the ``transfer.steering`` section of the JSON and the rows for
    ``steering_<ts>.parquet`` (``split = "humaneval"``, roles ``transfer``,
    ``control_transfer`` and ``alpha0``).
    """
    if split is None or tset is None:
        return not_measured(absent_note), []
    rows: list[dict[str, Any]] = []
    first = next(iter(steered.values()))
    if first.latent_vector is None:
        raise PipelineError("internal: the MBPP steering kept no vectors to transfer")
    zero = torch.zeros_like(first.latent_vector.unit)
    base = SplitBaseline(split, steered_generation(ctx, split, zero_layer, zero, "alpha0"))
    record_outcomes(ctx, BENCHMARK, "none", "alpha0", 0.0, base.rerun, zero_layer, None, 0.0)
    note = _one_class_note(base.correct)
    if note:
        logger.warning("phase 3 HumanEval steering: %s", note)
    directions: dict[str, dict[str, Any]] = {}
    for direction, info in steered.items():
        if info.latent_vector is None:
            raise PipelineError(f"internal: the MBPP steering of the {direction}-preferring latent kept no vector")
        alpha = float(info.latent["chosen_alpha"])
        row, test, _ = measure_at_alpha(ctx, base, info.latent_vector, info.control_vectors, alpha, info.residual_norm,
                                        direction, ROLE, rows, require_both=False)
        directions[direction] = {
            "target": info.target.to_dict(), "hook_name": info.hook_name, "alpha": alpha, "alpha_source": ALPHA_SOURCE,
            "residual_norm": info.residual_norm, "scale_layer": info.scale_layer, "scale_source": SCALE_SOURCE,
            "control_latents": [c.latent for c in info.control_vectors],
            "humaneval": row, "control_test": test, "mbpp_validation": _mbpp_beside(info),
        }
        logger.info("HumanEval steering, %s-preferring %s at MBPP alpha %g: %d/%d corrected, %d/%d corrupted, "
                    "beats %d of %d controls", direction, info.target.name, alpha, row["n_corrected"],
                    row["n_initially_incorrect"], row["n_corrupted"], row["n_initially_correct"],
                    test["n_beaten"], test["n_controls"])
    zero_rates = rates_with_baselines(base.correct, split.correct, base.correct, "HumanEval, alpha 0", require_both=False)
    changes = base.versus_phase1()
    rows.append(steering_row("alpha0", "none", "zero", zero_layer, None, 0.0, BENCHMARK, zero_rates, changes, base.rerun,
                             base.correct))
    correct = base.correct
    section = {
        "measured": True, "note": note, "rule": RULE, "alpha_source": ALPHA_SOURCE, "scale_source": SCALE_SOURCE,
        "baseline": BASELINE, "max_new_tokens": ctx.gen_cfg.max_new_tokens, "batch_size": ctx.gen_cfg.batch_size,
        "sizes": {"n": int(correct.size), "n_correct_alpha0": int(correct.sum()),
                  "n_incorrect_alpha0": int((~correct).sum()),
                  "n_correct_phase1": int(split.correct.sum())},
        "alpha0_check": {**changes, "notes": _alpha0_notes(split, tset, ctx, dtype)},
        "directions": directions,
    }
    return section, rows

