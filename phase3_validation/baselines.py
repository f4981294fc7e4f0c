"""Baselines a reviewer asks for beside any hidden-state predictor of correctness.

- Confounds: trivial features (prompt length, the reference solution's
  complexity, the number and length of the asserts) can predict correctness on
  their own; a latent is only interesting for what it adds beyond them.
- The model's own confidence: the mean log-probability of its own tokens.
- Direction geometry: the cosine between the SAE latent's decoder direction,
  the probe's weight vector and the difference of class means.
- A practical use: keep the tasks a predictor trusts most and see how much
  more often they pass (a coverage-accuracy curve).

Discipline (docs/design.md rule 6): every model here is fitted on the sae
split; numbers are computed on the validation split only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as sps
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from common.statistics.stats import bootstrap_aurocs, delong_interval

CONFOUNDS = ("n_prompt_tokens", "cyclomatic_complexity", "n_asserts", "asserts_chars")
COVERAGES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def _fit_predict(x_train: np.ndarray, y_train: np.ndarray, x_eval: np.ndarray) -> np.ndarray:
    """A standardised logistic regression fitted on the training split; P(correct) on the evaluation split."""
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    model.fit(np.asarray(x_train, dtype=float), np.asarray(y_train, dtype=int))
    return model.predict_proba(np.asarray(x_eval, dtype=float))[:, 1]


# A difference of AUROCs whose whole 95% interval lies within this distance of zero is not called a gain or a
# loss: decisions rest on intervals and an explicit margin, never on the sign of float noise (a gain of -1e-16).
GAIN_TOLERANCE = 0.01


def _bootstrap(y: np.ndarray, score: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """AUROC of each bootstrap resample holding both classes; the same seed gives the same resamples for any score.

    Why through ``common.statistics.stats.bootstrap_aurocs``: its resamples depend only on
    (seed, n), so two scores bootstrapped with one seed are *paired* (each
    resample scores both on the same tasks), and it is vectorised.
    """
    return bootstrap_aurocs(np.asarray(y, dtype=bool), np.asarray(score, dtype=float), n_boot, seed)


def _percentiles(values: np.ndarray) -> tuple[float, float]:
    if values.size == 0:
        return math.nan, math.nan
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


@dataclass
class AurocWithInterval:
    """An AUROC on the validation split with DeLong's 95% interval, and the AUPRC beside the prevalence."""

    auroc: float
    low: float
    high: float
    auprc: float = math.nan
    prevalence: float = math.nan

    def to_dict(self) -> dict[str, float]:
        return {"auroc": self.auroc, "low": self.low, "high": self.high, "auprc": self.auprc,
                "auprc_baseline_prevalence": self.prevalence}


def auroc_interval(y: np.ndarray, score: np.ndarray, n_boot: int, seed: int) -> AurocWithInterval:
    """One predictor's AUROC with DeLong's interval (as every other single AUROC); n_boot and seed are unused."""
    y, score = np.asarray(y, dtype=bool), np.asarray(score, dtype=float)
    auroc, low, high = delong_interval(y, score)
    return AurocWithInterval(auroc, low, high,
                             float(average_precision_score(y, score)), float(y.mean()))


def oriented_score(x_train: np.ndarray, y_train: np.ndarray, x_eval: np.ndarray) -> np.ndarray:
    """P(correct) of one feature on the evaluation split, its sign learnt on the training split (higher = trust more)."""
    return _fit_predict(np.asarray(x_train).reshape(-1, 1), y_train, np.asarray(x_eval).reshape(-1, 1))


def single_feature_auroc(
    x_train: np.ndarray, y_train: np.ndarray, x_eval: np.ndarray, y_eval: np.ndarray, n_boot: int, seed: int
) -> AurocWithInterval:
    """AUROC on validation of one feature, its direction (sign) learnt on the sae split, never on validation."""
    score = oriented_score(x_train, y_train, x_eval)
    return auroc_interval(y_eval, score, n_boot, seed)


