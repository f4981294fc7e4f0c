"""Causal validation: steering along a latent's decoder direction (docs/design.md section 4, rules 6 and 8).

For the rank-1 latent of each direction:

1. the vector is its SAE decoder row (``W_dec[latent]``, unit norm) at its
   layer, times alpha x the mean L2 norm of the residual stream *at the hook
   point used* (resid_pre, resid_mid or resid_post of that layer), measured
   by a forward pass over the hyperparams split's prompts at their last
   token with a read hook on that very site (:func:`measure_site_norm`), so
   alpha is in units of a typical residual vector there at every site. For
   resid_pre and resid_post the norm of Phase 1.0's saved activations at the
   same site is recorded beside as a cross-check. Every control and the
   difference-of-means vector are unit vectors scaled the same way, so each
   has exactly the target's L2 norm at the hook point;
2. every rate is measured against the **alpha = 0 rerun of the same split**,
   made through the same code path with exactly the same batches as the
   steered runs (a zero vector is added), because greedy bf16 decoding is not
   batch-invariant: Phase 1.0 batched other neighbours and other padding, so
   comparing with its labels would count batching flips as steering. The
   comparison with Phase 1.0's labels is reported beside, as is the number of
   programs in which the rerun and Phase 1.0 differ, for both splits;
3. the hypothesis fixes the sign: adding a correct-preferring latent's
   direction should correct programs, adding an incorrect-preferring one
   should corrupt them, so only alpha > 0 is searched; alpha < 0 is a
   separate, labelled experiment on hyperparams (never chosen). Alpha is
   chosen on the hyperparams split (rule 6) by the predicted effect *in
   excess of the matched controls at the same alpha* (correction - corruption
   for a correct-preferring latent, the reverse otherwise), so damage that
   any direction does at large |alpha| does not count as the latent's effect;
4. on the validation split, at that alpha: correction, corruption and
   preservation rates with Clopper-Pearson intervals and the exact McNemar
   test against the alpha = 0 rerun;
5. controls (rule 8): random latents of the same layer whose separation score
   is near zero, steered at the same alpha and norm on the same tasks. Each
   task scores +1 if a run moved it the predicted way, -1 the other way, 0
   if unchanged; the target is compared with all controls at once by a
   within-task permutation test (``steering_stats``: the null is that target
   and controls are exchangeable on each task), and with each control by an
   exact sign test of (target - control) over the tasks where they differ.
   Each control's rate and how many the target beats are shown. Every run
   also reports how many of its generations are degenerate (no program, or
   one short unit repeated: ``steering_stats.DEGENERATE_RULE``) and its
   corruption rate without them, so a broken model is not read as wrong code;
6. the difference-of-class-means direction of the latent's layer (sae split,
   ``probes.py``) is steered the same way, with the same controls, as the
   simplest baseline an SAE latent must beat.

Generation reuses ``common.modeling.generation_loop.generate_and_execute`` (batched,
executed on CPU workers while the GPU generates, checkpointed): each steered
run has its own checkpoint folder under ``data/phase3/checkpoints/``, keyed by
everything that determines its output, so a rerun after a crash resumes.
A zero vector gives the same output at any layer, so every alpha = 0 run of a
split shares one folder and is generated once. Every run's per-task outcome
(label, outcome, degenerate flag, generated text) is kept for
``steering_outcomes_<ts>.parquet`` (:func:`outcome_rows`), from which every
steering p-value can be derived again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import transformers

from common.benchmarks import get_benchmark
from common.datadir import RecordCheckpointer
from common.errors import PipelineError
from common.modeling.generation import GenerationConfig, padding_capped_batches
from common.modeling.generation_loop import Job, generate_and_execute
from common.modeling.hooks import read_hook
from common.modeling.model_presets import apply_prompt_format
from common.modeling.steering import steer, transformer_lens_hook_name
from common.prompts import PROMPT_TEMPLATE_VERSION, build_prompt
from common.saes.loading import load_sae
from common.sandbox.executor import Executor
from common.statistics.stats import clopper_pearson, mcnemar_exact, paired_sign_test
from common.tasks import run_key
from phase3_validation.inputs import LatentRef, Phase2Results, Phase3Inputs, SplitTasks
from phase3_validation.steering_stats import degenerate_rates, degenerate_reason, permutation_test_vs_controls

logger = logging.getLogger(__name__)

HYPOTHESIS = {
    "correct": "adding the correct-preferring direction (alpha > 0) should correct programs",
    "incorrect": "adding the incorrect-preferring direction (alpha > 0) should corrupt programs",
}
SELECTION_RULE = (
    "among alpha > 0 (the sign the hypothesis predicts), the alpha maximising on the hyperparams split the "
    "predicted effect minus the mean predicted effect of the control latents at the same alpha (predicted effect: "
    "correction rate - corruption rate for a correct-preferring direction, the reverse for an incorrect-preferring "
    "one; rates against the alpha = 0 rerun); ties: smallest alpha"
)
OPPOSITE_RULE = ("alpha < 0 (against the hypothesis): the same grid, rates and controls on the hyperparams split, "
                 "reported as a separate experiment; never chosen, never run on validation")
CONTROL_RULE = (
    "latents of the target's layer with |separation_correct| <= {max_sep} in Phase 2's scores, the target "
    "excluded, as are latents Phase 2's general-text filter flagged (the target was chosen among unflagged ones); "
    "latents that fire on some sae-split task (f_correct + f_incorrect > 0) are preferred; "
    "drawn without replacement with numpy default_rng([seed, layer, latent])"
)
SCALE_SOURCE = {"resid_post": 0, "resid_pre": -1}  # hook point -> offset of the saved layer that holds its vectors
SCALE_RULE = ("alpha x the mean L2 norm of the residual stream at the hook point used, measured by a forward pass over "
              "the hyperparams split's prompts at their last token (a read hook on that very site); the target, every "
              "control and the difference-of-means vector are unit vectors scaled alike, so all have the same L2 norm "
              "there; for resid_pre/resid_post the norm of Phase 1.0's saved activations at that site is recorded beside")


# --------------------------------------------------------------------------- pure rate arithmetic


def transition_counts(baseline_correct: np.ndarray, steered_correct: np.ndarray) -> dict[str, int]:
    """Counts of the 2x2 table baseline x steered (both per task, True = passes)."""
    before = np.asarray(baseline_correct, dtype=bool)
    after = np.asarray(steered_correct, dtype=bool)
    if before.shape != after.shape or before.ndim != 1:
        raise PipelineError(f"baseline and steered labels must be aligned vectors, got {before.shape} and {after.shape}")
    return {
        "n_tasks": int(before.size),
        "n_initially_incorrect": int((~before).sum()),
        "n_corrected": int((~before & after).sum()),
        "n_initially_correct": int(before.sum()),
        "n_corrupted": int((before & ~after).sum()),
    }


def _rate(k: int, n: int) -> tuple[float, float, float]:
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    lo, hi = clopper_pearson(k, n)
    return k / n, lo, hi


def steering_rates(baseline_correct: np.ndarray, steered_correct: np.ndarray, what: str = "",
                   require_both: bool = True) -> dict[str, Any]:
    """Correction, corruption and preservation rates with exact intervals, and the paired McNemar p.

    Raises a PipelineError when a rate has no denominator and
    ``require_both``: a split with no initially-incorrect problems has no
    correction rate, one with no initially-correct problems no corruption
    rate. Without ``require_both`` (the Phase 1.0 comparison shown beside the
    primary one) such a rate is NaN.
    """
    counts = transition_counts(baseline_correct, steered_correct)
    where = f" ({what})" if what else ""
    if require_both and counts["n_initially_incorrect"] == 0:
        raise PipelineError(
            f"no initially-incorrect problems{where}: the correction rate is undefined "
            f"(all {counts['n_tasks']} baseline solutions pass)"
        )
    if require_both and counts["n_initially_correct"] == 0:
        raise PipelineError(
            f"no initially-correct problems{where}: the corruption rate is undefined "
            f"(none of {counts['n_tasks']} baseline solutions passes)"
        )
    correction, c_lo, c_hi = _rate(counts["n_corrected"], counts["n_initially_incorrect"])
    corruption, x_lo, x_hi = _rate(counts["n_corrupted"], counts["n_initially_correct"])
    return {
        **counts,
        "correction_rate": correction, "correction_ci_lo": c_lo, "correction_ci_hi": c_hi,
        "corruption_rate": corruption, "corruption_ci_lo": x_lo, "corruption_ci_hi": x_hi,
        "preservation_rate": 1.0 - corruption, "preservation_ci_lo": 1.0 - x_hi, "preservation_ci_hi": 1.0 - x_lo,
        "net_correction": correction - corruption,
        "mcnemar_p": mcnemar_exact(counts["n_corrected"], counts["n_corrupted"]),
    }


PHASE1_KEYS = ("n_initially_incorrect", "n_corrected", "n_initially_correct", "n_corrupted",
               "correction_rate", "corruption_rate", "mcnemar_p")


def rates_with_baselines(rerun_correct: np.ndarray, phase1_correct: np.ndarray, steered_correct: np.ndarray,
                         what: str = "", require_both: bool = True) -> dict[str, Any]:
    """Primary rates against the alpha = 0 rerun, and the same rates against Phase 1.0 as ``phase1_*`` beside them.

    Why both: the rerun has the steered runs' exact batches, so only steering
    differs; Phase 1.0 had other batches, so a task that batching alone flips
    would count as a correction or corruption there. ``require_both=False``
    (HumanEval transfer, whose set may hold one class): a rate without
    denominator is NaN instead of an error.
    """
    primary = steering_rates(rerun_correct, steered_correct, what, require_both)
    versus = steering_rates(phase1_correct, steered_correct, what, require_both=False)
    return {**primary, "baseline": "alpha = 0 rerun", **{f"phase1_{k}": versus[k] for k in PHASE1_KEYS}}


def predicted_effect(rates: dict[str, Any], direction: str, missing_as_zero: bool = False) -> float:
    """The effect a latent's direction predicts: more corrections (correct) or more corruptions (incorrect).

    ``missing_as_zero``: a rate with no denominator (no task of that initial
    class, so no flip of that kind could happen) adds nothing, so a one-class
    set is scored by the rate it has. Only the HumanEval transfer allows it;
    MBPP's splits must hold both classes.
    """
    correction, corruption = rates["correction_rate"], rates["corruption_rate"]
    if missing_as_zero:
        correction, corruption = float(np.nan_to_num(correction)), float(np.nan_to_num(corruption))
    if direction == "correct":
        return correction - corruption
    if direction == "incorrect":
        return corruption - correction
    raise PipelineError(f"direction must be 'correct' or 'incorrect', got {direction!r}")


def task_effects(baseline_correct: np.ndarray, steered_correct: np.ndarray, direction: str) -> np.ndarray:
    """Per task: +1 if steering moved it the way the direction predicts, -1 the other way, 0 unchanged.

    Correct-preferring: corrected +1, corrupted -1; incorrect-preferring: the
    reverse. Why per task: the paired tests compare target and control on the
    very same tasks, and both kinds of flip make up the predicted effect.
    """
    before = np.asarray(baseline_correct, dtype=bool)
    after = np.asarray(steered_correct, dtype=bool)
    if direction not in ("correct", "incorrect"):
        raise PipelineError(f"direction must be 'correct' or 'incorrect', got {direction!r}")
    effect = (~before & after).astype(np.int64) - (before & ~after).astype(np.int64)
    return effect if direction == "correct" else -effect


def control_comparison(baseline_correct: np.ndarray, target_correct: np.ndarray,
                       controls_correct: list[np.ndarray], direction: str, require_both: bool = True) -> dict[str, Any]:
    """The target against all controls and against each control, paired by task (see the module docstring).

    Per task, :func:`task_effects` of target and controls. Over all controls:
    the one-sided within-task permutation test
    (:func:`~phase3_validation.steering_stats.permutation_test_vs_controls`,
    null: the k + 1 runs are exchangeable on each task), whose p is
    ``p_vs_controls``, the p behind every "beats its controls". Per control,
    beside it: an exact sign test of target effect - control effect over the
    tasks where they differ (McNemar's test when only one kind of flip
    occurs). ``n_beaten`` counts the controls whose predicted effect (rate
    difference) is strictly below the target's; ``mean_control_effect`` is
    what the alpha choice subtracts. ``require_both=False`` scores a
    one-class baseline by the rate it has (:func:`predicted_effect` with
    ``missing_as_zero``).
    """
    if not controls_correct:
        raise PipelineError("no control runs to compare the steered latent with")
    lenient = not require_both
    target_rates = steering_rates(baseline_correct, target_correct, require_both=require_both)
    target_effect = predicted_effect(target_rates, direction, lenient)
    target_tasks = task_effects(baseline_correct, target_correct, direction)
    control_tasks = [task_effects(baseline_correct, c, direction) for c in controls_correct]
    per_control = []
    for control, tasks in zip(controls_correct, control_tasks):
        rates = steering_rates(baseline_correct, control, require_both=require_both)
        entry = {k: rates[k] for k in ("n_corrected", "n_initially_incorrect", "correction_rate",
                                       "n_corrupted", "n_initially_correct", "corruption_rate")}
        entry["predicted_effect"] = predicted_effect(rates, direction, lenient)
        test = paired_sign_test(target_tasks, [tasks])
        entry.update(tasks_target_ahead=test["n_target_above"], tasks_control_ahead=test["n_target_below"],
                     paired_p=test["p"])
        per_control.append(entry)
    permutation = permutation_test_vs_controls(target_tasks, control_tasks)
    out: dict[str, Any] = {
        "n_controls": len(controls_correct), "per_control": per_control,
        "target_effect": target_effect,
        "mean_control_effect": float(np.mean([c["predicted_effect"] for c in per_control])),
        "n_beaten": int(sum(target_effect > c["predicted_effect"] for c in per_control)),
        "permutation_test": permutation,
        "p_vs_controls": permutation["p"],
    }
    out["excess_effect"] = target_effect - out["mean_control_effect"]
    return out


def select_coefficient(grid: list[dict[str, Any]]) -> float:
    """The alpha of ``grid`` (rows with ``alpha`` and ``excess_effect``) by :data:`SELECTION_RULE`."""
    candidates = [row for row in grid if row["alpha"] > 0]
    if not candidates:
        raise PipelineError("the coefficient grid has no alpha > 0, the sign the hypothesis predicts (--coefficients)")
    best = max(row["excess_effect"] for row in candidates)
    tied = [row["alpha"] for row in candidates if row["excess_effect"] >= best - 1e-12]
    return float(min(tied))


def saved_layer_for(layer: int, hook_point: str, saved_layers: list[int]) -> int | None:
    """The saved layer whose vectors are the residual stream at ``blocks.{layer}.hook_{hook_point}``, if any.

    ``resid_post`` of layer L is what Phase 1.0 saved as layer L; ``resid_pre``
    of layer L is the output of layer L - 1. ``resid_mid`` is never saved, nor
    is a layer Phase 1.0 skipped: None. Only a cross-check of the measured
    norm (:func:`measure_site_norm`) uses it.
    """
    if hook_point not in SCALE_SOURCE:
        return None
    source = layer + SCALE_SOURCE[hook_point]
    return source if source in saved_layers else None


def measure_site_norm(model: torch.nn.Module, tokenizer: Any, prompts: list[str], layer: int, hook_point: str,
                      batch_size: int) -> float:
    """Mean L2 norm of ``blocks.{layer}.hook_{hook_point}`` at the last prompt token over ``prompts``: alpha's unit.

    Why a forward pass: the norm must be measured where the vector is added,
    and resid_mid is never saved. The prompts are tokenized as generation
    tokenizes them (left padding, so the last column is every prompt's last
    token; position ids from the attention mask, as ``generate`` makes them),
    and a read hook (``common.modeling.hooks.read_hook``) sees exactly the tensor the
    steering hook adds to.
    """
    if not prompts:
        raise PipelineError("no prompts to measure the residual-stream norm on")
    if getattr(tokenizer, "padding_side", "left") != "left":
        raise PipelineError("measuring the residual norm needs a left-padding tokenizer (tokenizer.padding_side = 'left')")
    device = next(model.parameters()).device
    # The decoder alone: the hooked layer is inside it, and no (batch, seq, vocab) logits are computed.
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    seen: list[torch.Tensor] = []
    norms: list[np.ndarray] = []
    handle = read_hook(model, layer, lambda hidden: seen.append(hidden[:, -1, :].detach().to(torch.float32).cpu()),
                       hook_point)
    try:
        with torch.no_grad():
            lengths = [len(ids) for ids in tokenizer(prompts)["input_ids"]]
            for members in padding_capped_batches(lengths, batch_size):
                enc = tokenizer([prompts[i] for i in members], return_tensors="pt", padding=True).to(device)
                mask = enc["attention_mask"]
                seen.clear()
                decoder(input_ids=enc["input_ids"], attention_mask=mask,
                        position_ids=(mask.long().cumsum(-1) - 1).clamp(min=0), use_cache=False)
                norms.append(seen[0].double().norm(dim=1).numpy())
    finally:
        handle.remove()
    values = np.concatenate(norms)
    if not np.isfinite(values).all() or values.mean() == 0:
        raise PipelineError(f"the residual norm at {transformer_lens_hook_name(layer, hook_point)} is zero or not finite")
    return float(values.mean())


def choose_control_latents(
    scores: dict[str, np.ndarray], layer: int, exclude: int, n: int, max_separation: float, seed: int,
    d_sae: int | None = None,
) -> tuple[list[int], dict[str, Any]]:
    """``n`` random latents of ``layer`` with |separation_correct| <= ``max_separation`` (see :data:`CONTROL_RULE`)."""
    if n < 1:
        raise PipelineError(f"n_random_controls must be >= 1 (rule 8 needs controls), got {n}")
    if "separation_correct" not in scores:
        raise PipelineError(f"Phase 2 scores of layer {layer} lack separation_correct")
    separation = np.asarray(scores["separation_correct"], dtype=np.float64)
    if d_sae is not None and separation.size != d_sae:
        raise PipelineError(f"Phase 2 scores of layer {layer} cover {separation.size} latents, its SAE has {d_sae}")
    fires = np.zeros_like(separation, dtype=bool)
    if "f_correct" in scores and "f_incorrect" in scores:
        fires = (np.asarray(scores["f_correct"]) + np.asarray(scores["f_incorrect"])) > 0
    eligible = np.abs(separation) <= max_separation
    if "general_flagged" in scores:
        eligible &= ~np.asarray(scores["general_flagged"], dtype=bool)
    eligible[exclude] = False
    firing = np.flatnonzero(eligible & fires)
    silent = np.flatnonzero(eligible & ~fires)
    if firing.size + silent.size < n:
        raise PipelineError(
            f"only {firing.size + silent.size} latents of layer {layer} have |separation| <= {max_separation}; "
            f"{n} controls were asked for (lower --n-random-controls or raise control_max_separation)"
        )
    rng = np.random.default_rng([seed, layer, exclude])
    chosen = list(rng.choice(firing, size=min(n, firing.size), replace=False)) if firing.size else []
    if len(chosen) < n:
        chosen += list(rng.choice(silent, size=n - len(chosen), replace=False))
        logger.warning("layer %d: only %d firing near-zero latents; %d silent ones used as controls",
                       layer, firing.size, n - firing.size)
    chosen = [int(c) for c in chosen]
    info = {
        "rule": CONTROL_RULE.format(max_sep=max_separation),
        "n_eligible_firing": int(firing.size), "n_eligible_silent": int(silent.size),
        "latents": chosen,
        "separation_correct": [float(separation[c]) for c in chosen],
        "fires": [bool(fires[c]) for c in chosen],
    }
    return chosen, info


def unit_direction(w_dec_row: torch.Tensor | np.ndarray) -> torch.Tensor:
    """The decoder row as a float32 unit vector (GemmaScope rows are near unit norm; this makes it exact)."""
    row = torch.as_tensor(w_dec_row, dtype=torch.float32).detach().cpu().flatten()
    norm = float(row.norm())
    if not np.isfinite(norm) or norm == 0.0:
        raise PipelineError("an SAE decoder row has zero or non-finite norm: no steering direction")
    return row / norm


def mean_residual_norm(activations: np.ndarray) -> float:
    """Mean L2 norm of residual vectors (rows), in float64: the unit of alpha."""
    norms = np.linalg.norm(np.asarray(activations, dtype=np.float64), axis=1)
    if norms.size == 0 or not np.isfinite(norms).all() or norms.mean() == 0:
        raise PipelineError("cannot measure the residual-stream norm: no finite, nonzero activations")
    return float(norms.mean())


# --------------------------------------------------------------------------- steered generation


@dataclass
class SteeringContext:
    """What every steered run shares: the model, the executor, generation settings, checkpoint root."""

    model: transformers.PreTrainedModel
    tokenizer: transformers.PreTrainedTokenizerBase
    executor: Executor
    gen_cfg: GenerationConfig
    hook_point: str
    positions: str
    model_id: str
    checkpoint_root: Path
    checkpoint_every: int = 50
    autosave_every: int = 100
    autosave_keep: int = 3
    folders: set[Path] = field(default_factory=set)
    # Runs already made in this process, by checkpoint folder: a control at an alpha shared by several
    # experiments (latent, diff of means) is generated once.
    runs: dict[Path, SteeredRun] = field(default_factory=dict)
    # Per-task outcomes of every run, by (split, direction, run, alpha): steering_outcomes_<ts>.parquet.
    outcomes: dict[tuple[str, str, str, float], pd.DataFrame] = field(default_factory=dict)
    # The measured residual norm at the hook point, by layer (both directions may share a layer).
    site_norms: dict[int, float] = field(default_factory=dict)


@dataclass
class SteeredRun:
    """One split generated under one steering vector, aligned with the split's task order."""

    label: str
    records: pd.DataFrame
    n_resumed: int
    checkpoint: Path
    # Model time of the run's sequences (the sum of their amortised ``gen_time_s``): those generated in this
    # process, and those read back from the checkpoint of an earlier one.
    generation_s: float = 0.0
    generation_s_read_back: float = 0.0

    @property
    def correct(self) -> np.ndarray:
        return self.records["passed"].to_numpy(dtype=bool)

    @property
    def degenerate_reasons(self) -> list[str | None]:
        """Per task, why its generation is degenerate (``steering_stats.DEGENERATE_RULE``), or None."""
        texts = self.records["generated_text"].fillna("").astype(str)
        codes = self.records["extracted_code"].fillna("").astype(str)
        return [degenerate_reason(t, c) for t, c in zip(texts, codes)]

    @property
    def degenerate(self) -> np.ndarray:
        return np.array([r is not None for r in self.degenerate_reasons], dtype=bool)


