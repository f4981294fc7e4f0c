"""Causal validation: steering along a latent's decoder direction (DESIGN section 4, rules 6 and 8).

For the rank-1 latent of each direction:

1. the vector is its SAE decoder row (``W_dec[latent]``, unit norm) at its
   layer, times alpha x the mean L2 norm of the residual stream at that layer
   (measured on the hyperparams split's saved activations), so alpha is in
   units of a typical residual vector and a grid of -1 .. 1 means the same
   thing at every layer;
2. alpha is chosen on the hyperparams split only (rule 6), by the net effect
   the latent's direction predicts: correction minus corruption for a
   correct-preferring latent, corruption minus correction for an
   incorrect-preferring one; ties go to the smallest |alpha|, then to the
   positive one;
3. on the validation split, with that alpha: correction rate (initially
   incorrect -> correct), corruption rate (initially correct -> incorrect),
   preservation = 1 - corruption, with Clopper-Pearson intervals, and an exact
   McNemar test on the discordant pairs against the Phase 1.0 baseline
   (paired: same problems);
4. controls (rule 8): random latents of the same layer whose separation score
   is near zero, steered with the same alpha and the same norm; their flips
   are pooled and the target's counts are compared with the pool by Fisher's
   exact test (never against a rate of 0);
5. an alpha = 0 rerun through the same code path (the hooks stay in place and
   add a zero vector): greedy decoding must reproduce the Phase 1 programs
   exactly, so every difference is reported and flagged.

Generation reuses ``common.generation_loop.generate_and_execute`` (batched,
executed on CPU workers while the GPU generates, checkpointed): each steered
run has its own checkpoint folder under ``data/phase3/checkpoints/``, keyed by
everything that determines its output, so a rerun after a crash resumes.
A zero vector gives the same output at any layer, so every alpha = 0 run of a
split shares one folder and is generated once.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import transformers

from common.errors import PipelineError
from common.executor import Executor
from common.generation import GenerationConfig
from common.generation_loop import Job, generate_and_execute
from common.prompts import PROMPT_TEMPLATE_VERSION, build_prompt
from common.saes import load_sae
from common.stats import clopper_pearson, fisher_exact_2x2, mcnemar_exact
from common.steering import steer, transformer_lens_hook_name
from common.storage import RecordCheckpointer
from common.tasks import run_key
from phase3_validation.inputs import LatentRef, Phase2Results, Phase3Inputs, SplitTasks

logger = logging.getLogger(__name__)

SELECTION_RULE = (
    "alpha maximising the net effect the latent's direction predicts on the hyperparams split "
    "(correct-preferring: correction rate - corruption rate; incorrect-preferring: corruption rate - "
    "correction rate), both against the Phase 1.0 greedy labels; ties: smallest |alpha|, then positive alpha"
)
CONTROL_RULE = (
    "latents of the target's layer with |separation_correct| <= {max_sep} in Phase 2's scores, the target "
    "excluded, as are latents Phase 2's general-text filter flagged (the target was chosen among unflagged ones); "
    "latents that fire on some sae-split task (f_correct + f_incorrect > 0) are preferred; "
    "drawn without replacement with numpy default_rng([seed, layer, latent])"
)


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
    lo, hi = clopper_pearson(k, n)
    return k / n, lo, hi


def steering_rates(baseline_correct: np.ndarray, steered_correct: np.ndarray, what: str = "") -> dict[str, Any]:
    """Correction, corruption and preservation rates with exact intervals, and the paired McNemar p.

    Raises a PipelineError when a rate has no denominator: a split with no
    initially-incorrect problems has no correction rate, one with no
    initially-correct problems no corruption rate.
    """
    counts = transition_counts(baseline_correct, steered_correct)
    where = f" ({what})" if what else ""
    if counts["n_initially_incorrect"] == 0:
        raise PipelineError(
            f"no initially-incorrect problems{where}: the correction rate is undefined "
            f"(all {counts['n_tasks']} baseline solutions pass)"
        )
    if counts["n_initially_correct"] == 0:
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


def predicted_effect(rates: dict[str, Any], direction: str) -> float:
    """The effect a latent's direction predicts: more corrections (correct) or more corruptions (incorrect)."""
    if direction == "correct":
        return rates["correction_rate"] - rates["corruption_rate"]
    if direction == "incorrect":
        return rates["corruption_rate"] - rates["correction_rate"]
    raise PipelineError(f"direction must be 'correct' or 'incorrect', got {direction!r}")


