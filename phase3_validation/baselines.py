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

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

CONFOUNDS = ("n_prompt_tokens", "cyclomatic_complexity", "n_asserts", "asserts_chars")
COVERAGES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def _fit_predict(x_train: np.ndarray, y_train: np.ndarray, x_eval: np.ndarray) -> np.ndarray:
    """A standardised logistic regression fitted on the training split; P(correct) on the evaluation split."""
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    model.fit(np.asarray(x_train, dtype=float), np.asarray(y_train, dtype=int))
    return model.predict_proba(np.asarray(x_eval, dtype=float))[:, 1]


def _bootstrap_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def _auc_or_nan(y: np.ndarray, score: np.ndarray) -> float:
    return float(roc_auc_score(y, score)) if 0 < y.sum() < len(y) else math.nan


@dataclass
class AurocWithInterval:
    """An AUROC on the validation split with a percentile bootstrap 95% interval."""

    auroc: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        return {"auroc": self.auroc, "low": self.low, "high": self.high}


def auroc_interval(y: np.ndarray, score: np.ndarray, n_boot: int, seed: int) -> AurocWithInterval:
    y, score = np.asarray(y, dtype=int), np.asarray(score, dtype=float)
    boots = [_auc_or_nan(y[i], score[i]) for i in _bootstrap_indices(len(y), n_boot, seed)]
    low, high = np.nanpercentile(boots, [2.5, 97.5])
    return AurocWithInterval(float(roc_auc_score(y, score)), float(low), float(high))


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
class BeyondConfounds:
    """Does a predictor add anything to the confounds? Both models fitted on sae, compared on validation."""

    auroc_confounds: float
    auroc_with_predictor: float
    delta: float
    delta_low: float
    delta_high: float

    @property
    def adds_information(self) -> bool:
        """True when the whole 95% interval of the AUROC gain lies above zero."""
        return self.delta_low > 0

    def to_dict(self) -> dict[str, float | bool]:
        return {
            "auroc_confounds": self.auroc_confounds, "auroc_with_predictor": self.auroc_with_predictor,
            "delta": self.delta, "delta_low": self.delta_low, "delta_high": self.delta_high,
            "adds_information": self.adds_information,
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
    """Logistic regression on the confounds alone against confounds plus the predictor.

    The AUROC gain on validation gets a paired bootstrap interval (the same
    resampled tasks score both models), so a gain within noise is not called one.
    """
    c_train, c_eval = np.asarray(confounds_train, float), np.asarray(confounds_eval, float)
    p_train = np.asarray(predictor_train, float).reshape(len(c_train), -1)
    p_eval = np.asarray(predictor_eval, float).reshape(len(c_eval), -1)
    y_eval = np.asarray(y_eval, dtype=int)
    base = _fit_predict(c_train, y_train, c_eval)
    full = _fit_predict(np.hstack([c_train, p_train]), y_train, np.hstack([c_eval, p_eval]))
    a_base, a_full = float(roc_auc_score(y_eval, base)), float(roc_auc_score(y_eval, full))
    deltas = [
        _auc_or_nan(y_eval[i], full[i]) - _auc_or_nan(y_eval[i], base[i])
        for i in _bootstrap_indices(len(y_eval), n_boot, seed)
    ]
    low, high = np.nanpercentile(deltas, [2.5, 97.5])
    return BeyondConfounds(a_base, a_full, a_full - a_base, float(low), float(high))


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


def coverage_curve(score: np.ndarray, passed: np.ndarray, coverages: tuple[float, ...] = COVERAGES) -> list[dict[str, float]]:
    """Pass rate among the top ``x`` share of tasks ranked by ``score`` (higher = more trusted).

    Ties in the score are broken by the task's position, which is fixed, so the
    curve is reproducible; a constant score gives the overall pass rate at
    every coverage only in expectation, not exactly.
    """
    score, passed = np.asarray(score, dtype=float), np.asarray(passed, dtype=bool)
    order = np.lexsort((np.arange(len(score)), -score))
    rows = []
    for x in coverages:
        k = max(1, math.ceil(x * len(score)))
        kept = passed[order[:k]]
        rows.append({"coverage": float(x), "n_trusted": int(k), "pass_rate": float(kept.mean())})
    return rows