OUTCOME_COLUMNS = ("split", "direction", "run", "alpha", "task_id", "passed", "outcome", "degenerate",
                   "degenerate_reason", "generated_text", "extracted_code", "layer", "latent", "vector_norm")


def outcome_rows(split: str, direction: str, run_name: str, alpha: float, run: SteeredRun, layer: int,
                 latent: int | None, vector_norm: float) -> pd.DataFrame:
    """One row per task of ``run``: the per-task record ``steering_outcomes_<ts>.parquet`` keeps.

    ``run_name``: ``alpha0``, ``target``, ``control_<i>`` (i-th control, in
    the order of ``control_selection.latents``), ``diffmeans`` or ``prompting``.
    """
    records = run.records
    reasons = run.degenerate_reasons
    return pd.DataFrame({
        "split": split, "direction": direction, "run": run_name, "alpha": float(alpha),
        "task_id": records["task_id"].astype(int).to_numpy(),
        "passed": records["passed"].to_numpy(dtype=bool), "outcome": records["outcome"].astype(str).to_numpy(),
        "degenerate": [r is not None for r in reasons], "degenerate_reason": reasons,
        "generated_text": records["generated_text"].fillna("").astype(str).to_numpy(),
        "extracted_code": records["extracted_code"].fillna("").astype(str).to_numpy(),
        "layer": int(layer), "latent": latent, "vector_norm": float(vector_norm),
    }, columns=list(OUTCOME_COLUMNS))


