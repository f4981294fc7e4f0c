"""Calibration bench: does every test the summary reports hold its error rate, and can it see a real effect?

Why: a p-value or an interval is only worth what its null is worth. For each
test, this script simulates many small studies with the project's *own*
functions (nothing is re-implemented here): studies where the null is true,
to count how often the test still says "yes" (the false-positive rate, which
must stay at or under 0.06 at a nominal 0.05), and studies with a planted
effect, to count how often it says "yes" then (power; for an interval, how
often it excludes the null value).

One line per test:

    <test> false_positive_rate <x> coverage_or_power <y> n_sim <n>

Tests (docs/statistics.md says what each null is and why):

- ``phase2_family_p``: :class:`common.statistics.stats.PermutationNull` over both
  directions, verdict by :func:`common.statistics.stats.monte_carlo_verdict`; null =
  labels exchangeable with every latent; "yes" = either direction's rank-1
  latent beats the null.
- ``auroc_interval``: :func:`common.statistics.stats.auroc_with_ci`; null = score
  unrelated to the label; "yes" = the 95% interval excludes 0.5.
- ``auroc_interval_sparse``: the same interval for a sparse latent on a
  transfer set's shape (7 passing, 157 failing tasks), firing on 5% of tasks
  at random; "yes" = the interval excludes 0.5 (the effect: it fires on 60%
  of the passing tasks).
- ``auroc_interval_small_class``: the same interval on that shape for a
  latent that is not sparse (firing on half the tasks at random), where
  every class's placements vary; "yes" = the interval excludes 0.5 (the
  effect: it fires on 95% of the passing tasks).
- ``auroc_interval_sparse_sampled``: that latent at a temperature > 0
  (390 tasks x 3 samples, 1.8% of samples passing; the latent is the task's
  value): :func:`phase3_validation.statistical.auroc_interval`, whose interval
  resamples tasks; the effect: tasks where it fires pass 15% of samples.
- ``mcnemar``: :func:`common.statistics.stats.mcnemar_exact`; null = discordant tasks
  equally likely either way; "yes" = p <= 0.05.
- ``coverage_interval``: :func:`phase3_validation.baselines.coverage_curve`
  at 50% coverage; null = score unrelated to passing (half the studies with
  a sparse, heavily tied score); "yes" = the interval excludes the true pass
  rate (under the effect: its lower end is above it).
- ``beyond_confounds_gain``: :func:`phase3_validation.baselines.beyond_confounds`;
  null = the predictor carries nothing beyond the confound (half the studies
  with a confound whose sign flips between the splits, so the confound model
  is worse than chance on validation); "yes" = ``adds_information``.
- ``steering_vs_controls``: registered when ``bench/calibration_steering.py``
  exists (its ``simulate(n_sim, seed) -> (false_positive_rate, power)``).

Usage (from the repo root): python3 -m bench.calibration [--n-sim N] [--seed S] [--only NAME ...] [--check]
"""

from __future__ import annotations

import argparse
import importlib
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from common.seeding import derive_seed
from common.statistics.stats import PermutationNull, auroc_with_ci, latent_scores, mcnemar_exact, monte_carlo_verdict
from phase3_validation.baselines import beyond_confounds, coverage_curve
from phase3_validation.statistical import auroc_interval as task_auroc_interval

NOMINAL = 0.05
MAX_FPR = 0.06
DEFAULT_N_SIM = 1000

Trial = Callable[[np.random.Generator], bool]


@dataclass(frozen=True)
class Entry:
    """One calibrated test: ``run(n_sim, seed)`` returns (false-positive rate, coverage or power)."""

    name: str
    run: Callable[[int, int], tuple[float, float]]


def from_trials(null: Trial, effect: Trial) -> Callable[[int, int], tuple[float, float]]:
    """An entry's ``run`` from two one-study functions: each returns True when the test says "yes"."""
    def run(n_sim: int, seed: int) -> tuple[float, float]:
        null_rng, effect_rng = (np.random.default_rng([seed, k]) for k in (0, 1))
        fpr = sum(null(null_rng) for _ in range(n_sim)) / n_sim
        power = sum(effect(effect_rng) for _ in range(n_sim)) / n_sim
        return fpr, power
    return run


def _seed(rng: np.random.Generator) -> int:
    return int(rng.integers(1 << 31))


# ------------------------------------------------------------------ Phase 2 family p

P2_TASKS, P2_LATENTS, P2_SHUFFLES = 60, 150, 499


