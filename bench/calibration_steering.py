"""Calibration of the steering-vs-controls test: its false-positive rate under the null, its power under an effect.

Why: "steering beats its controls" is a headline claim, so the test behind it
must hold its error rate when the answer is no. This simulates studies the
size of MBPP's validation split and runs the project's own function
(``phase3_validation.steering_stats.permutation_test_vs_controls``, through
``steering_eval.task_effects`` as Phase 3 does) on each.

Null: 390 tasks, a share of them passing at alpha = 0; the target and 3
controls are interchangeable: each run breaks each initially-correct program
independently with the same per-task probability (tasks differ in how
fragile they are: the probability is drawn per task from a Beta distribution
with the run-level mean), at 2% and at 5% broken per run, for both
directions (a correct-preferring direction predicts corrections, so breaking
counts against it; an incorrect-preferring one predicts corruptions). The
false-positive rate is the largest share of p < 0.05 over those four
scenarios.

Planted effect: the same breaking (2%) for every run, and the target of a
correct-preferring direction also corrects 4% of the initially-incorrect
tasks; power is the share of p < 0.05.

Run: ``python -m bench.calibration_steering [--n-sim N] [--seed S]``; prints
``steering_vs_controls false_positive_rate <x> coverage_or_power <y> n_sim <n>``.
"""

from __future__ import annotations

import argparse

import numpy as np

from phase3_validation.steering_eval import task_effects
from phase3_validation.steering_stats import permutation_test_vs_controls

N_TASKS = 390
N_CONTROLS = 3
PASS_RATE = 0.42
BREAK_RATES = (0.02, 0.05)
FRAGILITY_SHAPE = 0.5  # Beta(a, a (1 - m) / m): mean m, most tasks sturdy, a few fragile
PLANTED_CORRECTION = 0.04
LEVEL = 0.05


def _break_probabilities(rng: np.random.Generator, mean: float, n: int) -> np.ndarray:
    return rng.beta(FRAGILITY_SHAPE, FRAGILITY_SHAPE * (1 - mean) / mean, size=n)


def _study(rng: np.random.Generator, break_rate: float, direction: str, correction: float) -> float:
    """One simulated study's p-value: alpha = 0 labels, then target and controls, each run independently."""
    base = rng.random(N_TASKS) < PASS_RATE
    fragile = _break_probabilities(rng, break_rate, N_TASKS)
    runs = []
    for run in range(N_CONTROLS + 1):
        after = base & ~(rng.random(N_TASKS) < fragile)
        if run == 0 and correction:
            after |= ~base & (rng.random(N_TASKS) < correction)
        runs.append(after)
    effects = [task_effects(base, after, direction) for after in runs]
    return float(permutation_test_vs_controls(effects[0], effects[1:])["p"])


def simulate(n_sim: int, seed: int) -> tuple[float, float]:
    """(false-positive rate, power) of the steering-vs-controls test at :data:`LEVEL` over ``n_sim`` studies each.

    The false-positive rate is the worst of the null scenarios (module
    docstring), each simulated ``n_sim`` times; power is from ``n_sim``
    studies with the planted effect.
    """
    if n_sim < 1:
        raise ValueError(f"n_sim must be >= 1, got {n_sim}")
    rng = np.random.default_rng(seed)
    fprs = []
    for break_rate in BREAK_RATES:
        for direction in ("correct", "incorrect"):
            p = np.array([_study(rng, break_rate, direction, 0.0) for _ in range(n_sim)])
            fprs.append(float((p < LEVEL).mean()))
    planted = np.array([_study(rng, BREAK_RATES[0], "correct", PLANTED_CORRECTION) for _ in range(n_sim)])
    return max(fprs), float((planted < LEVEL).mean())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-sim", type=int, default=1000, help="simulated studies per scenario (>= 1000 to certify)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.n_sim < 1:
        parser.error(f"--n-sim must be at least 1, got {args.n_sim}")
    fpr, power = simulate(args.n_sim, args.seed)
    print(f"steering_vs_controls false_positive_rate {fpr:.4f} coverage_or_power {power:.4f} n_sim {args.n_sim}")


if __name__ == "__main__":
    main()