def record_outcomes(ctx: SteeringContext, split: str, direction: str, run_name: str, alpha: float, run: SteeredRun,
                    layer: int, latent: int | None, vector_norm: float) -> None:
    """Keep ``run``'s per-task outcomes once (a control shared by two experiments at one alpha is one run)."""
    key = (split, direction, run_name, float(alpha))
    if key not in ctx.outcomes:
        ctx.outcomes[key] = outcome_rows(split, direction, run_name, alpha, run, layer, latent, vector_norm)


def outcomes_table(ctx: SteeringContext) -> pd.DataFrame:
    """Every kept run's per-task outcomes, in the order they were run."""
    if not ctx.outcomes:
        return pd.DataFrame(columns=list(OUTCOME_COLUMNS))
    return pd.concat(list(ctx.outcomes.values()), ignore_index=True)


def split_jobs(split: SplitTasks, tokenizer: Any) -> list[Job]:
    """One job per task, with the prompt Phase 1 used (checked: a changed template would void the comparison).

    The prompt is built in Phase 1.0's recorded format (``split.prompt_format``;
    chat goes through ``tokenizer``'s chat template), never in a format of
    Phase 3's own.
    """
    jobs = []
    for row, base in zip(split.tasks.itertuples(), split.baseline.itertuples()):
        prompt = apply_prompt_format(tokenizer, build_prompt(row.text, list(row.test_list)), split.prompt_format)
        if prompt != base.prompt:
            raise PipelineError(
                f"task {int(row.task_id)}: the prompt built now ({PROMPT_TEMPLATE_VERSION}, {split.prompt_format} format) differs from the one "
                "Phase 1.0 used; rerun Phase 1 with this code so steered and baseline programs are comparable"
            )
        jobs.append(Job(
            key=str(int(row.task_id)), task_id=int(row.task_id), prompt=prompt,
            test_setup_code=row.test_setup_code, tests=list(row.test_list),
        ))
    return jobs