@dataclass
class PairedDifference:
    """A difference of two validation AUROCs with its paired bootstrap 95% interval, and what it lets one say."""

    delta: float
    low: float
    high: float

    @property
    def above(self) -> bool:
        """The whole interval lies above +tolerance: a gain."""
        return self.low > GAIN_TOLERANCE

    @property
    def below(self) -> bool:
        """The whole interval lies below -tolerance: a loss."""
        return self.high < -GAIN_TOLERANCE

    def to_dict(self) -> dict[str, float | bool]:
        return {"delta": self.delta, "low": self.low, "high": self.high, "gain": self.above, "loss": self.below}


def _paired(point: float, boots: np.ndarray) -> PairedDifference:
    low, high = _percentiles(boots)
    return PairedDifference(point, low, high)


@dataclass
class BeyondConfounds:
    """Does a predictor add anything to the confounds? All models fitted on sae, compared on validation.

    Three comparisons, each with a paired bootstrap 95% interval (the same
    resampled validation tasks score every model):

    - ``delta``: combined model against the better of the confound model and
      chance (0.5) on each resample. Why not against the confound model
      alone: a confound model that is worse than chance on validation (it
      over-fitted the sae split) would make any combined model look like a
      gain; chance is what a reader gets for nothing.
    - ``vs_confounds``: combined against the confound model alone (the raw
      gain, for reference).
    - ``vs_predictor``: combined against the predictor alone: adding the
      confounds can make the combination *worse* than the predictor.
    - ``combined``: the combined model's AUROC against 0.5.

    ``adds_information`` is True only when the interval of ``delta`` lies
    wholly above :data:`GAIN_TOLERANCE`.
    """

    auroc_confounds: float
    auroc_with_predictor: float
    auroc_predictor: float
    delta: float
    delta_low: float
    delta_high: float
    vs_confounds: PairedDifference
    vs_predictor: PairedDifference
    combined_low: float
    combined_high: float

    @property
    def adds_information(self) -> bool:
        """True when the whole 95% interval of the gain over max(confounds, chance) lies above the tolerance."""
        return self.delta_low > GAIN_TOLERANCE

    @property
    def combined_beats_chance(self) -> bool:
        return self.combined_low > 0.5 + GAIN_TOLERANCE

    def to_dict(self) -> dict[str, Any]:
        return {
            "auroc_confounds": self.auroc_confounds, "auroc_with_predictor": self.auroc_with_predictor,
            "auroc_predictor": self.auroc_predictor,
            "delta": self.delta, "delta_low": self.delta_low, "delta_high": self.delta_high,
            "reference": "max(AUROC of the confound model, 0.5) on each resample",
            "tolerance": GAIN_TOLERANCE,
            "adds_information": self.adds_information,
            "vs_confounds": self.vs_confounds.to_dict(),
            "vs_predictor": self.vs_predictor.to_dict(),
            "combined_vs_chance": {"auroc": self.auroc_with_predictor, "low": self.combined_low,
                                   "high": self.combined_high, "above_chance": self.combined_beats_chance},
        }


