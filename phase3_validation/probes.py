"""Probe baselines on the raw residual stream, beside every SAE latent (does a latent carry more than a linear read-out?).

The first question a reader asks of a single SAE latent that predicts
correctness is whether the raw residual stream already carries the same
signal linearly (sparse-probing studies find linear probes on the residual
usually match or beat single SAE latents). So, per saved layer, two
baselines are built from the same vectors the SAE reads (last prompt token,
``blocks.L.hook_resid_post``):

- ``logistic``: scikit-learn logistic regression on standardised features,
  L2 penalty strength C chosen by stratified cross-validation (log-loss) on
  the sae split only;
- ``diff_means``: the difference of class means (correct minus incorrect) on
  the sae split, as a unit direction; the score is the projection on it.

Both are fitted on the sae split (where Phase 2 chose its latents), their
threshold is chosen on hyperparams, and they are scored on validation (T = 0
and each Phase 1.2 temperature) by exactly the code that scores the SAE
latents (:func:`phase3_validation.statistical.evaluate_scores`), so the
metrics, intervals and baselines are the same. Each is evaluated with either
class as the positive one (score and minus score), to sit beside the
correct- and incorrect-preferring latents. The "best layer" of each is
chosen by the hyperparams AUROC, never by validation.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegressionCV
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from common.errors import PipelineError
from phase3_validation.inputs import Phase3Inputs, temperature_activations
from phase3_validation.statistical import LatentEvaluation, evaluate_scores, split_too_small

logger = logging.getLogger(__name__)

PROBE_KINDS = ("logistic", "diff_means")
# Fewer sae-split tasks than this in a class: no probe is fitted (CV needs a few of each class per fold).
MIN_PROBE_CLASS = 3
C_GRID = tuple(float(c) for c in np.logspace(-4, 2, 7))
PROBE_RULES = {
    "logistic": "logistic regression on standardised residual vectors, L2, C from "
                f"{{{', '.join(f'{c:g}' for c in C_GRID)}}} by stratified k-fold CV (log-loss) on the sae split",
    "diff_means": "projection on the unit difference of class means (correct - incorrect) of the sae split",
}


def diff_of_means_direction(x: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """Unit vector mean(correct rows) - mean(incorrect rows), in float64."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(correct, dtype=bool)
    if y.all() or not y.any():
        raise PipelineError("difference of means needs both classes")
    d = x[y].mean(axis=0) - x[~y].mean(axis=0)
    norm = float(np.linalg.norm(d))
    if not math.isfinite(norm) or norm == 0.0:
        raise PipelineError("the class means are equal: no difference-of-means direction")
    return d / norm


def fit_logistic_probe(x: np.ndarray, correct: np.ndarray, seed: int) -> Pipeline:
    """Standardise, then logistic regression with C chosen by stratified CV on these rows only."""
    y = np.asarray(correct, dtype=bool)
    n_splits = int(min(5, y.sum(), (~y).sum()))
    if n_splits < 2:
        raise PipelineError("a logistic probe needs at least 2 tasks of each class")
    cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    model = LogisticRegressionCV(Cs=list(C_GRID), l1_ratios=(0.0,), cv=cv, scoring="neg_log_loss", max_iter=5000,
                                 use_legacy_attributes=False)
    pipe = make_pipeline(StandardScaler(), model)
    pipe.fit(np.asarray(x, dtype=np.float64), y)
    return pipe