def select_coefficient(grid: list[dict[str, Any]], direction: str) -> float:
    """The alpha of ``grid`` (rows with ``alpha`` and rates) by :data:`SELECTION_RULE`."""
    if not grid:
        raise PipelineError("the steering coefficient grid is empty (--coefficients)")
    best = max(predicted_effect(row, direction) for row in grid)
    tied = [row["alpha"] for row in grid if predicted_effect(row, direction) >= best - 1e-12]
    return float(min(tied, key=lambda a: (abs(a), -a)))


def control_comparison(target: dict[str, Any], controls: list[dict[str, Any]]) -> dict[str, Any]:
    """Pool the controls' flips and compare the target's with them (two-sided Fisher exact tests)."""
    if not controls:
        raise PipelineError("no control runs to compare the steered latent with")
    pooled = {
        key: int(sum(c[key] for c in controls))
        for key in ("n_initially_incorrect", "n_corrected", "n_initially_correct", "n_corrupted")
    }
    pooled["correction_rate"] = pooled["n_corrected"] / pooled["n_initially_incorrect"]
    pooled["correction_ci_lo"], pooled["correction_ci_hi"] = clopper_pearson(pooled["n_corrected"], pooled["n_initially_incorrect"])
    pooled["corruption_rate"] = pooled["n_corrupted"] / pooled["n_initially_correct"]
    pooled["corruption_ci_lo"], pooled["corruption_ci_hi"] = clopper_pearson(pooled["n_corrupted"], pooled["n_initially_correct"])
    fisher_correction = fisher_exact_2x2(
        target["n_corrected"], target["n_initially_incorrect"] - target["n_corrected"],
        pooled["n_corrected"], pooled["n_initially_incorrect"] - pooled["n_corrected"],
    )
    fisher_corruption = fisher_exact_2x2(
        target["n_corrupted"], target["n_initially_correct"] - target["n_corrupted"],
        pooled["n_corrupted"], pooled["n_initially_correct"] - pooled["n_corrupted"],
    )
    return {"n_controls": len(controls), "pooled": pooled,
            "fisher_p_correction": fisher_correction, "fisher_p_corruption": fisher_corruption}


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


@dataclass
class SteeredRun:
    """One split generated under one steering vector, aligned with the split's task order."""

    label: str
    records: pd.DataFrame
    n_resumed: int
    checkpoint: Path

    @property
    def correct(self) -> np.ndarray:
        return self.records["passed"].to_numpy(dtype=bool)


def split_jobs(split: SplitTasks) -> list[Job]:
    """One job per task, with the prompt Phase 1 used (checked: a changed template would void the comparison)."""
    jobs = []
    for row, base in zip(split.tasks.itertuples(), split.baseline.itertuples()):
        prompt = build_prompt(row.text, list(row.test_list))
        if prompt != base.prompt:
            raise PipelineError(
                f"task {int(row.task_id)}: the prompt built now ({PROMPT_TEMPLATE_VERSION}) differs from the one "
                "Phase 1.0 used; rerun Phase 1 with this code so steered and baseline programs are comparable"
            )
        jobs.append(Job(
            key=str(int(row.task_id)), task_id=int(row.task_id), prompt=prompt,
            test_setup_code=row.test_setup_code, tests=list(row.test_list),
        ))
    return jobs


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
    jobs = split_jobs(split)
    is_zero = not bool(torch.any(vector != 0))
    identity: dict[str, Any] = {
        "model": ctx.model_id, "split": split.name, "tasks": split.task_ids,
        "max_new_tokens": ctx.gen_cfg.max_new_tokens, "batch_size": ctx.gen_cfg.batch_size,
        "prompt": PROMPT_TEMPLATE_VERSION, "seed": ctx.gen_cfg.seed,
    }
    if is_zero:
        identity["vector"] = "zero"
        folder_name = f"{split.name}_alpha0_{run_key(identity)}"
    else:
        identity.update(layer=layer, hook_point=ctx.hook_point, positions=ctx.positions, vector=_vector_digest(vector))
        folder_name = f"{split.name}_{label}_{run_key(identity)}"
    folder = ctx.checkpoint_root / folder_name
    checkpointer = RecordCheckpointer(folder, ctx.checkpoint_every, ctx.autosave_every, ctx.autosave_keep)
    n_resumed = len({r["key"] for r in checkpointer.load()})
    ctx.folders.add(folder)
    desc = f"phase 3 {split.name} {label}"
    with steer(ctx.model, layer, vector, ctx.hook_point, ctx.positions):
        records = generate_and_execute(
            ctx.model, ctx.tokenizer, jobs, ctx.gen_cfg, [], ctx.executor, checkpointer, desc=desc
        )
    checkpointer.flush()
    table = pd.DataFrame(records)
    table["task_id"] = table["task_id"].astype(int)
    table = table.set_index("task_id").loc[split.task_ids].reset_index()
    return SteeredRun(label=label, records=table, n_resumed=n_resumed, checkpoint=folder)