def _phase2_study(rng: np.random.Generator, planted: bool) -> bool:
    correct = rng.permutation(np.arange(P2_TASKS) < P2_TASKS // 2)
    # Latents of two layers with different firing rates, as Phase 2 streams them.
    layers = [rng.random((P2_TASKS, P2_LATENTS // 2)) < rate for rate in (0.1, 0.3)]
    if planted:  # one latent fires on 80% of correct tasks and 20% of incorrect ones
        layers[0][:, 0] = np.where(correct, rng.random(P2_TASKS) < 0.8, rng.random(P2_TASKS) < 0.2)
    null = PermutationNull(correct, n_permutations=P2_SHUFFLES, seed=_seed(rng))
    best = {"correct": -np.inf, "incorrect": -np.inf}
    for fire in layers:
        null.update(fire)
        sep = latent_scores(fire.astype(np.float32), correct)["separation_correct"]
        best["correct"] = max(best["correct"], float(sep.max()))
        best["incorrect"] = max(best["incorrect"], float((-sep).max()))
    return any(monte_carlo_verdict(float(null.p_value(best[d], d)), P2_SHUFFLES, NOMINAL)["decision"] == "below"
               for d in best)


# ------------------------------------------------------------------ AUROC interval

AUROC_TASKS, AUROC_BOOT = 80, 1000


def _auroc_study(rng: np.random.Generator, shift: float) -> bool:
    y = rng.permutation(np.arange(AUROC_TASKS) < AUROC_TASKS * 0.4)
    score = rng.normal(size=AUROC_TASKS) + shift * y
    _, lo, hi = auroc_with_ci(y, score, n_bootstrap=AUROC_BOOT, seed=_seed(rng))
    return not lo <= 0.5 <= hi


# A latent on a transfer set's shape (few passing tasks). Sparse: silent on most
# tasks, so often silent on every passing one. Dense: firing on half the tasks,
# so DeLong's variance is estimated from 7 varying placements.
SPARSE_POSITIVES, SPARSE_NEGATIVES, SPARSE_FIRING, DENSE_FIRING = 7, 157, 0.05, 0.5


def _transfer_latent_study(rng: np.random.Generator, firing_failing: float, firing_passing: float) -> bool:
    """The latent fires (exponential value, else 0) on each task with its class's chance; does the interval exclude 0.5?"""
    y = np.arange(SPARSE_POSITIVES + SPARSE_NEGATIVES) < SPARSE_POSITIVES
    firing = np.where(y, firing_passing, firing_failing)
    score = np.where(rng.random(y.size) < firing, rng.exponential(size=y.size), 0.0)
    _, lo, hi = auroc_with_ci(y, score)
    return not lo <= 0.5 <= hi


# The same latent at temperatures > 0: a task's value (one prompt) for all its samples, interval over tasks.
SAMPLED_TASKS, SAMPLES_PER_TASK, SAMPLED_PASS_RATE = 390, 3, 0.018


def _sparse_sampled_study(rng: np.random.Generator, pass_when_firing: float) -> bool:
    groups = np.repeat(np.arange(SAMPLED_TASKS), SAMPLES_PER_TASK)
    fires = rng.random(SAMPLED_TASKS) < SPARSE_FIRING
    while True:
        y = rng.random(groups.size) < np.where(fires, pass_when_firing, SAMPLED_PASS_RATE)[groups]
        if y.any():
            break
    score = np.where(fires, rng.exponential(size=SAMPLED_TASKS), 0.0)[groups]
    _, lo, hi, _ = task_auroc_interval(y, score, AUROC_BOOT, _seed(rng), groups)
    return not lo <= 0.5 <= hi


# ------------------------------------------------------------------ McNemar

MCNEMAR_TASKS, MCNEMAR_DISCORDANT = 200, 0.1


def _mcnemar_study(rng: np.random.Generator, share_b: float) -> bool:
    discordant = rng.random(MCNEMAR_TASKS) < MCNEMAR_DISCORDANT
    b = int((discordant & (rng.random(MCNEMAR_TASKS) < share_b)).sum())
    return mcnemar_exact(b, int(discordant.sum()) - b) <= NOMINAL


# ------------------------------------------------------------------ coverage interval

COVERAGE_TASKS, PASS_RATE = 100, 0.4


def _coverage_study(rng: np.random.Generator, planted: bool) -> bool:
    passed = rng.random(COVERAGE_TASKS) < PASS_RATE
    if planted:
        score = passed + rng.normal(0, 0.7, COVERAGE_TASKS)
    elif rng.random() < 0.5:  # a sparse latent: most tasks tie at 0
        score = np.where(rng.random(COVERAGE_TASKS) < 0.2, rng.random(COVERAGE_TASKS), 0.0)
    else:
        score = rng.normal(size=COVERAGE_TASKS)
    row = coverage_curve(score, passed, coverages=(0.5,))[0]
    if planted:
        return row["ci_lo"] > PASS_RATE
    return not row["ci_lo"] <= PASS_RATE <= row["ci_hi"]


# ------------------------------------------------------------------ beyond confounds

BC_TASKS, BC_BOOT = 150, 500


def _confound_split(rng: np.random.Generator, sign: float, signal: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    confound, predictor = rng.normal(size=BC_TASKS), rng.normal(size=BC_TASKS)
    y = (sign * confound + signal * predictor + rng.normal(size=BC_TASKS) > 0).astype(int)
    return confound[:, None], predictor, y


def _beyond_study(rng: np.random.Generator, signal: float) -> bool:
    # In the null, half the studies have a confound whose sign flips between the splits: the confound model is
    # then worse than chance on validation, the case a gain measured from the confound model alone inflates.
    flip = signal == 0.0 and rng.random() < 0.5
    c_tr, p_tr, y_tr = _confound_split(rng, 1.0, signal)
    c_ev, p_ev, y_ev = _confound_split(rng, -1.0 if flip else 1.0, signal)
    result = beyond_confounds(c_tr, p_tr, y_tr, c_ev, p_ev, y_ev, BC_BOOT, _seed(rng))
    return result.adds_information


# ------------------------------------------------------------------ registry

ENTRIES: list[Entry] = [
    Entry("phase2_family_p", from_trials(lambda r: _phase2_study(r, False), lambda r: _phase2_study(r, True))),
    Entry("auroc_interval", from_trials(lambda r: _auroc_study(r, 0.0), lambda r: _auroc_study(r, 1.0))),
    Entry("mcnemar", from_trials(lambda r: _mcnemar_study(r, 0.5), lambda r: _mcnemar_study(r, 0.8))),
    Entry("coverage_interval", from_trials(lambda r: _coverage_study(r, False), lambda r: _coverage_study(r, True))),
    Entry("beyond_confounds_gain", from_trials(lambda r: _beyond_study(r, 0.0), lambda r: _beyond_study(r, 1.0))),
    Entry("auroc_interval_sparse",
          from_trials(lambda r: _transfer_latent_study(r, SPARSE_FIRING, SPARSE_FIRING),
                      lambda r: _transfer_latent_study(r, SPARSE_FIRING, 0.6))),
    Entry("auroc_interval_small_class",
          from_trials(lambda r: _transfer_latent_study(r, DENSE_FIRING, DENSE_FIRING),
                      lambda r: _transfer_latent_study(r, DENSE_FIRING, 0.95))),
    Entry("auroc_interval_sparse_sampled",
          from_trials(lambda r: _sparse_sampled_study(r, SAMPLED_PASS_RATE), lambda r: _sparse_sampled_study(r, 0.15))),
]


def entries() -> list[Entry]:
    """The registry, with the steering-vs-controls simulation when its module is present."""
    out = list(ENTRIES)
    try:
        steering = importlib.import_module("bench.calibration_steering")
    except ModuleNotFoundError as exc:
        if exc.name not in ("bench.calibration_steering",):
            raise
        return out
    out.append(Entry("steering_vs_controls", steering.simulate))
    return out


def entry_seed(seed: int, name: str) -> int:
    """An entry's seed from the run's and its name: ``--only`` and a new entry leave every other line as it was."""
    return derive_seed(seed, zlib.crc32(name.encode("utf-8")))


def format_line(name: str, fpr: float, power: float, n_sim: int) -> str:
    return f"{name} false_positive_rate {fpr:.4f} coverage_or_power {power:.4f} n_sim {n_sim}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-sim", type=int, default=DEFAULT_N_SIM, help="simulated studies per test and condition")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these tests")
    p.add_argument("--check", action="store_true", help=f"exit 1 when a false-positive rate is above {MAX_FPR}")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.n_sim < 1:
        print(f"error: --n-sim must be >= 1, got {args.n_sim}", file=sys.stderr)
        return 2
    chosen = entries()
    if args.only:
        unknown = sorted(set(args.only) - {e.name for e in chosen})
        if unknown:
            print(f"error: unknown test(s) {', '.join(unknown)}; known: {', '.join(e.name for e in chosen)}",
                  file=sys.stderr)
            return 2
        chosen = [e for e in chosen if e.name in args.only]
    worst = 0.0
    for entry in chosen:
        fpr, power = entry.run(args.n_sim, entry_seed(args.seed, entry.name))
        worst = max(worst, fpr)
        print(format_line(entry.name, fpr, power, args.n_sim), flush=True)
    return 1 if args.check and worst > MAX_FPR else 0


if __name__ == "__main__":
    sys.exit(main())