def humaneval_split_jobs(split: SplitTasks, tokenizer: Any = None) -> list[Job]:
    """A benchmark's own jobs (HumanEval's: ``Benchmark.job``), each prompt checked against its Phase 1 run's.

    In the run's recorded format (``split.prompt_format``); the instruction
    (chat) format needs the tokenizer, so without one its prompts are checked
    later, when the model's tokenizer builds them.

    Why a separate builder: HumanEval's prompt is the release's own text and
    its test is one ``check(entry_point)`` call, not MBPP's template and
    asserts; the check is the same as :func:`split_jobs`' (a different prompt
    would compare steered programs with a baseline made from another prompt).
    """
    jobs = []
    if split.prompt_format == "chat" and tokenizer is None:
        return []
    bench = get_benchmark(split.benchmark)
    for problem, base in zip(split.tasks.to_dict("records"), split.baseline.itertuples()):
        job = bench.job(problem, split.prompt_format, tokenizer)
        if job.prompt != base.prompt:
            raise PipelineError(
                f"{bench.label} task {int(problem['task_id'])} ({problem.get('name', '?')}): the prompt of the {bench.label} file "
                f"given differs from the one the {bench.label} Phase 1 run used; give the same file ({bench.path_flag}) "
                f"or rerun `python3 run.py phase 1 --dataset {bench.name}`"
            )
        jobs.append(job)
    return jobs


