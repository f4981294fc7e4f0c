"""Latent scores, the shuffled-label null, and the validation metrics.

Why this module exists: docs/design.md section 4 scores every latent of every layer
(26 x 16k of them) on a few hundred tasks, and section 3 rule 7 asks for a
baseline or an interval next to every number. Scoring is vectorised over all
latents of a layer at once (section 5); the metrics and tests delegate to
scipy and scikit-learn rather than re-deriving them, so that a thesis reader
can trust them without reading this file.

Conventions used throughout:

- A latent "fires" on a task when its activation is > 0 (rule 9).
- ``correct`` is a boolean vector over tasks: True for a correct (pass@1)
  solution.
- Separation scores: ``s_c = f_correct - f_incorrect`` (correct-preferring)
  and ``s_i = -s_c`` (incorrect-preferring).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats as sps
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
)

from common.errors import PipelineError

logger = logging.getLogger(__name__)

DIRECTIONS: tuple[str, str] = ("correct", "incorrect")
"""The two directions a latent can prefer; keys of the permutation null."""

# Scores computed elsewhere (e.g. in float32, or re-read from JSON) may differ
# from the null's float64 values in the last bits; counting a null maximum
# within this tolerance as "beating" the score keeps the p-value conservative.
_TIE_TOLERANCE = 1e-9


def _as_labels(correct: np.ndarray, n: int | None = None) -> np.ndarray:
    """Validate the label vector and return it as bool; fail fast on a one-class split."""
    labels = np.asarray(correct)
    if labels.ndim != 1:
        raise PipelineError(f"labels must be a 1-D vector, got shape {labels.shape}")
    if labels.dtype != bool:
        if not np.isin(labels, (0, 1)).all():
            raise PipelineError("labels must be boolean (True = correct)")
        labels = labels.astype(bool)
    if n is not None and labels.shape[0] != n:
        raise PipelineError(f"{labels.shape[0]} labels for {n} tasks: every task needs one label")
    n_correct = int(labels.sum())
    if n_correct == 0 or n_correct == labels.shape[0]:
        missing = "correct" if n_correct == 0 else "incorrect"
        raise PipelineError(
            f"no {missing} samples among {labels.shape[0]} tasks: separation scores need both classes"
        )
    return labels


def latent_scores(acts: np.ndarray, correct: np.ndarray) -> dict[str, np.ndarray]:
    """Score every latent (column of ``acts``) for how it separates the two classes.

    Args:
        acts: (n_tasks, n_latents) SAE activations, one row per task.
        correct: (n_tasks,) bool, True where the task's solution is correct.

    Returns a dict of (n_latents,) float64 arrays:
        ``f_correct``, ``f_incorrect``: share of tasks of that class where the
        latent fires (activation > 0); ``separation_correct`` (f_correct -
        f_incorrect) and ``separation_incorrect`` (its negation);
        ``mean_correct``, ``mean_incorrect``: mean activation per class;
        ``t_stat``: Welch's t (correct minus incorrect), from
        ``scipy.stats.ttest_ind(equal_var=False)`` along the task axis.

    Welch's t where it is degenerate (documented so that rankings are not
    surprised by it):
        - a latent with the same value on every task (in particular one that
          never fires) gets t = 0.0: the classes certainly do not differ;
        - otherwise, if one class has a single task its variance is undefined
          and t = nan;
        - zero variance in both classes but different means gives scipy's
          +-inf (perfect separation with no spread).

    Firing shares are computed as integer counts divided by class sizes in
    float64, exactly as :class:`PermutationNull` does, so an observed score and
    a null maximum with the same counts compare equal bit for bit.

    Raises:
        PipelineError: if one class is empty or the shapes disagree.
    """
    acts = np.asarray(acts)
    if acts.ndim != 2:
        raise PipelineError(f"activations must be (tasks, latents), got shape {acts.shape}")
    labels = _as_labels(correct, acts.shape[0])
    n_c = int(labels.sum())
    n_i = labels.shape[0] - n_c

    fire = acts > 0
    count_c = fire[labels].sum(axis=0, dtype=np.int64)
    count_i = fire[~labels].sum(axis=0, dtype=np.int64)
    f_correct = count_c / n_c
    f_incorrect = count_i / n_i
    separation = f_correct - f_incorrect

    a_c = acts[labels].astype(np.float64, copy=False)
    a_i = acts[~labels].astype(np.float64, copy=False)
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        # Degenerate columns (constant, one-task class) are handled below; the
        # "catastrophic cancellation" and division warnings they raise are noise.
        warnings.simplefilter("ignore", RuntimeWarning)
        t_stat = np.asarray(sps.ttest_ind(a_c, a_i, axis=0, equal_var=False).statistic, dtype=np.float64)
    constant = (acts == acts[:1]).all(axis=0)
    t_stat = np.where(constant, 0.0, t_stat)

    return {
        "f_correct": f_correct,
        "f_incorrect": f_incorrect,
        "separation_correct": separation,
        "separation_incorrect": -separation,
        "mean_correct": a_c.mean(axis=0),
        "mean_incorrect": a_i.mean(axis=0),
        "t_stat": t_stat,
    }


@dataclass(eq=False)
class PermutationNull:
    """Family-wise null for the best separation score, built one layer at a time.

    Why: with hundreds of tasks and 26 x 16k latents, the largest separation
    score under shuffled labels is far from zero, so a ranked latent is only
    interesting if it beats the maximum over *all* layers and latents of
    shuffled data (docs/design.md section 4). Phase 2 holds one SAE in memory at a
    time, so the null is accumulated per layer: :meth:`update` takes one
    layer's firing matrix and keeps a running maximum per permutation and
    direction.

    The P seeded label shuffles are fixed at construction, as an (n, P) 0/1
    matrix; ``fire.T @ shuffled`` then gives every latent's count of firing
    "correct" tasks under every shuffle in one matrix product. The product is
    float32 (0/1 sums are exact below 2**24 tasks) and chunked over
    permutations so that the (latents x chunk) block stays under
    ``max_block_bytes``.
    """

    correct: np.ndarray
    n_permutations: int = 200
    seed: int = 0
    max_block_bytes: int = 256 * 2**20
    labels: np.ndarray = field(init=False, repr=False)
    shuffled: np.ndarray = field(init=False, repr=False)
    null_max: dict[str, np.ndarray] = field(init=False, repr=False)
    n_latents: int = field(init=False, default=0)
    n_layers: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if self.n_permutations < 1:
            raise PipelineError(f"n_permutations must be >= 1, got {self.n_permutations}")
        self.labels = _as_labels(self.correct)
        rng = np.random.default_rng(self.seed)
        # Each column is a permutation of the real labels, so class sizes are
        # kept: the null asks "which tasks", not "how many".
        self.shuffled = np.stack(
            [rng.permutation(self.labels) for _ in range(self.n_permutations)], axis=1
        ).astype(np.float32)
        self.null_max = {d: np.full(self.n_permutations, -np.inf) for d in DIRECTIONS}

    @property
    def n_tasks(self) -> int:
        return int(self.labels.shape[0])

    def update(self, fire_layer: np.ndarray) -> None:
        """Fold one layer's firing matrix (n_tasks, n_latents; bool or activations > 0) into the maxima."""
        fire_layer = np.asarray(fire_layer)
        if fire_layer.ndim != 2 or fire_layer.shape[0] != self.n_tasks:
            raise PipelineError(
                f"firing matrix must be ({self.n_tasks}, latents), got shape {fire_layer.shape}"
            )
        if fire_layer.dtype != bool:
            fire_layer = fire_layer > 0
        n_c = int(self.labels.sum())
        n_i = self.n_tasks - n_c
        fire_t = np.ascontiguousarray(fire_layer.T, dtype=np.float32)  # (d, n)
        total = fire_layer.sum(axis=0, dtype=np.int64).astype(np.float64)[:, None]  # (d, 1)
        d = fire_t.shape[0]
        # float32 product block plus its float64 separation: 12 bytes per cell.
        chunk = max(1, min(self.n_permutations, self.max_block_bytes // max(1, 12 * d)))
        for start in range(0, self.n_permutations, chunk):
            stop = min(start + chunk, self.n_permutations)
            count_c = (fire_t @ self.shuffled[:, start:stop]).astype(np.float64)  # exact integers
            # Same arithmetic as latent_scores: counts / class sizes in float64.
            separation = count_c / n_c - (total - count_c) / n_i
            np.maximum(self.null_max["correct"][start:stop], separation.max(axis=0),
                       out=self.null_max["correct"][start:stop])
            np.maximum(self.null_max["incorrect"][start:stop], (-separation).max(axis=0),
                       out=self.null_max["incorrect"][start:stop])
        self.n_latents += d
        self.n_layers += 1

    @property
    def family_max(self) -> np.ndarray:
        """Per shuffle, the largest separation in *either* direction over every latent seen.

        Why one family for both directions: Phase 2 reports a winner in each
        direction, so a per-direction null would test twice at 0.05 and let
        the family-wise error reach about 10%. Comparing either direction's
        score with the maximum over both keeps it at 0.05 for the pair.
        """
        return np.maximum(self.null_max["correct"], self.null_max["incorrect"])

    def p_value(self, score: float | np.ndarray, direction: str) -> np.ndarray:
        """Family-wise p-value(s) of observed separation score(s) in ``direction``, against both directions' maxima."""
        if direction not in DIRECTIONS:
            raise PipelineError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        if self.n_layers == 0:
            raise PipelineError("the permutation null has seen no layer yet")
        return family_p_values(score, self.family_max)

    def to_dict(self) -> dict:
        """What the results file records: seed, sizes, and the null maxima themselves."""
        return {
            "n_permutations": self.n_permutations,
            "seed": self.seed,
            "n_tasks": self.n_tasks,
            "n_layers": self.n_layers,
            "n_latents": self.n_latents,
            "null_max_correct": self.null_max["correct"].tolist(),
            "null_max_incorrect": self.null_max["incorrect"].tolist(),
            "null_max_family": self.family_max.tolist(),
        }


def permutation_null(
    fire_by_layer: Iterable[np.ndarray] | Callable[[], Iterator[np.ndarray]],
    correct: np.ndarray,
    n_permutations: int = 200,
    seed: int = 0,
) -> dict:
    """Run :class:`PermutationNull` over all layers and return its :meth:`~PermutationNull.to_dict`.

    ``fire_by_layer`` is an iterable of (n_tasks, n_latents_L) firing matrices,
    or a callable returning one, so a caller can stream layers (e.g. a
    generator that loads one SAE at a time) instead of holding them all.
    """
    null = PermutationNull(np.asarray(correct), n_permutations=n_permutations, seed=seed)
    layers = fire_by_layer() if callable(fire_by_layer) else fire_by_layer
    for fire in layers:
        null.update(fire)
    if null.n_layers == 0:
        raise PipelineError("permutation null: no layers were given")
    return null.to_dict()


def family_p_values(scores: float | np.ndarray, null_max: np.ndarray) -> np.ndarray:
    """p = (1 + #{null maxima >= score}) / (1 + P), for a scalar or an array of scores.

    The +1 counts the observed labelling as one of the permutations, so p is
    never 0 and the smallest possible value is 1 / (1 + P). A null maximum
    within 1e-9 of a score counts as beating it (conservative on ties).
    """
    null_max = np.asarray(null_max, dtype=np.float64)
    scores_arr = np.asarray(scores, dtype=np.float64)
    if np.isnan(scores_arr).any() or np.isnan(null_max).any():
        raise PipelineError("family p-values of nan scores are undefined")
    # Sorting once makes this O((S + P) log P) instead of S x P comparisons.
    sorted_null = np.sort(null_max)
    beaten = null_max.size - np.searchsorted(sorted_null, scores_arr - _TIE_TOLERANCE, side="left")
    return (1.0 + beaten) / (1.0 + null_max.size)


def monte_carlo_verdict(p: float, n_permutations: int, alpha: float = 0.05) -> dict[str, Any]:
    """A permutation p-value with its Monte Carlo standard error, and whether that error can flip it at ``alpha``.

    Why: with P shuffles the p-value is itself an estimate, with standard
    error sqrt(p (1 - p) / P); 50 shuffles can call the same latent 0.137 or
    0.043 depending on the seed. A verdict is only given when p is more than
    two standard errors from ``alpha``; otherwise it is "undecided at this
    number of shuffles", with the number of shuffles that would put that p
    two standard errors away (4 p (1 - p) / (p - alpha)^2).
    """
    if n_permutations < 1:
        raise PipelineError(f"n_permutations must be >= 1, got {n_permutations}")
    if not 0.0 <= p <= 1.0:
        raise PipelineError(f"a p-value must lie in [0, 1], got {p}")
    se = math.sqrt(p * (1.0 - p) / n_permutations)
    gap = abs(p - alpha)
    decided = gap > 2.0 * se
    needed: int | None = None
    if not decided:
        needed = math.ceil(4.0 * p * (1.0 - p) / gap**2) + 1 if gap > 0 else None
    return {
        "p": float(p), "mc_se": se, "n_permutations": int(n_permutations), "alpha": alpha,
        "decision": ("below" if p < alpha else "above") if decided else "undecided",
        "shuffles_needed": needed,
        "more_shuffles_needed": None if needed is None else max(0, needed - int(n_permutations)),
    }


def shuffles_for_margin(margin: float = 0.01, alpha: float = 0.05) -> int:
    """Shuffles so that two Monte Carlo standard errors at p = ``alpha`` are at most ``margin``.

    The default (0.01) leaves undecided only p-values in (0.04, 0.06): about
    1,900 shuffles, which is why Phase 2's default is 2,000.
    """
    return math.ceil(4.0 * alpha * (1.0 - alpha) / margin**2)


# --------------------------------------------------------------------------- validation metrics


def _binary(y: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise PipelineError(f"{name} must be a 1-D vector, got shape {arr.shape}")
    if arr.dtype != bool and not np.isin(arr, (0, 1)).all():
        raise PipelineError(f"{name} must be binary (0/1 or bool)")
    return arr.astype(bool)


def _two_classes(y_true: np.ndarray) -> np.ndarray:
    y = _binary(y_true, "y_true")
    if y.all() or not y.any():
        raise PipelineError(f"y_true has only one class among {y.size} samples: AUROC/threshold undefined")
    return y


AUROC_CI_METHODS = ("delong", "bootstrap")


def auroc_with_ci(
    y_true: np.ndarray,
    scores: np.ndarray,
    n_bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    method: str = "delong",
) -> tuple[float, float, float]:
    """AUROC with a confidence interval (rule 7): DeLong's variance on the logit scale, or a percentile bootstrap.

    Why DeLong by default: the calibration bench (bench/calibration.py)
    measured the percentile bootstrap's interval excluding 0.5 for an
    unrelated score in about 6.3% of 80-task studies at a nominal 5%;
    DeLong's variance, with the interval built on the logit scale (so it
    stays inside [0, 1] and is not too narrow near the ends), held 4.6% there
    and at most 5.2% from 20 to 200 tasks. ``n_bootstrap`` and ``seed`` are
    used by ``method="bootstrap"`` only (resamples holding one class are
    skipped; lo and hi are nan if none had both).
    Returns (auroc, lo, hi).
    """
    if method not in AUROC_CI_METHODS:
        raise PipelineError(f"AUROC interval method must be one of {AUROC_CI_METHODS}, got {method!r}")
    y = _two_classes(y_true)
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != y.shape:
        raise PipelineError(f"{s.shape[0] if s.ndim else 0} scores for {y.size} labels")
    if method == "delong":
        return delong_interval(y, s, confidence)
    auroc = float(roc_auc_score(y, s))
    boot = bootstrap_aurocs(y, s, n_bootstrap, seed)
    if boot.size < n_bootstrap:
        logger.info("AUROC bootstrap: %d of %d resamples had one class and were skipped",
                    n_bootstrap - boot.size, n_bootstrap)
    if boot.size == 0:
        return auroc, float("nan"), float("nan")
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.percentile(boot, [100 * alpha, 100 * (1 - alpha)])
    return auroc, float(lo), float(hi)


def delong_interval(y_true: np.ndarray, scores: np.ndarray, confidence: float = 0.95) -> tuple[float, float, float]:
    """(AUROC, lo, hi): DeLong's variance of the AUROC, the interval built on the logit scale.

    The AUROC is the mean over positives of V10 (the share of negatives scored
    below it, ties counting half), and over negatives of V01; DeLong's
    variance is var(V10) / n_pos + var(V01) / n_neg. Both placements come from
    mid-ranks (``scipy.stats.rankdata``), so this is O(n log n).

    Why a fallback: when one class's placements are all equal (a sparse SAE
    latent silent on every one of a few passing tasks, a class of one task,
    a constant score), DeLong estimates that class's share of the variance
    as zero, though the class's next tasks could differ. The interval then
    shrinks to the other class's noise: simulated with 7 passing and 157
    failing tasks and a latent firing at random on 5% of them, it excluded
    0.5 in 67% of studies (28% with 24 and 366). In that case the variance is
    the largest any AUROC of this value can have, A (1 - A) / min(n_pos,
    n_neg) (van Dantzig's bound), so the interval is conservative rather
    than false. Perfect separation (AUROC 0 or 1) has no variance to
    estimate at all: ``separation_interval``.

    Why Student's t, not the normal quantile: DeLong's variance is estimated
    from the placements, and with a few tasks in one class that estimate is
    itself noisy. The degrees of freedom are Welch-Satterthwaite's for the
    sum of the two classes' parts (about n_pos - 1 when the passing class's
    part dominates). Simulated with 7 passing and 157 failing tasks and a
    latent firing on half of them at random, the normal quantile excluded
    0.5 in 7.4% of null studies (bench.calibration's
    auroc_interval_small_class), the t quantile in 3.7%; and for a latent
    whose true AUROC is 0.15 the normal interval covered it in about 93% of
    studies, the t interval in about 95% (the tests simulate both). The
    bound is a largest variance, not an estimate: it keeps the normal
    quantile.
    """
    y = np.asarray(y_true, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    v10, v01 = delong_placements(y, s)
    auroc = float(v10.mean())
    if auroc in (0.0, 1.0):
        return bound_interval(auroc, n_pos, n_neg, confidence)
    parts = (v10.var(ddof=1) / n_pos if n_pos > 1 else 0.0, v01.var(ddof=1) / n_neg if n_neg > 1 else 0.0)
    if placements_degenerate(v10) or placements_degenerate(v01):
        return logit_interval(auroc, max(sum(parts), largest_auroc_variance(auroc, n_pos, n_neg)), confidence)
    return logit_interval(auroc, sum(parts), confidence, df=welch_df(parts, (n_pos, n_neg)))


def bound_interval(auroc: float, n_pos: int, n_neg: int, confidence: float = 0.95) -> tuple[float, float, float]:
    """(AUROC, lo, hi) with the largest variance an AUROC of this value can have; at 0 or 1, ``separation_interval``."""
    if auroc in (0.0, 1.0):  # the bound is 0 there
        return separation_interval(auroc, n_pos, n_neg, confidence)
    return logit_interval(auroc, largest_auroc_variance(auroc, n_pos, n_neg), confidence)


def separation_interval(auroc: float, n_pos: int, n_neg: int, confidence: float = 0.95) -> tuple[float, float, float]:
    """(AUROC, lo, hi) for perfect separation: Clopper-Pearson's interval for min(n_pos, n_neg) successes of as many.

    Why not the point: with 3 passing and 3 failing tasks, a score unrelated
    to the label separates them perfectly in 2 of the 20 equally likely
    orders, and a point interval would call each of those different from
    chance. van Dantzig's bound says an AUROC varies at most like a share of
    min(n_pos, n_neg) trials; at the edge that share's exact interval is the
    honest one. With 5 tasks in the smaller class it still holds 0.5.
    """
    m = min(n_pos, n_neg)
    ci = sps.binomtest(m, m).proportion_ci(confidence_level=confidence, method="exact")
    if auroc == 1.0:
        return 1.0, float(ci.low), 1.0
    return 0.0, 0.0, float(1.0 - ci.low)


def welch_df(parts: tuple[float, float], sizes: tuple[int, int]) -> float:
    """Welch-Satterthwaite degrees of freedom of a variance summed from two estimated parts, var_i / n_i."""
    return sum(parts) ** 2 / sum(v * v / (n - 1) for v, n in zip(parts, sizes))


def delong_placements(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(V10, V01): each positive's share of negatives scored below it, each negative's of positives above (ties half)."""
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    ranks = sps.rankdata(s)
    v10 = (ranks[y] - sps.rankdata(s[y])) / n_neg
    v01 = 1.0 - (ranks[~y] - sps.rankdata(s[~y])) / n_pos
    return v10, v01


def largest_auroc_variance(auroc: float, n_pos: int, n_neg: int) -> float:
    """van Dantzig's bound: no AUROC estimate of this value from these class sizes varies more than A (1 - A) / min."""
    return auroc * (1.0 - auroc) / min(n_pos, n_neg)


def logit_interval(auroc: float, var: float, confidence: float = 0.95,
                   df: float | None = None) -> tuple[float, float, float]:
    """(AUROC, lo, hi): the interval of logit(AUROC) by the delta method, mapped back into (0, 1).

    ``df``: the quantile is Student's t with these degrees of freedom (the
    variance estimated from few tasks); None: the normal quantile.
    """
    if var <= 0.0 or auroc in (0.0, 1.0):
        return auroc, auroc, auroc
    q = 0.5 + confidence / 2.0
    z = float(sps.norm.ppf(q) if df is None else sps.t.ppf(q, df))
    centre, half = math.log(auroc / (1.0 - auroc)), z * math.sqrt(var) / (auroc * (1.0 - auroc))
    return auroc, 1.0 / (1.0 + math.exp(-(centre - half))), 1.0 / (1.0 + math.exp(-(centre + half)))


def placements_degenerate(placements: np.ndarray) -> bool:
    """True when a class's DeLong placements cannot estimate its variance: one task, or all equal."""
    return placements.size < 2 or bool(np.ptp(placements) == 0.0)


def bootstrap_aurocs(y_true: np.ndarray, scores: np.ndarray, n_bootstrap: int, seed: int) -> np.ndarray:
    """AUROC of each bootstrap resample that holds both classes, all resamples at once.

    Why not ``roc_auc_score`` in a loop: it costs milliseconds a call, so 1000
    resamples for each latent and temperature of Phase 3 add up to minutes.
    The AUROC equals the Mann-Whitney statistic, U / (n_pos * n_neg), with
    U = (sum of the positives' ranks) - n_pos (n_pos + 1) / 2 and tied scores
    given average ranks (``scipy.stats.rankdata``), which is what
    ``roc_auc_score`` computes; the tests check the two agree.
    """
    y = np.asarray(y_true, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, y.size, size=(n_bootstrap, y.size))
    y_b = y[idx]
    n_pos = y_b.sum(axis=1)
    keep = (n_pos > 0) & (n_pos < y.size)
    y_b, n_pos = y_b[keep], n_pos[keep].astype(np.float64)
    ranks = sps.rankdata(s[idx[keep]], axis=1)
    u = (ranks * y_b).sum(axis=1) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * (y.size - n_pos))


def best_f1_threshold(y_true: np.ndarray, scores: np.ndarray) -> tuple[float | None, float]:
    """The threshold t maximising F1 of the rule ``predict positive iff score >= t``, among informative ones.

    Why a function of its own: thresholds are chosen on the hyperparams split
    and only applied to validation (rule 6). Uses sklearn's
    ``precision_recall_curve``, whose thresholds are the distinct scores; on a
    tie in F1 the lowest such threshold wins.

    Only thresholds that *split* the tasks are candidates: the lowest distinct
    score flags every task positive, and a rule that predicts one class for
    all tasks has F1, precision and recall equal to their trivial baselines
    by construction (for a sparse latent, "fires at >= 0"). When no threshold
    splits the tasks (all scores equal) the result is ``(None, nan)``: "no
    informative threshold", which callers must report as such.
    """
    y = _two_classes(y_true)
    s = np.asarray(scores, dtype=np.float64)
    precision, recall, thresholds = precision_recall_curve(y, s)
    precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
    n_flagged = (s[None, :] >= thresholds[:, None]).sum(axis=1)
    informative = (n_flagged > 0) & (n_flagged < s.size)
    if not informative.any():
        return None, float("nan")
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    f1 = np.where(informative, f1, -1.0)
    best = int(np.argmax(f1))
    return float(thresholds[best]), float(f1[best])


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float | int]:
    """F1, precision, recall, accuracy, with the baselines rule 7 puts beside them.

    ``always_positive_f1`` is the F1 of predicting positive for every sample
    (= 2b / (1 + b) for base rate b); ``base_rate`` is the share of positives,
    which is also the precision of that trivial classifier. Undefined ratios
    (no predicted positives) are 0, as sklearn's ``zero_division=0``.
    """
    y = _binary(y_true, "y_true")
    p = _binary(y_pred, "y_pred")
    if y.shape != p.shape:
        raise PipelineError(f"{p.size} predictions for {y.size} labels")
    if y.size == 0:
        raise PipelineError("classification metrics of zero samples")
    return {
        "f1": float(f1_score(y, p, zero_division=0)),
        "precision": float(precision_score(y, p, zero_division=0)),
        "recall": float(recall_score(y, p, zero_division=0)),
        "accuracy": float(accuracy_score(y, p)),
        "always_positive_f1": float(f1_score(y, np.ones_like(y), zero_division=0)),
        "base_rate": float(y.mean()),
        "n": int(y.size),
        "n_positive": int(y.sum()),
        "tp": int((y & p).sum()),
        "fp": int((~y & p).sum()),
        "fn": int((y & ~p).sum()),
        "tn": int((~y & ~p).sum()),
    }


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval for a rate k/n, e.g. a correction rate (rule 7)."""
    if n < 1 or not 0 <= k <= n:
        raise PipelineError(f"rate interval needs 0 <= k <= n and n >= 1, got k={k}, n={n}")
    ci = sps.binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="exact")
    return float(ci.low), float(ci.high)


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar test: binomial test of b vs c discordant pairs at p = 1/2.

    Why paired: steering and its control run on the same problems (rule 8).
    With no discordant pairs there is no evidence either way and p = 1.0.
    """
    if b < 0 or c < 0:
        raise PipelineError(f"discordant counts must be >= 0, got b={b}, c={c}")
    if b + c == 0:
        return 1.0
    return float(sps.binomtest(int(b), int(b + c), 0.5, alternative="two-sided").pvalue)


def paired_sign_test(target_flips: np.ndarray, control_flips: list[np.ndarray]) -> dict[str, Any]:
    """Exact sign test of the target's per-task outcome against the *mean* control outcome on each task.

    Outcomes are numbers per task (a flip as 0/1, or +1/0/-1 for a move the
    predicted / no / the other way). Why: the controls run on the same tasks
    as the target, so they are not independent trials; each task contributes
    one paired difference, d = target - mean control, and the test is the
    two-sided exact binomial test of #(d > 0) vs #(d < 0). With one control
    and 0/1 flips this is the exact McNemar test on the discordant tasks.
    Identical controls give the mean of one control, hence exactly one
    control's p (more controls only sharpen each task's control estimate,
    never add tasks).
    """
    t = np.asarray(target_flips, dtype=np.float64)
    if not control_flips:
        raise PipelineError("no control runs to compare the target with")
    controls = np.stack([np.asarray(c, dtype=np.float64) for c in control_flips])
    if controls.shape[1:] != t.shape or t.ndim != 1:
        raise PipelineError(f"paired flips must be aligned vectors, got {t.shape} and {controls.shape[1:]}")
    d = t - controls.mean(axis=0)
    above, below = int((d > 1e-12).sum()), int((d < -1e-12).sum())
    return {"n": int(t.size), "n_target_above": above, "n_target_below": below,
            "mean_control": float(controls.mean()) if t.size else float("nan"),
            "p": mcnemar_exact(above, below)}