@dataclass
class LayerProbes:
    """The two probes of one layer: how to score a residual vector with each."""

    layer: int
    logistic: Pipeline
    diff_means: np.ndarray  # unit direction, d_model

    @property
    def chosen_c(self) -> float:
        return float(self.logistic[-1].C_)

    def scores(self, kind: str, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if kind == "logistic":
            return self.logistic.decision_function(x)
        if kind == "diff_means":
            return x @ self.diff_means
        raise PipelineError(f"unknown probe kind {kind!r}")


@dataclass
class ProbeResults:
    """Every probe evaluation, the best layer of each (kind, positive class), and why anything is missing."""

    evaluations: list[LatentEvaluation] = field(default_factory=list)
    best: dict[str, dict[str, int]] = field(default_factory=dict)  # kind -> positive class -> layer
    chosen_c: dict[int, float] = field(default_factory=dict)
    note: str | None = None
    small_note: str | None = None  # the one line when the sae split is too small (the phase logs and flags it)
    directions: dict[int, np.ndarray] = field(default_factory=dict)  # layer -> diff-of-means unit direction
    fitted: dict[int, LayerProbes] = field(default_factory=dict)  # layer -> the probes, reused unchanged for transfer

    def to_dict(self) -> dict[str, Any]:
        return {
            "rules": PROBE_RULES, "best_layer_rule": "highest hyperparams AUROC (ties: lowest layer)",
            "note": self.note, "small_note": self.small_note, "best_layer": self.best, "chosen_c": {str(k): v for k, v in self.chosen_c.items()},
            "probes": [{"probe": ev.rows[0]["probe"], "layer": ev.rows[0]["layer"],
                        "positive_class": ev.rows[0]["positive_class"], "threshold": ev.threshold,
                        "threshold_note": ev.threshold_note, "rows": ev.rows} for ev in self.evaluations],
        }

    def best_rows(self) -> list[dict[str, Any]]:
        """The validation T = 0 row of the best layer of each probe kind and positive class."""
        out = []
        for kind, by_class in self.best.items():
            for positive, layer in by_class.items():
                ev = self.find(kind, positive, layer)
                out.append(next(r for r in ev.rows if r["split"] == "validation" and r["temperature"] == 0.0))
        return out

    def find(self, kind: str, positive: str, layer: int) -> LatentEvaluation:
        return next(ev for ev in self.evaluations if ev.rows[0]["probe"] == kind
                    and ev.rows[0]["positive_class"] == positive and ev.rows[0]["layer"] == layer)


def fit_layer(inputs: Phase3Inputs, layer: int, seed: int) -> LayerProbes:
    """Both probes of ``layer``, fitted on the sae split's Phase 1.0 activations."""
    assert inputs.sae is not None
    x = inputs.activations(inputs.sae, layer)
    return LayerProbes(layer=layer, logistic=fit_logistic_probe(x, inputs.sae.correct, seed),
                       diff_means=diff_of_means_direction(x, inputs.sae.correct))


@dataclass
class EvalVectors:
    """One layer's validation vectors, read once: T = 0 rows (task order) and Phase 1.2's per-task vectors."""

    x_val: np.ndarray
    temp_task_ids: list[int]
    x_temp: np.ndarray | None


def read_eval_vectors(inputs: Phase3Inputs, layer: int) -> EvalVectors:
    x_val = inputs.activations(inputs.validation, layer)
    temps = inputs.temperature
    if temps.samples is None:
        return EvalVectors(x_val, [], None)
    task_ids = sorted(int(t) for t in temps.samples["task_id"].unique())
    acts = temperature_activations(temps, task_ids, layer)
    return EvalVectors(x_val, task_ids, np.stack([acts[t] for t in task_ids]))


def _eval_sets(inputs: Phase3Inputs, probes: LayerProbes, vectors: EvalVectors, kind: str, sign: float
               ) -> list[dict[str, Any]]:
    val = inputs.validation
    sets: list[dict[str, Any]] = [{"split": "validation", "temperature": 0.0, "correct": val.correct,
                                   "scores": sign * probes.scores(kind, vectors.x_val)}]
    temps = inputs.temperature
    if temps.samples is not None and vectors.x_temp is not None:
        by_task = dict(zip(vectors.temp_task_ids, sign * probes.scores(kind, vectors.x_temp)))
        for temperature in temps.temperatures:
            rows = temps.samples[temps.samples["temperature"] == temperature]
            sets.append({"split": "validation", "temperature": temperature,
                         "correct": rows["passed"].to_numpy(dtype=bool),
                         "scores": np.array([by_task[int(t)] for t in rows["task_id"]], dtype=np.float64),
                         "groups": rows["task_id"].to_numpy()})
    return sets


def evaluate_probes(inputs: Phase3Inputs, n_bootstrap: int, seed: int) -> ProbeResults:
    """Fit and score both probes at every saved layer; a missing or too-small sae split gives a note, not an error."""
    if inputs.sae is None:
        return ProbeResults(note=inputs.sae_note or "no sae split: probe baselines skipped")
    small = split_too_small(inputs.sae.correct, "sae", MIN_PROBE_CLASS, "fit a probe")
    if small:
        return ProbeResults(note=small + "; probe baselines skipped", small_note=small)
    layers = inputs.saved_layers()
    if not layers:
        return ProbeResults(note="no saved Phase 1.0 activation layers found: probe baselines skipped")
    out = ProbeResults()
    hp = inputs.hyperparams
    for layer in layers:
        probes = fit_layer(inputs, layer, seed)
        out.chosen_c[layer] = probes.chosen_c
        out.directions[layer] = probes.diff_means
        out.fitted[layer] = probes
        x_hp = inputs.activations(hp, layer)
        vectors = read_eval_vectors(inputs, layer)
        for kind in PROBE_KINDS:
            base_hp = probes.scores(kind, x_hp)
            for positive, sign in (("correct", 1.0), ("incorrect", -1.0)):
                identity = {"probe": kind, "layer": layer, "name": f"{kind} probe L{layer}"}
                ev = evaluate_scores(identity, positive, hp.correct, sign * base_hp,
                                     _eval_sets(inputs, probes, vectors, kind, sign), n_bootstrap, seed)
                out.evaluations.append(ev)
    for kind in PROBE_KINDS:
        out.best[kind] = {}
        for positive in ("correct", "incorrect"):
            candidates = [ev for ev in out.evaluations
                          if ev.rows[0]["probe"] == kind and ev.rows[0]["positive_class"] == positive]
            best = max(candidates, key=lambda ev: (_hp_auroc(ev), -ev.rows[0]["layer"]))
            out.best[kind][positive] = int(best.rows[0]["layer"])
    logger.info("probe baselines: %d layers; best layers %s", len(layers), out.best)
    return out


def _hp_auroc(ev: LatentEvaluation) -> float:
    auroc = ev.rows[0]["auroc"]  # rows[0] is the hyperparams split
    return -1.0 if auroc is None or math.isnan(auroc) else float(auroc)