def _split_jobs_and_prompt(split: SplitTasks, tokenizer: Any) -> tuple[list[Job], dict[str, Any]]:
    """The split's jobs and what identifies their prompts and tests in the checkpoint key."""
    bench = get_benchmark(split.benchmark)
    if not bench.has_splits:  # its tasks are read from the file given to Phase 3, not from a Phase 0.1 split
        jobs = humaneval_split_jobs(split, tokenizer)
        # The tests decide the labels: a different HumanEval file must not resume another file's runs.
        blob = "\0".join(f"{j.key}\0{j.prompt}\0{j.test_setup_code}\0{j.tests}" for j in jobs)
        return jobs, {"prompt": bench.prompt_version(split.prompt_format),
                      "jobs": hashlib.sha256(blob.encode()).hexdigest()[:16]}
    return split_jobs(split, tokenizer), {"prompt": bench.prompt_version(split.prompt_format)}


def _vector_digest(vector: torch.Tensor) -> str:
    return hashlib.sha256(vector.detach().to(torch.float32).cpu().numpy().tobytes()).hexdigest()[:16]


def steered_generation(
    ctx: SteeringContext, split: SplitTasks, layer: int, vector: torch.Tensor, label: str
) -> SteeredRun:
    """Greedy generation of every task of ``split`` with ``vector`` added at ``layer``; executed; resumable.

    The checkpoint folder is keyed by what determines the output (model,
    split tasks, generation settings, hook site, position policy, and the
    vector's bytes); a zero vector drops the site from the key, as it changes
    nothing wherever it is added.
    """
    jobs, prompt_identity = _split_jobs_and_prompt(split, ctx.tokenizer)
    is_zero = not bool(torch.any(vector != 0))
    identity: dict[str, Any] = {
        "model": ctx.model_id, "split": split.name, "tasks": split.task_ids,
        "max_new_tokens": ctx.gen_cfg.max_new_tokens, "batch_size": ctx.gen_cfg.batch_size,
        **prompt_identity, "seed": ctx.gen_cfg.seed,
    }
    if split.prompt_format != "plain":  # only then: plain runs keep the checkpoint keys they had before formats
        identity["prompt_format"] = split.prompt_format
    if is_zero:
        identity["vector"] = "zero"
        folder_name = f"{split.name}_alpha0_{run_key(identity)}"
    else:
        identity.update(layer=layer, hook_point=ctx.hook_point, positions=ctx.positions, vector=_vector_digest(vector))
        folder_name = f"{split.name}_{label}_{run_key(identity)}"
    folder = ctx.checkpoint_root / folder_name
    if folder in ctx.runs:
        return ctx.runs[folder]
    checkpointer = RecordCheckpointer(folder, ctx.checkpoint_every, ctx.autosave_every, ctx.autosave_keep)
    resumed = {r["key"] for r in checkpointer.load()}
    ctx.folders.add(folder)
    desc = f"phase 3 {split.name} {label}"
    # The benchmark's own stop sequences (HumanEval's judge cuts the completion there).
    gen_cfg = dataclasses.replace(ctx.gen_cfg, stop_sequences=get_benchmark(split.benchmark).stop_sequences(split.prompt_format))
    with steer(ctx.model, layer, vector, ctx.hook_point, ctx.positions):
        records = generate_and_execute(
            ctx.model, ctx.tokenizer, jobs, gen_cfg, [], ctx.executor, checkpointer, desc=desc
        )
    return finished_run(ctx, label, records, resumed, folder, split.task_ids)


