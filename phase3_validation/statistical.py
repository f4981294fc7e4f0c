"""Statistical validation: does a latent's activation predict correctness on held-out problems?

docs/design.md section 4 and rules 6 and 7. For each of the top latents of each
direction:

- score = the latent's SAE activation (float32 encoding, rule 9) of the task's
  residual vector at the last prompt token; the positive class is "correct"
  for a correct-preferring latent and "incorrect" for an incorrect-preferring
  one, so a higher score always predicts the positive class;
- the threshold maximising F1 is chosen on the hyperparams split only, among
  thresholds that split its tasks (a rule predicting one class for all tasks
  scores its metrics' trivial baselines by construction); when none splits
  them, or the split has fewer than :data:`MIN_THRESHOLD_CLASS` tasks in a
  class, the row says "no informative threshold" and carries no F1,
  precision, recall or accuracy (the AUROC, which needs no threshold, stays);
- on the validation split (temperature 0, and each Phase 1.2 temperature) the
  AUROC with a bootstrap 95% CI and the AUPRC beside the prevalence, and at
  that fixed threshold F1, precision, recall and accuracy, each beside its
  trivial baseline; when the threshold puts every row of the evaluated set in
  one class, the row says "no informative threshold on this set" instead
  (those metrics would be their baselines by construction).

Baselines, and why each: AUROC 0.5 (a score unrelated to the label); AUPRC
the prevalence (the average precision of a score unrelated to the label);
F1 of always predicting positive (2b / (1 + b) for base rate b), the F1 any
classifier gets for free; precision's base rate b (the precision of any
classifier that ignores the score); recall's predicted-positive rate (the
expected recall of a random classifier that flags as many tasks); accuracy's
majority-class rate max(b, 1 - b).

At temperature > 0 a task has several samples (one row each, all with the
task's one activation, since activations depend on the prompt only). Samples
of a task are not independent, so the AUROC interval there resamples *tasks*
(each with all its samples), not rows; at temperature 0 (one row per task)
the interval is DeLong's (``common.statistics.stats.auroc_with_ci``, calibrated by
bench/calibration.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats as sps
from sklearn.metrics import average_precision_score, roc_auc_score
from tqdm import tqdm

from common.errors import PipelineError
from common.saes.loading import encode, load_sae
from common.statistics.stats import (
    auroc_with_ci,
    best_f1_threshold,
    bound_interval,
    classification_metrics,
    delong_placements,
    placements_degenerate,
)
from phase3_validation.inputs import LatentRef, Phase3Inputs, temperature_activations

logger = logging.getLogger(__name__)

NO_THRESHOLD = "no informative threshold"
NO_THRESHOLD_ON_SET = "no informative threshold on this set"
# Fewer tasks than this in a class of the hyperparams split: no threshold is chosen (one line says so).
MIN_THRESHOLD_CLASS = 3

BASELINE_NOTES: dict[str, str] = {
    "auroc": "0.5 (score unrelated to the label)",
    "auprc": "prevalence b (average precision of a score unrelated to the label)",
    "f1": "F1 of flagging everything (always predicting positive) = 2b/(1+b), b = base rate",
    "precision": "base rate b (precision of any score-blind classifier)",
    "recall": "predicted-positive rate (expected recall of a random classifier flagging as many)",
    "accuracy": "majority-class rate max(b, 1-b)",
}


def positive_labels(correct: np.ndarray, direction: str) -> np.ndarray:
    """The positive class of a latent: correct tasks for correct-preferring, incorrect ones otherwise."""
    correct = np.asarray(correct, dtype=bool)
    if direction == "correct":
        return correct
    if direction == "incorrect":
        return ~correct
    raise PipelineError(f"direction must be 'correct' or 'incorrect', got {direction!r}")


def _mann_whitney_auroc(y: np.ndarray, s: np.ndarray) -> float:
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    ranks = sps.rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def clustered_bootstrap_aurocs(
    y_true: np.ndarray, scores: np.ndarray, groups: np.ndarray, n_bootstrap: int, seed: int
) -> np.ndarray:
    """AUROC of each resample of *groups* (tasks, each with all its rows) that holds both classes.

    Why: rows of one task share the task's score and are correlated, so
    resampling rows would understate the interval's width.
    """
    y = np.asarray(y_true, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    groups = np.asarray(groups)
    unique, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(unique.size)]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_bootstrap):
        pick = rng.integers(0, unique.size, size=unique.size)
        idx = np.concatenate([members[g] for g in pick])
        yb = y[idx]
        if yb.all() or not yb.any():
            continue
        out.append(_mann_whitney_auroc(yb, s[idx]))
    return np.asarray(out, dtype=np.float64)


def auroc_interval(
    y: np.ndarray, scores: np.ndarray, n_bootstrap: int, seed: int, groups: np.ndarray | None = None
) -> tuple[float, float, float, str]:
    """(AUROC, lo, hi, method): DeLong when each task has one row, a bootstrap over tasks otherwise.

    DeLong's variance treats rows as independent, which samples of one task
    are not; the task bootstrap keeps them together.
    """
    if groups is None or np.unique(groups).size == len(groups):
        auroc, lo, hi = auroc_with_ci(y, scores, n_bootstrap=n_bootstrap, seed=seed)
        return auroc, lo, hi, "DeLong variance, logit scale"
    auroc = float(roc_auc_score(y, scores))
    method = "percentile bootstrap over tasks (samples of a task kept together)"
    boot = clustered_bootstrap_aurocs(y, scores, groups, n_bootstrap, seed)
    if boot.size == 0:
        return auroc, float("nan"), float("nan"), method
    lo, hi = (float(v) for v in np.percentile(boot, [2.5, 97.5]))
    bound = _bound_interval(np.asarray(y, dtype=bool), np.asarray(scores, dtype=np.float64), np.asarray(groups))
    if bound is not None:
        return auroc, min(lo, bound[0]), max(hi, bound[1]), method + ", widened to van Dantzig's bound"
    return auroc, lo, hi, method


def _bound_interval(y: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> tuple[float, float] | None:
    """The largest-variance interval, over tasks, when one class's scores do not vary; else None.

    Why: resampling tasks cannot show variation a class never has (a sparse
    latent silent on every passing task): in simulated null studies of 390
    tasks x 3 samples at a 1.8% pass rate, the task bootstrap alone excluded
    0.5 in 36% of them (bench.calibration's auroc_interval_sparse_sampled). As DeLong's interval does then
    (``delong_interval``), the variance is van Dantzig's bound, counted in
    tasks that hold each class.
    """
    v10, v01 = delong_placements(y, scores)
    if not (placements_degenerate(v10) or placements_degenerate(v01)):
        return None
    auroc = float(v10.mean())
    n_pos, n_neg = np.unique(groups[y]).size, np.unique(groups[~y]).size
    _, lo, hi = bound_interval(auroc, n_pos, n_neg)
    return lo, hi


def evaluate_at_threshold(
    y: np.ndarray,
    scores: np.ndarray,
    threshold: float | None,
    n_bootstrap: int,
    seed: int,
    groups: np.ndarray | None = None,
) -> dict[str, Any]:
    """Every metric of one score on one evaluation set, each beside its baseline (rule 7).

    ``threshold`` was chosen elsewhere (on hyperparams); the rule is
    ``predict positive iff score >= threshold``. ``None`` means no informative
    threshold exists: the threshold metrics are NaN, never the trivial
    classifier's numbers dressed up as a result. With one class only the
    AUROC is undefined: it is NaN and ``note`` says why (a temperature at
    which nothing passes must not stop the phase).
    """
    y = np.asarray(y, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    chosen = threshold is not None
    pred = scores >= threshold if chosen else np.zeros_like(y)
    # A chosen threshold that puts every row of *this* set in one class is a trivial classifier here: its F1,
    # precision and accuracy are the baselines' by construction, so they are not reported (validation and
    # HumanEval alike).
    one_class_here = chosen and (bool(pred.all()) or not pred.any())
    informative = chosen and not one_class_here
    metrics = classification_metrics(y, pred)
    b = metrics["base_rate"]
    notes = [] if chosen else [NO_THRESHOLD]
    if one_class_here:
        notes.append(f"{NO_THRESHOLD_ON_SET}: the threshold predicts {'positive' if pred.all() else 'negative'} "
                     f"for all {y.size} rows")
    row: dict[str, Any] = {
        "threshold": float(threshold) if chosen and threshold is not None else float("nan"),
        "informative_threshold": informative,
        "threshold_status": "informative" if informative else ("one class on this set" if chosen else "none chosen"),
        "n": metrics["n"],
        "n_tasks": int(np.unique(groups).size) if groups is not None else metrics["n"],
        "n_positive": metrics["n_positive"],
        "base_rate": b,
        "firing_rate": float((scores > 0).mean()),
        "predicted_positive_rate_at_threshold": float(pred.mean()) if chosen else float("nan"),
    }
    if y.all() or not y.any():
        row.update(auroc=float("nan"), auroc_ci_lo=float("nan"), auroc_ci_hi=float("nan"), auroc_ci_method="",
                   auprc=float("nan"))
        notes.append("one class only: AUROC undefined")
    else:
        auroc, lo, hi, method = auroc_interval(y, scores, n_bootstrap, seed, groups)
        row.update(auroc=auroc, auroc_ci_lo=lo, auroc_ci_hi=hi, auroc_ci_method=method,
                   auprc=float(average_precision_score(y, scores)))
    row["note"] = "; ".join(notes)
    predicted_positive_rate = float(pred.mean()) if informative else float("nan")
    nan = float("nan")
    row.update(
        auroc_baseline=0.5,
        auprc_baseline_prevalence=b,
        f1=metrics["f1"] if informative else nan,
        f1_baseline_always_positive=metrics["always_positive_f1"],
        precision=metrics["precision"] if informative else nan,
        precision_baseline_base_rate=b,
        recall=metrics["recall"] if informative else nan,
        recall_baseline_random=predicted_positive_rate,
        accuracy=metrics["accuracy"] if informative else nan,
        accuracy_baseline_majority=max(b, 1.0 - b),
        predicted_positive_rate=predicted_positive_rate,
        **({k: metrics[k] for k in ("tp", "fp", "fn", "tn")} if informative else dict(tp=-1, fp=-1, fn=-1, tn=-1)),
    )
    return row


@dataclass
class LatentEvaluation:
    """One score's (SAE latent or probe) metric rows on every evaluation set, and its threshold."""

    ref: LatentRef | None
    threshold: float | None
    hyperparams_f1: float
    rows: list[dict[str, Any]] = field(default_factory=list)
    roc_data: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # eval set -> (y, scores)
    threshold_note: str = ""

    @property
    def latent(self) -> LatentRef:
        """The SAE latent evaluated; a probe's evaluation has none."""
        if self.ref is None:
            raise ValueError("a probe evaluation has no SAE latent")
        return self.ref


def choose_threshold(y_hp: np.ndarray, hp_scores: np.ndarray, what: str) -> tuple[float | None, float, str]:
    """(threshold, hyperparams F1, note): the best informative F1 threshold, or None and the reason.

    A class with fewer than :data:`MIN_THRESHOLD_CLASS` hyperparams tasks
    gets no threshold; the phase says so once for the split
    (:func:`split_too_small`), not once per latent.
    """
    y_hp = np.asarray(y_hp, dtype=bool)
    n_pos, n_neg = int(y_hp.sum()), int((~y_hp).sum())
    if min(n_pos, n_neg) < MIN_THRESHOLD_CLASS:
        return None, float("nan"), f"{NO_THRESHOLD}: hyperparams split too small ({n_pos} positive, {n_neg} negative)"
    threshold, f1 = best_f1_threshold(y_hp, hp_scores)
    if threshold is None:
        return None, f1, f"{NO_THRESHOLD}: the score of {what} is constant on the hyperparams split"
    return threshold, f1, ""


def split_too_small(correct: np.ndarray, split: str, minimum: int, what: str) -> str | None:
    """One line naming the split and its class counts when a class has fewer than ``minimum`` tasks, else None."""
    correct = np.asarray(correct, dtype=bool)
    n_c, n_i = int(correct.sum()), int((~correct).sum())
    if min(n_c, n_i) >= minimum:
        return None
    return (f"the {split} split is too small to {what}: {n_c} correct and {n_i} incorrect tasks "
            f"(at least {minimum} of each needed)")


def evaluate_scores(
    identity: dict[str, Any],
    positive: str,
    hp_correct: np.ndarray,
    hp_scores: np.ndarray,
    eval_sets: list[dict[str, Any]],
    n_bootstrap: int,
    seed: int,
    ref: LatentRef | None = None,
) -> LatentEvaluation:
    """Choose the threshold on hyperparams, then apply it to each evaluation set.

    ``identity`` goes into every row (which latent or probe); ``positive`` is
    the positive class ("correct" or "incorrect"; a higher score predicts it).
    ``eval_sets``: dicts with ``split``, ``temperature``, ``correct`` (bool per
    row), ``scores`` (per row) and optional ``groups`` (task id per row).
    The hyperparams split itself is also reported (``split = hyperparams``,
    in-sample: the threshold was chosen there), so over-fitting of the
    threshold is visible beside the validation numbers.
    """
    y_hp = positive_labels(hp_correct, positive)
    what = identity.get("name") or f"L{identity.get('layer')}/{identity.get('latent')}"
    threshold, hp_f1, note = choose_threshold(y_hp, hp_scores, f"{what} ({positive} positive)")
    evaluation = LatentEvaluation(ref=ref, threshold=threshold, hyperparams_f1=hp_f1, threshold_note=note)
    all_sets = [{"split": "hyperparams", "temperature": 0.0, "correct": hp_correct, "scores": hp_scores}, *eval_sets]
    for eval_set in all_sets:
        y = positive_labels(eval_set["correct"], positive)
        metrics = evaluate_at_threshold(y, eval_set["scores"], threshold, n_bootstrap, seed, eval_set.get("groups"))
        if note:
            metrics["note"] = "; ".join(x for x in (note, metrics["note"].replace(NO_THRESHOLD, "").strip("; ")) if x)
        evaluation.rows.append({
            **identity,
            "positive_class": positive,
            "split": eval_set["split"],
            "temperature": float(eval_set["temperature"]),
            "threshold_source": "hyperparams (best F1 among thresholds that split the tasks)",
            **metrics,
        })
        evaluation.roc_data[f"{eval_set['split']}@T{eval_set['temperature']:g}"] = (y, np.asarray(eval_set["scores"]))
    return evaluation


def evaluate_latent(
    ref: LatentRef,
    hp_correct: np.ndarray,
    hp_scores: np.ndarray,
    eval_sets: list[dict[str, Any]],
    n_bootstrap: int,
    seed: int,
) -> LatentEvaluation:
    """:func:`evaluate_scores` for an SAE latent, whose positive class is its direction."""
    return evaluate_scores(ref.to_dict(), ref.direction, hp_correct, hp_scores, eval_sets, n_bootstrap, seed, ref=ref)


def _check_latent_range(ref: LatentRef, d_sae: int, where: str) -> None:
    if not 0 <= ref.latent < d_sae:
        raise PipelineError(
            f"latent {ref.latent} of layer {ref.layer} ({ref.direction}-preferring, rank {ref.rank}) is out of range "
            f"for its SAE ({where}, d_sae {d_sae}): the Phase 2 results and the SAE do not match"
        )


def validate_latents(inputs: Phase3Inputs, top_n: int, n_bootstrap: int, seed: int) -> list[LatentEvaluation]:
    """Statistical validation of the top ``top_n`` latents of each direction, one SAE load per layer."""
    if top_n < 1:
        raise PipelineError(f"top_latents_validated must be >= 1, got {top_n}")
    refs = [ref for direction in ("correct", "incorrect") for ref in inputs.results.top[direction][:top_n]]
    if not refs:
        raise PipelineError(f"{inputs.results.path} lists no top latents in either direction: nothing to validate")
    temps = inputs.temperature
    evaluations: list[LatentEvaluation] = []
    layers = sorted({r.layer for r in refs})
    for layer in tqdm(layers, desc="phase 3: statistical validation", unit="layer"):
        sae = load_sae(inputs.results.sae_source, layer, device="cpu")
        where = str(inputs.results.sae_source.describe(layer))
        layer_refs = [r for r in refs if r.layer == layer]
        for ref in layer_refs:
            _check_latent_range(ref, int(sae.cfg.d_sae), where)
        columns = [r.latent for r in layer_refs]
        hp = encode(sae, inputs.activations(inputs.hyperparams, layer))[:, columns]
        val = encode(sae, inputs.activations(inputs.validation, layer))[:, columns]
        temp_scores = None
        samples = temps.samples
        if samples is not None:
            task_ids = sorted(samples["task_id"].unique().tolist())
            acts = temperature_activations(temps, task_ids, layer)
            encoded = encode(sae, np.stack([acts[t] for t in task_ids]))[:, columns]
            temp_scores = {t: encoded[i] for i, t in enumerate(task_ids)}
        del sae
        for j, ref in enumerate(layer_refs):
            eval_sets: list[dict[str, Any]] = [{
                "split": "validation", "temperature": 0.0,
                "correct": inputs.validation.correct, "scores": val[:, j],
            }]
            if temp_scores is not None and samples is not None:
                for temperature in temps.temperatures:
                    rows = samples[samples["temperature"] == temperature]
                    eval_sets.append({
                        "split": "validation", "temperature": temperature,
                        "correct": rows["passed"].to_numpy(dtype=bool),
                        "scores": np.array([temp_scores[int(t)][j] for t in rows["task_id"]], dtype=np.float64),
                        "groups": rows["task_id"].to_numpy(),
                    })
            evaluation = evaluate_latent(ref, inputs.hyperparams.correct, hp[:, j], eval_sets, n_bootstrap, seed)
            evaluations.append(evaluation)
            v0 = evaluation.rows[1]
            logger.info(
                "%s-preferring %s: threshold %s (hyperparams F1 %.3f); validation AUROC %.3f [%.3f, %.3f], F1 %.3f (always-positive %.3f)",
                ref.direction, ref.name,
                NO_THRESHOLD if evaluation.threshold is None else f"{evaluation.threshold:.4g}", evaluation.hyperparams_f1,
                v0["auroc"], v0["auroc_ci_lo"], v0["auroc_ci_hi"], v0["f1"], v0["f1_baseline_always_positive"],
            )
    evaluations.sort(key=lambda e: refs.index(e.latent))  # direction, then Phase 2 rank
    return evaluations
