"""The steering tests' arithmetic: target against controls, and what counts as a degenerate generation.

Why a module of its own: these functions decide whether "steering beats its
controls" and whether a corrupted program is a wrong program or a broken
model. They are pure (numpy only), so ``bench/calibration_steering.py`` can
simulate them thousands of times and the tests can check them against brute
force. docs/steering.md states the nulls and definitions in prose.

Target against controls (:func:`permutation_test_vs_controls`). On each task
the target and its k controls each have an effect (+1 moved the way the
hypothesis predicts, -1 the other way, 0 unchanged). The null is that the
k + 1 runs are *exchangeable within each task*: which of them is the target
is arbitrary. The statistic is the target's total effect minus the mean
control's, summed over tasks; its null distribution comes from giving, on
every task independently, the target's label to each of the k + 1 runs with
probability 1 / (k + 1). Because each task's row of k + 1 values is fixed,
the statistic is a sum of independent per-task draws, so its exact
distribution is a convolution, computed exactly when the effects are
integers (as they are here) and by Monte Carlo otherwise, with the Monte
Carlo standard error reported. The test is one-sided: the hypothesis fixes
the sign of the effect. A sign test of target minus *mean* control is not a
test of this null: when every run breaks a few programs at random, "the
target broke this task and the mean control broke a third of it" and the
reverse are not equally likely, and it reports p < 0.05 far more often than
5% of the time.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any

import numpy as np

from common.errors import PipelineError

NULL = "target and controls exchangeable within each task (which of the k + 1 runs is the target is arbitrary)"
ALTERNATIVE = "greater (the target's effect in the predicted direction exceeds the controls')"
MAX_EXACT_SUPPORT = 1_000_000  # widest integer range of the statistic computed exactly
DEFAULT_RESAMPLES = 20_000
_TIE = 1e-9

# Degenerate generations (docs/steering.md): the definition's constants, recorded in the results.
REPEAT_MAX_UNIT = 16  # longest repeated unit, in characters (a short n-gram of tokens)
REPEAT_MIN_COPIES = 4  # the periodic stretch holds at least this many copies of its unit
REPEAT_MIN_SHARE = 0.5  # ... and covers at least this share of the (whitespace-collapsed) text
REPEAT_MIN_CHARS = 16  # shorter texts are never called repetitive
DEGENERATE_RULE = (
    "a generation is degenerate when extraction found no program in it that parses (empty extracted code: prose "
    "only, or code broken from its first statement), or when, after "
    "stripping it and collapsing every run of whitespace to one space, it holds at least "
    f"{REPEAT_MIN_CHARS} characters and a stretch made of at least {REPEAT_MIN_COPIES} back-to-back copies of one "
    f"unit of 1-{REPEAT_MAX_UNIT} characters covers at least {REPEAT_MIN_SHARE:.0%} of it (e.g. '8888...', "
    "'return return return ...')"
)


# --------------------------------------------------------------------------- target vs controls


def _effects_matrix(target: np.ndarray, controls: list[np.ndarray]) -> np.ndarray:
    """(n_tasks, k + 1) effects, the target in column 0; one line for misaligned input."""
    t = np.asarray(target, dtype=np.float64)
    if t.ndim != 1:
        raise PipelineError(f"target effects must be a vector, got shape {t.shape}")
    if not controls:
        raise PipelineError("no control runs to compare the target with")
    cols = [t] + [np.asarray(c, dtype=np.float64) for c in controls]
    if any(c.shape != t.shape for c in cols):
        raise PipelineError(f"target and control effects must be aligned vectors, got {[c.shape for c in cols]}")
    values = np.stack(cols, axis=1)
    if not np.isfinite(values).all():
        raise PipelineError("target and control effects must be finite numbers")
    return values


def _exact_upper_tail(values: np.ndarray, observed_sum: float) -> float | None:
    """P(sum of one uniform draw per row >= observed_sum), by convolution; None when not integer or too wide."""
    if not np.allclose(values, np.round(values)):
        return None
    ints = np.round(values).astype(np.int64)
    varying = ints[(ints != ints[:, :1]).any(axis=1)]
    constant = int(ints[(ints == ints[:, :1]).all(axis=1), 0].sum())
    lows = varying.min(axis=1) if len(varying) else np.zeros(0, dtype=np.int64)
    width = int((varying.max(axis=1) - lows).sum()) if len(varying) else 0
    if width + 1 > MAX_EXACT_SUPPORT:
        return None
    k1 = ints.shape[1]
    dist = np.ones(1)
    # Rows with the same multiset of values have the same distribution: convolve each kind once per row.
    for row, count in Counter(tuple(sorted(r - r.min())) for r in varying).items():
        pmf = np.bincount(np.asarray(row, dtype=np.int64)) / k1
        for _ in range(count):
            dist = np.convolve(dist, pmf)
    offset = constant + int(lows.sum())  # the smallest attainable sum
    first = int(math.ceil(observed_sum - _TIE)) - offset
    return float(np.clip(dist[max(first, 0):].sum(), 0.0, 1.0))


def permutation_test_vs_controls(target: np.ndarray, controls: list[np.ndarray], n_resamples: int = DEFAULT_RESAMPLES,
                                 seed: int = 0) -> dict[str, Any]:
    """One-sided within-task permutation test of the target's effect against its controls (module docstring).

    ``target``: per-task effects of the target run; ``controls``: the same for
    each control run, aligned. Returns the statistic (total target effect minus
    the mean control's total), the p-value, how it was computed (``exact``:
    the whole null distribution by convolution; ``monte_carlo``: ``n_resamples``
    random relabellings, p = (1 + #{>= observed}) / (1 + n_resamples), with its
    standard error ``mc_se``), and the counts behind it.
    """
    values = _effects_matrix(target, controls)
    if n_resamples < 1:
        raise PipelineError(f"n_resamples must be >= 1, got {n_resamples}")
    k = values.shape[1] - 1
    observed = float(values[:, 0].sum())
    statistic = float((values[:, 0] - values[:, 1:].mean(axis=1)).sum())
    informative = int((values != values[:, :1]).any(axis=1).sum())
    out: dict[str, Any] = {"null": NULL, "alternative": ALTERNATIVE, "n_tasks": int(values.shape[0]),
                           "n_controls": k, "n_tasks_runs_differ": informative, "statistic": statistic}
    exact = _exact_upper_tail(values, observed)
    if exact is not None:
        return {**out, "method": "exact", "p": exact, "mc_se": 0.0, "n_resamples": None}
    rng = np.random.default_rng(seed)
    rows = np.arange(values.shape[0])
    hits, done = 0, 0
    chunk = max(1, min(n_resamples, 2_000_000 // max(1, values.shape[0])))
    while done < n_resamples:
        m = min(chunk, n_resamples - done)
        picks = rng.integers(0, k + 1, size=(m, values.shape[0]))
        hits += int((values[rows, picks].sum(axis=1) >= observed - _TIE).sum())
        done += m
    p = (1 + hits) / (1 + n_resamples)
    return {**out, "method": "monte_carlo", "p": p, "mc_se": math.sqrt(p * (1 - p) / n_resamples),
            "n_resamples": int(n_resamples)}


# --------------------------------------------------------------------------- degenerate generations


def _collapse(text: str) -> str:
    return re.sub(r"\s+", " ", text or "").strip()


def longest_repeat(text: str) -> tuple[int, int]:
    """(unit length, characters covered) of the longest stretch of ``text`` with period <= :data:`REPEAT_MAX_UNIT`.

    The stretch must hold at least :data:`REPEAT_MIN_COPIES` copies of its
    unit; (0, 0) when none does. ``text`` is used as given (callers collapse
    whitespace first).
    """
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    best = (0, 0)
    for unit in range(1, min(REPEAT_MAX_UNIT, codes.size // REPEAT_MIN_COPIES) + 1):
        same = np.concatenate([[False], codes[:-unit] == codes[unit:], [False]])
        edges = np.flatnonzero(np.diff(same.astype(np.int8)))
        if edges.size == 0:
            continue
        run = int((edges[1::2] - edges[::2]).max())  # the longest run of positions i with text[i] == text[i + unit]
        covered = run + unit
        if covered >= REPEAT_MIN_COPIES * unit and covered > best[1]:
            best = (unit, covered)
    return best


def degenerate_reason(generated_text: str | None, extracted_code: str | None) -> str | None:
    """``"no_code"``, ``"repetition"`` or None (not degenerate), by :data:`DEGENERATE_RULE`."""
    if not (extracted_code or "").strip():
        return "no_code"
    text = _collapse(generated_text or "")
    if len(text) < REPEAT_MIN_CHARS:
        return None
    _, covered = longest_repeat(text)
    return "repetition" if covered >= REPEAT_MIN_SHARE * len(text) else None


def is_degenerate(generated_text: str | None, extracted_code: str | None) -> bool:
    """Whether a generation is degenerate (:data:`DEGENERATE_RULE`): a broken model, not a wrong program."""
    return degenerate_reason(generated_text, extracted_code) is not None


def degenerate_rates(baseline_correct: np.ndarray, steered_correct: np.ndarray, degenerate: np.ndarray) -> dict[str, Any]:
    """How many of a run's generations are degenerate, and its corruption rate with and without them.

    Why both rates: a steered model that emits '8888...' fails every test, so
    its corruption rate counts a broken model as wrong code. The rate without
    degenerate outputs counts only the initially-correct tasks whose steered
    generation is not degenerate (numerator and denominator both); the rate
    with them is the ordinary one. Intervals are exact (Clopper-Pearson).
    """
    from common.statistics.stats import clopper_pearson  # scipy: kept out of the simulation's import path

    before = np.asarray(baseline_correct, dtype=bool)
    after = np.asarray(steered_correct, dtype=bool)
    broken = np.asarray(degenerate, dtype=bool)
    if not before.shape == after.shape == broken.shape or before.ndim != 1:
        raise PipelineError(f"baseline, steered and degenerate flags must be aligned vectors, got "
                            f"{before.shape}, {after.shape} and {broken.shape}")
    kept = before & ~broken
    n_kept, k_kept = int(kept.sum()), int((kept & ~after).sum())
    rate, lo, hi = (float("nan"),) * 3
    if n_kept:
        lo, hi = clopper_pearson(k_kept, n_kept)
        rate = k_kept / n_kept
    n = int(broken.size)
    return {
        "n_degenerate": int(broken.sum()), "degenerate_rate": float(broken.mean()) if n else float("nan"),
        "n_corrupted_degenerate": int((before & ~after & broken).sum()),
        "n_initially_correct_nondegenerate": n_kept, "n_corrupted_nondegenerate": k_kept,
        "corruption_rate_nondegenerate": rate, "corruption_nondegenerate_ci_lo": lo,
        "corruption_nondegenerate_ci_hi": hi,
    }