def finished_run(ctx: SteeringContext, label: str, records: list[dict[str, Any]], resumed: set[str], folder: Path,
                 task_ids: list[int]) -> SteeredRun:
    """The run's records in the split's task order, with what it cost; kept in ``ctx.runs`` under its folder.

    ``resumed``: the record keys its checkpoint held before this process
    generated anything. Their model time was spent by an earlier process,
    so a resumed Phase 3 can report what its generations cost in all.
    """
    table = pd.DataFrame(records)
    table["task_id"] = table["task_id"].astype(int)
    table = table.set_index("task_id").loc[task_ids].reset_index()
    read_back = table["key"].isin(resumed).to_numpy()
    seconds = table["gen_time_s"].astype(float).to_numpy()
    ctx.runs[folder] = SteeredRun(
        label=label, records=table, n_resumed=len(resumed), checkpoint=folder,
        generation_s=float(seconds[~read_back].sum()), generation_s_read_back=float(seconds[read_back].sum()),
    )
    return ctx.runs[folder]


def generation_cost(ctx: SteeringContext) -> dict[str, Any]:
    """Model time of every run this process made or read back: what Phase 3's generation cost across processes.

    Why: a Phase 3 stopped and rerun times only its last process in
    ``wall_time_s``; the records' amortised generation times are kept in the
    checkpoints, so the earlier processes' model time is still known.
    Test execution, loading and statistics of earlier processes are not.
    """
    runs = list(ctx.runs.values())
    return {
        "runs": len(runs),
        "sequences": sum(len(r.records) for r in runs),
        "sequences_read_back": sum(r.n_resumed for r in runs),
        "model_seconds_this_process": round(sum(r.generation_s for r in runs), 1),
        "model_seconds_read_back": round(sum(r.generation_s_read_back for r in runs), 1),
        "measure": "the sum of the runs' records' amortised generation time (gen_time_s); test execution not counted",
    }


def program_changes(before: pd.DataFrame, task_ids: list[int], run: SteeredRun) -> dict[str, Any]:
    """How the run's programs and labels differ from ``before`` (rows aligned with ``task_ids``), task by task."""
    before_code = before["extracted_code"].fillna("").to_numpy()
    after_code = run.records["extracted_code"].fillna("").to_numpy()
    code_changed = before_code != after_code
    text_changed = before["generated_text"].fillna("").to_numpy() != run.records["generated_text"].fillna("").to_numpy()
    label_flip = before["passed"].to_numpy(dtype=bool) != run.correct
    return {
        "n_programs_changed": int(code_changed.sum()),
        "n_generations_changed": int(text_changed.sum()),
        "n_label_flips": int(label_flip.sum()),
        "n_label_flips_same_program": int((label_flip & ~code_changed).sum()),
        "changed_task_ids": [int(t) for t in np.asarray(task_ids)[code_changed | label_flip]],
    }


# --------------------------------------------------------------------------- experiments


@dataclass
class SplitBaseline:
    """One split's alpha = 0 rerun (the primary baseline) and how it differs from Phase 1.0."""

    split: SplitTasks
    rerun: SteeredRun

    @property
    def correct(self) -> np.ndarray:
        return self.rerun.correct

    def versus_phase1(self) -> dict[str, Any]:
        return {**program_changes(self.split.baseline, self.split.task_ids, self.rerun), "n_tasks": len(self.split)}


def steering_row(role: str, direction: str, vector: str, layer: int, latent: int | None, alpha: float,
                 split: str, rates: dict[str, Any], changes: dict[str, Any], run: SteeredRun,
                 baseline_correct: np.ndarray) -> dict[str, Any]:
    """One row of ``steering_<ts>.parquet``: which run, its rates and program changes.

    ``role``: ``grid`` (hyperparams, alpha > 0), ``validation`` (chosen alpha),
    ``opposite`` (hyperparams, alpha < 0), ``transfer`` (HumanEval, the MBPP
    alpha), ``control_<that>`` for the control latents of each, ``alpha0``
    for the reruns; ``vector``: ``sae_latent``,
    ``diff_means`` or ``zero``. ``changed_task_ids`` (programs or labels that
    differ from the alpha = 0 rerun) is kept; the degenerate-output counts
    and the corruption rate without degenerate outputs
    (``steering_stats.degenerate_rates``) are beside the rates.
    """
    return {
        "direction": direction, "role": role, "vector": vector, "layer": layer, "latent": latent,
        "alpha": float(alpha), "split": split,
        **rates, **changes,
        **degenerate_rates(baseline_correct, run.correct, run.degenerate),
        "n_resumed": run.n_resumed,
    }


@dataclass
class Steerable:
    """A direction to steer along: its unit vector, layer and the label of its runs."""

    vector: str  # "sae_latent" or "diff_means"
    layer: int
    latent: int | None
    unit: torch.Tensor

    @property
    def label(self) -> str:
        return f"L{self.layer}_{self.latent}" if self.vector == "sae_latent" else f"L{self.layer}_diffmeans"