def beyond_confounds(
    confounds_train: np.ndarray,
    predictor_train: np.ndarray,
    y_train: np.ndarray,
    confounds_eval: np.ndarray,
    predictor_eval: np.ndarray,
    y_eval: np.ndarray,
    n_boot: int,
    seed: int,
) -> BeyondConfounds:
    """Logistic regressions on the confounds alone, the predictor alone and both; compared on validation.

    Every interval is a paired bootstrap over validation tasks (one set of
    resamples scores all three models), so a gain within noise is not called one.
    """
    c_train, c_eval = np.asarray(confounds_train, float), np.asarray(confounds_eval, float)
    p_train = np.asarray(predictor_train, float).reshape(len(c_train), -1)
    p_eval = np.asarray(predictor_eval, float).reshape(len(c_eval), -1)
    y_eval = np.asarray(y_eval, dtype=bool)
    base = _fit_predict(c_train, y_train, c_eval)
    alone = _fit_predict(p_train, y_train, p_eval)
    full = _fit_predict(np.hstack([c_train, p_train]), y_train, np.hstack([c_eval, p_eval]))
    a_base, a_alone, a_full = (float(roc_auc_score(y_eval, s)) for s in (base, alone, full))
    b_base, b_alone, b_full = (_bootstrap(y_eval, s, n_boot, seed) for s in (base, alone, full))
    gain = _paired(a_full - max(a_base, 0.5), b_full - np.maximum(b_base, 0.5))
    combined_low, combined_high = _percentiles(b_full)
    return BeyondConfounds(
        a_base, a_full, a_alone, gain.delta, gain.low, gain.high,
        vs_confounds=_paired(a_full - a_base, b_full - b_base),
        vs_predictor=_paired(a_full - a_alone, b_full - b_alone),
        combined_low=combined_low, combined_high=combined_high,
    )


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    norm = np.linalg.norm(a) * np.linalg.norm(b)
    if norm == 0:
        raise ValueError("cosine of a zero vector is undefined")
    return float(a @ b / norm)


def cosine_table(directions: dict[str, np.ndarray]) -> list[dict[str, float | str]]:
    """Every pair of named directions with their cosine similarity (sign kept: opposite directions give -1)."""
    names = list(directions)
    return [
        {"a": names[i], "b": names[j], "cosine": cosine(directions[names[i]], directions[names[j]])}
        for i in range(len(names))
        for j in range(i + 1, len(names))
    ]


def rate_interval(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson interval for ``successes`` of ``n``, from the beta quantiles (scipy).

    ``successes`` may be fractional (an expected count over orderings of tied
    tasks): the same beta quantiles then interpolate between the exact
    intervals of the neighbouring integers, and equal them at integers.
    """
    alpha = (1.0 - confidence) / 2.0
    lo = 0.0 if successes <= 0 else float(sps.beta.ppf(alpha, successes, n - successes + 1))
    hi = 1.0 if successes >= n else float(sps.beta.ppf(1.0 - alpha, successes + 1, n - successes))
    return lo, hi


def coverage_curve(score: np.ndarray, passed: np.ndarray, coverages: tuple[float, ...] = COVERAGES) -> list[dict[str, float]]:
    """Pass rate among the top ``x`` share of tasks ranked by ``score`` (higher = more trusted), ties averaged.

    Why averaged: a sparse latent gives most tasks the same score, and
    breaking those ties by task position would make the curve the pass rate
    in task-id order. Tasks tied with the last one trusted are taken in
    expectation over every ordering of the tie: all tasks scoring above the
    tie, plus the needed share m/g of the g tied tasks' passes. Each point
    carries a Clopper-Pearson 95% interval (:func:`rate_interval`) for the
    pass rate among the trusted tasks.
    """
    score, passed = np.asarray(score, dtype=float), np.asarray(passed, dtype=bool)
    order = np.argsort(-score, kind="stable")
    s_sorted, p_sorted = score[order], passed[order].astype(float)
    cum_passes = np.concatenate([[0.0], np.cumsum(p_sorted)])
    rows = []
    for x in coverages:
        k = max(1, math.ceil(x * len(score)))
        boundary = s_sorted[k - 1]
        above = int(np.sum(s_sorted > boundary))
        tied = np.flatnonzero(s_sorted == boundary)
        g, tied_passes = tied.size, float(p_sorted[tied].sum())
        expected = cum_passes[above] + (k - above) * tied_passes / g
        lo, hi = rate_interval(expected, k)
        rows.append({"coverage": float(x), "n_trusted": int(k), "pass_rate": float(expected / k),
                     "expected_passes": float(expected), "n_tied_at_cut": int(g), "ci_lo": lo, "ci_hi": hi})
    return rows