def program_changes(split: SplitTasks, run: SteeredRun) -> dict[str, Any]:
    """How the run's programs and labels differ from the Phase 1.0 baseline, task by task."""
    before_code = split.baseline["extracted_code"].fillna("").to_numpy()
    after_code = run.records["extracted_code"].fillna("").to_numpy()
    code_changed = before_code != after_code
    text_changed = split.baseline["generated_text"].fillna("").to_numpy() != run.records["generated_text"].fillna("").to_numpy()
    label_flip = split.correct != run.correct
    return {
        "n_programs_changed": int(code_changed.sum()),
        "n_generations_changed": int(text_changed.sum()),
        "n_label_flips": int(label_flip.sum()),
        "n_label_flips_same_program": int((label_flip & ~code_changed).sum()),
        "changed_task_ids": [int(t) for t in np.asarray(split.task_ids)[code_changed | label_flip]],
    }


# --------------------------------------------------------------------------- one direction, end to end


@dataclass
class DirectionSteering:
    """Everything measured for one steered latent: scale, grid, chosen alpha, validation and controls."""

    target: LatentRef
    hook_name: str
    residual_norm: float
    grid: list[dict[str, Any]]
    chosen_alpha: float
    validation: dict[str, Any]
    controls: list[dict[str, Any]]
    control_info: dict[str, Any]
    control_test: dict[str, Any]
    flipped: dict[str, list[dict[str, Any]]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target.to_dict(), "hook_name": self.hook_name, "residual_norm": self.residual_norm,
            "selection_rule": SELECTION_RULE,
            "grid_hyperparams": self.grid, "chosen_alpha": self.chosen_alpha, "validation": self.validation,
            "controls": self.controls, "control_selection": self.control_info, "control_test": self.control_test,
            "flipped_example_task_ids": {kind: [e["task_id"] for e in examples] for kind, examples in self.flipped.items()},
        }


def steering_row(role: str, direction: str, layer: int, latent: int | None, alpha: float, split: str,
                 rates: dict[str, Any], changes: dict[str, Any], run: SteeredRun) -> dict[str, Any]:
    """One row of ``steering_<ts>.parquet``: which run (role: target, control, alpha0), its rates and changes."""
    return {
        "direction": direction, "role": role, "layer": layer, "latent": latent, "alpha": float(alpha), "split": split,
        **rates, **{k: v for k, v in changes.items() if k != "changed_task_ids"},
        "n_resumed": run.n_resumed,
    }


def flipped_examples(split: SplitTasks, run: SteeredRun, limit: int = 3) -> dict[str, list[dict[str, Any]]]:
    """A few tasks that flipped each way under steering, with the program before and after."""
    out: dict[str, list[dict[str, Any]]] = {"corrected": [], "corrupted": []}
    before, after = split.correct, run.correct
    for i, task_id in enumerate(split.task_ids):
        kind = "corrected" if (not before[i] and after[i]) else "corrupted" if (before[i] and not after[i]) else None
        if kind is None or len(out[kind]) >= limit:
            continue
        out[kind].append({
            "task_id": task_id,
            "text": str(split.tasks.iloc[i]["text"]),
            "before_code": str(split.baseline.iloc[i]["extracted_code"] or ""),
            "before_outcome": str(split.baseline.iloc[i].get("outcome", "")),
            "after_code": str(run.records.iloc[i]["extracted_code"] or ""),
            "after_outcome": str(run.records.iloc[i]["outcome"]),
        })
    return out