def measure_at_alpha(ctx: SteeringContext, base: SplitBaseline, target: Steerable, controls: list[Steerable],
                     alpha: float, scale: float, direction: str, role: str, rows: list[dict[str, Any]],
                     require_both: bool = True) -> tuple[dict[str, Any], dict[str, Any], SteeredRun]:
    """Target and every control at one alpha on one split: (target row, control comparison, target run).

    Every vector is its unit direction x alpha x ``scale``, so target and
    controls have the same L2 norm (recorded as ``vector_norm``). Each run's
    per-task outcomes are kept (:func:`record_outcomes`).
    ``require_both=False`` (HumanEval transfer): a baseline with one class
    gives the rate that exists and NaN for the other instead of an error.
    """
    split = base.split
    vector = alpha * scale * target.unit
    run = steered_generation(ctx, split, target.layer, vector, f"{direction}_{target.label}_a{alpha:g}")
    norm = float(vector.norm())
    record_outcomes(ctx, split.name, direction, "target" if target.vector == "sae_latent" else "diffmeans", alpha, run,
                    target.layer, target.latent, norm)
    what = f"{split.name} split, {target.label}, alpha {alpha:g}"
    rates = rates_with_baselines(base.correct, split.correct, run.correct, what, require_both)
    row = steering_row(role, direction, target.vector, target.layer, target.latent, alpha, split.name, rates,
                       program_changes(base.rerun.records, split.task_ids, run), run, base.correct)
    row["vector_norm"] = norm
    control_runs, control_rows = [], []
    for i, control in enumerate(controls):
        c_vector = alpha * scale * control.unit
        c_run = steered_generation(ctx, split, control.layer, c_vector, f"control_{control.label}_a{alpha:g}")
        record_outcomes(ctx, split.name, direction, f"control_{i}", alpha, c_run, control.layer, control.latent,
                        float(c_vector.norm()))
        control_runs.append(c_run)
        c_rates = rates_with_baselines(base.correct, split.correct, c_run.correct, f"{split.name}, control {control.label}",
                                       require_both)
        c_row = steering_row(f"control_{role}", direction, "sae_latent", control.layer, control.latent, alpha,
                             split.name, c_rates, program_changes(base.rerun.records, split.task_ids, c_run), c_run,
                             base.correct)
        c_row["predicted_effect"] = predicted_effect(c_rates, direction, not require_both)
        c_row["experiment"] = target.vector  # whose controls (the same runs serve both experiments at one alpha)
        c_row["vector_norm"] = float(c_vector.norm())
        control_rows.append(c_row)
        rows.append(c_row)
    test = control_comparison(base.correct, run.correct, [c.correct for c in control_runs], direction, require_both)
    for entry, c_row in zip(test["per_control"], control_rows):
        entry.update({k: c_row[k] for k in DEGENERATE_KEYS})
    row.update(predicted_effect=test["target_effect"], mean_control_effect=test["mean_control_effect"],
               excess_effect=test["excess_effect"], n_controls_beaten=test["n_beaten"],
               n_controls=test["n_controls"], p_vs_controls=test["p_vs_controls"],
               p_vs_controls_method=test["permutation_test"]["method"],
               p_vs_controls_mc_se=test["permutation_test"]["mc_se"], experiment=target.vector)
    rows.append(row)
    return row, test, run


DEGENERATE_KEYS = ("n_degenerate", "degenerate_rate", "n_corrupted_nondegenerate", "n_initially_correct_nondegenerate",
                   "corruption_rate_nondegenerate")


