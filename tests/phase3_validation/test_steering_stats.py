"""Steering tests' arithmetic: the within-task permutation test, degenerate outputs, the site norm, the calibration."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from bench import calibration_steering
from common.errors import PipelineError
from phase3_validation.steering_eval import (
    control_comparison,
    measure_site_norm,
    saved_layer_for,
    task_effects,
)
from phase3_validation.steering_stats import (
    degenerate_rates,
    degenerate_reason,
    is_degenerate,
    longest_repeat,
    permutation_test_vs_controls,
)


def _brute_force_p(target: np.ndarray, controls: list[np.ndarray]) -> float:
    """P(sum >= observed) over every one of the (k + 1)^n assignments of the target label, task by task."""
    values = np.stack([target, *controls], axis=1).astype(float)
    n, k1 = values.shape
    observed = values[:, 0].sum()
    sums = [values[np.arange(n), list(choice)].sum() for choice in itertools.product(range(k1), repeat=n)]
    return float(np.mean(np.asarray(sums) >= observed - 1e-9))


def test_exact_permutation_p_equals_brute_force_enumeration():
    rng = np.random.default_rng(3)
    for _ in range(25):
        n, k = int(rng.integers(1, 7)), int(rng.integers(1, 4))
        target = rng.integers(-1, 2, n)
        controls = [rng.integers(-1, 2, n) for _ in range(k)]
        out = permutation_test_vs_controls(target, controls)
        assert out["method"] == "exact" and out["mc_se"] == 0.0
        assert out["p"] == pytest.approx(_brute_force_p(target, controls), abs=1e-12)
        assert out["statistic"] == pytest.approx(float((target - np.mean(controls, axis=0)).sum()))


def test_monte_carlo_when_effects_are_not_integers_reports_its_error():
    rng = np.random.default_rng(4)
    target = rng.integers(-1, 2, 6) + 0.5
    controls = [rng.integers(-1, 2, 6) + 0.5 for _ in range(2)]
    out = permutation_test_vs_controls(target, controls, n_resamples=20_000, seed=1)
    exact = _brute_force_p(target, controls)
    assert out["method"] == "monte_carlo" and out["n_resamples"] == 20_000
    assert out["mc_se"] == pytest.approx(np.sqrt(out["p"] * (1 - out["p"]) / 20_000))
    assert abs(out["p"] - exact) < 4 * out["mc_se"] + 1e-4


def test_target_identical_to_its_controls_is_no_evidence_and_bad_input_is_one_line():
    effects = np.array([1, 0, -1, 1, 1])
    out = permutation_test_vs_controls(effects, [effects, effects, effects])
    assert out["p"] == 1.0 and out["n_tasks_runs_differ"] == 0 and out["statistic"] == 0.0
    with pytest.raises(PipelineError, match="aligned"):
        permutation_test_vs_controls(np.zeros(3), [np.zeros(4)])
    with pytest.raises(PipelineError, match="no control"):
        permutation_test_vs_controls(np.zeros(3), [])


def test_target_that_alone_moves_many_tasks_is_significant_and_random_breaking_is_not():
    base = np.array([True] * 40 + [False] * 40)
    target = base.copy()
    target[40:52] = True  # corrects 12 of 40
    control = base.copy()
    control[0] = False  # breaks one
    out = control_comparison(base, target, [control, base.copy(), base.copy()], "correct")
    assert out["p_vs_controls"] == out["permutation_test"]["p"] < 0.01
    # Every run breaks a different task (exchangeable): the sign test of target - mean control saw 3 vs 1 here.
    runs = []
    for i in range(4):
        run = base.copy()
        run[i] = False
        runs.append(run)
    null = control_comparison(base, runs[0], runs[1:], "correct")
    assert null["p_vs_controls"] > 0.5


def test_degenerate_outputs_by_definition():
    program = "def add(a, b):\n    return a + b\n"
    assert degenerate_reason(program, program) is None
    assert degenerate_reason("8" * 200, "8" * 200) == "repetition"
    assert degenerate_reason(program + "8888888888" * 10, program) == "repetition"
    assert degenerate_reason(program + " return" * 30, program) == "repetition"
    assert degenerate_reason("The answer is below.", "") == "no_code"
    assert degenerate_reason(None, None) == "no_code"
    assert not is_degenerate("x = 1111", "x = 1111")  # too short to call repetitive
    # A real solution's indentation and a short repeated run are not half of the text.
    loop = "def f(xs):\n    total = 0\n    for x in xs:\n        total += x\n    return total\n# 0000\n"
    assert not is_degenerate(loop, loop)
    assert longest_repeat("abcabcabcabc") == (3, 12)
    assert longest_repeat("abcabc") == (0, 0)  # two copies are not a repetition


def test_degenerate_rates_count_corruption_with_and_without_broken_outputs():
    before = np.array([True, True, True, True, False, False])
    after = np.array([False, False, True, True, True, False])
    broken = np.array([True, False, False, False, False, True])
    out = degenerate_rates(before, after, broken)
    assert out["n_degenerate"] == 2 and out["degenerate_rate"] == pytest.approx(2 / 6)
    assert out["n_corrupted_degenerate"] == 1
    assert (out["n_corrupted_nondegenerate"], out["n_initially_correct_nondegenerate"]) == (1, 3)
    assert out["corruption_rate_nondegenerate"] == pytest.approx(1 / 3)
    assert out["corruption_nondegenerate_ci_lo"] < 1 / 3 < out["corruption_nondegenerate_ci_hi"]


def test_task_effects_signs_feed_the_test():
    base = np.array([True, False])
    assert task_effects(base, np.array([False, True]), "correct").tolist() == [-1, 1]
    assert task_effects(base, np.array([False, True]), "incorrect").tolist() == [1, -1]


def test_saved_layer_cross_check_only_where_the_site_was_saved():
    assert saved_layer_for(3, "resid_post", [0, 1, 2, 3]) == 3
    assert saved_layer_for(3, "resid_pre", [0, 1, 2, 3]) == 2
    assert saved_layer_for(3, "resid_mid", [0, 1, 2, 3]) is None
    assert saved_layer_for(0, "resid_pre", [0, 1, 2, 3]) is None


def test_site_norm_is_the_last_prompt_token_at_that_site_whatever_the_batching(tiny_model):
    model, tokenizer = tiny_model
    prompts = ["def add(a, b):", "Write a function that reverses a list of numbers and", "x ="]
    expected = {}
    with torch.no_grad():  # independent of the hooks: hidden_states[L] is resid_pre(L), [L + 1] resid_post(L) but last
        for prompt in prompts:
            out = model(**tokenizer(prompt, return_tensors="pt"), output_hidden_states=True)
            for i, hidden in enumerate(out.hidden_states[:-1]):
                expected.setdefault(i, []).append(float(hidden[0, -1].double().norm()))
    one = measure_site_norm(model, tokenizer, prompts, 1, "resid_pre", batch_size=1)
    batched = measure_site_norm(model, tokenizer, prompts, 1, "resid_pre", batch_size=3)
    assert one == pytest.approx(np.mean(expected[1]), rel=1e-5)
    assert batched == pytest.approx(one, rel=1e-4)  # left padding with mask-derived positions: same vectors
    assert measure_site_norm(model, tokenizer, prompts, 0, "resid_post", 2) == pytest.approx(np.mean(expected[1]), rel=1e-4)
    mid = measure_site_norm(model, tokenizer, prompts, 1, "resid_mid", 2)
    assert np.isfinite(mid) and abs(mid - one) > 1e-3  # a site of its own, measured, not borrowed
    with pytest.raises(PipelineError, match="no prompts"):
        measure_site_norm(model, tokenizer, [], 1, "resid_mid", 2)


def test_calibration_bench_runs_small_and_holds_its_level():
    fpr, power = calibration_steering.simulate(n_sim=60, seed=1)
    assert 0.0 <= fpr <= 0.12 and power >= 0.6
    with pytest.raises(ValueError):
        calibration_steering.simulate(0, 0)