def steer_direction(
    ctx: SteeringContext,
    inputs: Phase3Inputs,
    direction: str,
    coefficients: list[float],
    n_controls: int,
    control_max_separation: float,
    seed: int,
) -> tuple[DirectionSteering, list[dict[str, Any]]]:
    """Select alpha on hyperparams, then measure the rank-1 ``direction`` latent and its controls on validation."""
    if not coefficients:
        raise PipelineError("the steering coefficient grid is empty (--coefficients)")
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
        target_dir = unit_direction(sae.W_dec[target.latent])
        control_dirs = [unit_direction(sae.W_dec[c]) for c in control_latents]
    del sae
    scale = mean_residual_norm(inputs.activations(inputs.hyperparams, layer))
    hook_name = transformer_lens_hook_name(layer, ctx.hook_point)
    logger.info("steering %s-preferring %s at %s: mean residual norm %.4g (alpha = 1 adds a vector of that norm)",
                direction, target.name, hook_name, scale)
    rows: list[dict[str, Any]] = []

    grid = []
    for alpha in coefficients:
        run = steered_generation(ctx, inputs.hyperparams, layer, alpha * scale * target_dir,
                                 f"{direction}_L{layer}_{target.latent}_a{alpha:g}")
        rates = steering_rates(inputs.hyperparams.correct, run.correct, f"hyperparams split, alpha {alpha:g}")
        changes = program_changes(inputs.hyperparams, run)
        row = steering_row("target", direction, layer, target.latent, alpha, "hyperparams", rates, changes, run)
        row["predicted_effect"] = predicted_effect(rates, direction)
        grid.append(row)
        rows.append(row)
    alpha = select_coefficient(grid, direction)
    logger.info("%s-preferring %s: alpha %g chosen on hyperparams (%s)", direction, target.name, alpha,
                ", ".join(f"{r['alpha']:g}: {r['predicted_effect']:+.3f}" for r in grid))

    val = inputs.validation
    run = steered_generation(ctx, val, layer, alpha * scale * target_dir, f"{direction}_L{layer}_{target.latent}_a{alpha:g}")
    target_rates = steering_rates(val.correct, run.correct, f"validation split, alpha {alpha:g}")
    target_row = steering_row("target", direction, layer, target.latent, alpha, "validation", target_rates,
                               program_changes(val, run), run)
    target_row["predicted_effect"] = predicted_effect(target_rates, direction)
    rows.append(target_row)
    flipped = flipped_examples(val, run)

    controls = []
    for latent, unit in zip(control_latents, control_dirs):
        c_run = steered_generation(ctx, val, layer, alpha * scale * unit, f"control_L{layer}_{latent}_a{alpha:g}")
        c_rates = steering_rates(val.correct, c_run.correct, f"validation split, control latent {latent}")
        c_row = steering_row("control", direction, layer, latent, alpha, "validation", c_rates,
                              program_changes(val, c_run), c_run)
        c_row["predicted_effect"] = predicted_effect(c_rates, direction)
        controls.append(c_row)
        rows.append(c_row)
    test = control_comparison(target_rates, controls)
    pooled_row = {"direction": direction, "role": "control_pooled", "layer": layer, "latent": None,
                  "alpha": float(alpha), "split": "validation", **test["pooled"],
                  "fisher_p_correction": test["fisher_p_correction"], "fisher_p_corruption": test["fisher_p_corruption"]}
    rows.append(pooled_row)
    target_row.update(fisher_p_correction=test["fisher_p_correction"], fisher_p_corruption=test["fisher_p_corruption"])

    result = DirectionSteering(
        target=target, hook_name=hook_name, residual_norm=scale, grid=grid, chosen_alpha=alpha,
        validation=target_row, controls=controls, control_info=control_info, control_test=test, flipped=flipped,
    )
    return result, rows