def hypothesis_experiment(ctx: SteeringContext, inputs: Phase3Inputs, bases: dict[str, SplitBaseline],
                          target: Steerable, controls: list[Steerable], coefficients: list[float], scale: float,
                          direction: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Grid over alpha > 0 on hyperparams, choice by excess over controls, then validation at that alpha."""
    grid = [measure_at_alpha(ctx, bases["hyperparams"], target, controls, a, scale, direction,
                             "grid", rows)[0]
            for a in sorted(a for a in coefficients if a > 0)]
    alpha = select_coefficient(grid)
    logger.info("%s-preferring %s: alpha %g chosen on hyperparams (excess over controls: %s)", direction, target.label,
                alpha, ", ".join(f"{r['alpha']:g}: {r['excess_effect']:+.3f}" for r in grid))
    row, test, run = measure_at_alpha(ctx, bases["validation"], target, controls, alpha, scale, direction,
                                      "validation", rows)
    return {"vector": target.vector, "layer": target.layer, "latent": target.latent, "grid_hyperparams": grid,
            "chosen_alpha": alpha, "validation": row, "control_test": test, "run": run}


def opposite_sign_experiment(ctx: SteeringContext, bases: dict[str, SplitBaseline], target: Steerable,
                             controls: list[Steerable], coefficients: list[float], scale: float, direction: str,
                             rows: list[dict[str, Any]]) -> dict[str, Any]:
    """alpha < 0 on hyperparams only, against the same controls: reported, never chosen (:data:`OPPOSITE_RULE`)."""
    grid = [measure_at_alpha(ctx, bases["hyperparams"], target, controls, a, scale, direction,
                             "opposite", rows)[0]
            for a in sorted((a for a in coefficients if a < 0), reverse=True)]
    return {"rule": OPPOSITE_RULE, "grid_hyperparams": grid}


def flipped_examples(base: SplitBaseline, run: SteeredRun, limit: int = 3) -> dict[str, list[dict[str, Any]]]:
    """A few tasks that flipped each way under steering, with the alpha = 0 rerun's program and the steered one."""
    out: dict[str, list[dict[str, Any]]] = {"corrected": [], "corrupted": []}
    split = base.split
    before, after = base.correct, run.correct
    for i, task_id in enumerate(split.task_ids):
        kind = "corrected" if (not before[i] and after[i]) else "corrupted" if (before[i] and not after[i]) else None
        if kind is None or len(out[kind]) >= limit:
            continue
        out[kind].append({
            "task_id": task_id,
            "text": str(split.tasks.iloc[i]["text"]),
            "before_code": str(base.rerun.records.iloc[i]["extracted_code"] or ""),
            "before_outcome": str(base.rerun.records.iloc[i]["outcome"]),
            "after_code": str(run.records.iloc[i]["extracted_code"] or ""),
            "after_outcome": str(run.records.iloc[i]["outcome"]),
        })
    return out


@dataclass
class DirectionSteering:
    """Everything measured for one direction: the SAE latent, its opposite sign, the diff-of-means baseline."""

    target: LatentRef
    hook_name: str
    residual_norm: float  # measured by a forward pass at the hook point (measure_site_norm): alpha's unit
    scale_layer: int | None  # the saved layer holding the same site (None: resid_mid, or not saved)
    saved_layer_norm: float | None  # that layer's mean norm from Phase 1.0's saved activations: a cross-check
    latent: dict[str, Any]
    opposite: dict[str, Any]
    diff_means: dict[str, Any] | None
    diff_means_note: str | None
    control_info: dict[str, Any]
    flipped: dict[str, list[dict[str, Any]]]
    # The very vectors steered (unit directions), so the HumanEval transfer reuses them unchanged.
    latent_vector: Steerable | None = None
    control_vectors: list[Steerable] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        def strip(exp: dict[str, Any] | None) -> dict[str, Any] | None:
            return None if exp is None else {k: v for k, v in exp.items() if k != "run"}

        return {
            "target": self.target.to_dict(), "hypothesis": HYPOTHESIS[self.target.direction],
            "hook_name": self.hook_name, "residual_norm": self.residual_norm, "scale_layer": self.scale_layer,
            "saved_layer_norm": self.saved_layer_norm, "scale_rule": SCALE_RULE,
            "selection_rule": SELECTION_RULE, "chosen_alpha": self.latent["chosen_alpha"],
            "grid_hyperparams": self.latent["grid_hyperparams"], "validation": self.latent["validation"],
            "control_test": self.latent["control_test"], "opposite_sign": self.opposite,
            "diff_means": strip(self.diff_means), "diff_means_note": self.diff_means_note,
            "control_selection": self.control_info,
            "flipped_example_task_ids": {kind: [e["task_id"] for e in examples] for kind, examples in self.flipped.items()},
        }


def site_norm(ctx: SteeringContext, inputs: Phase3Inputs, layer: int) -> tuple[float, int | None, float | None]:
    """(measured norm at ``ctx.hook_point`` of ``layer``, saved layer of that site or None, its saved-activation norm).

    Measured once per layer with :func:`measure_site_norm` over the
    hyperparams split's prompts (built and checked as the steered runs build
    them).
    """
    if layer not in ctx.site_norms:
        prompts = [job.prompt for job in split_jobs(inputs.hyperparams, ctx.tokenizer)]
        ctx.site_norms[layer] = measure_site_norm(ctx.model, ctx.tokenizer, prompts, layer, ctx.hook_point,
                                                  ctx.gen_cfg.batch_size)
    source = saved_layer_for(layer, ctx.hook_point, inputs.saved_layers())
    saved = None if source is None else mean_residual_norm(inputs.activations(inputs.hyperparams, source))
    return ctx.site_norms[layer], source, saved


def steer_direction(
    ctx: SteeringContext,
    inputs: Phase3Inputs,
    bases: dict[str, SplitBaseline],
    direction: str,
    coefficients: list[float],
    n_controls: int,
    control_max_separation: float,
    seed: int,
    diff_means_direction: np.ndarray | None = None,
    diff_means_note: str | None = None,
) -> tuple[DirectionSteering, list[dict[str, Any]]]:
    """The rank-1 ``direction`` latent, its opposite sign and the diff-of-means baseline, with their controls.

    ``diff_means_direction``: the unit correct-minus-incorrect mean direction
    of the latent's layer (sae split); it is negated for the
    incorrect-preferring direction, so alpha > 0 again means "towards the
    direction's class". None skips that baseline (``diff_means_note`` says why).
    """
    results: Phase2Results = inputs.results
    if not results.top[direction]:
        raise PipelineError(f"{results.path} lists no {direction}-preferring latents: nothing to steer")
    target = results.top[direction][0]
    layer = target.layer
    sae = load_sae(results.sae_source, layer, device="cpu")
    d_sae = int(sae.cfg.d_sae)
    if not 0 <= target.latent < d_sae:
        raise PipelineError(
            f"latent {target.latent} of layer {layer} ({direction}-preferring, rank {target.rank}) is out of range "
            f"for its SAE (d_sae {d_sae}): the Phase 2 results and the SAE do not match"
        )
    control_latents, control_info = choose_control_latents(
        results.scores(layer), layer, target.latent, n_controls, control_max_separation, seed, d_sae
    )
    with torch.no_grad():
        latent = Steerable("sae_latent", layer, target.latent, unit_direction(sae.W_dec[target.latent]))
        controls = [Steerable("sae_latent", layer, c, unit_direction(sae.W_dec[c])) for c in control_latents]
    del sae
    scale, source, saved_norm = site_norm(ctx, inputs, layer)
    hook_name = transformer_lens_hook_name(layer, ctx.hook_point)
    logger.info("steering %s-preferring %s at %s: mean residual norm %.4g there (forward pass; saved layer %s: %s)",
                direction, target.name, hook_name, scale, source, "n/a" if saved_norm is None else f"{saved_norm:.4g}")
    rows: list[dict[str, Any]] = []
    main = hypothesis_experiment(ctx, inputs, bases, latent, controls, coefficients, scale, direction, rows)
    opposite = opposite_sign_experiment(ctx, bases, latent, controls, coefficients, scale, direction, rows)
    diff_means = None
    if diff_means_direction is not None:
        sign = 1.0 if direction == "correct" else -1.0
        dm = Steerable("diff_means", layer, None, unit_direction(sign * np.asarray(diff_means_direction)))
        diff_means = hypothesis_experiment(ctx, inputs, bases, dm, controls, coefficients, scale, direction, rows)
    result = DirectionSteering(
        target=target, hook_name=hook_name, residual_norm=scale, scale_layer=source, saved_layer_norm=saved_norm,
        latent=main, opposite=opposite,
        diff_means=diff_means, diff_means_note=diff_means_note, control_info=control_info,
        flipped=flipped_examples(bases["validation"], main["run"]), latent_vector=latent, control_vectors=controls,
    )
    return result, rows
