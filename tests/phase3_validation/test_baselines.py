"""Baselines on synthetic data whose answer is known by construction."""

import numpy as np
import pytest
from scipy.stats import binomtest

from phase3_validation.baselines import (
    GAIN_TOLERANCE,
    beyond_confounds,
    cosine,
    cosine_table,
    coverage_curve,
    rate_interval,
    single_feature_auroc,
)


def _tasks(n, seed):
    rng = np.random.default_rng(seed)
    length = rng.normal(200, 50, n)
    # Correctness depends on prompt length only: shorter prompts pass more often.
    passed = rng.random(n) < 1 / (1 + np.exp((length - 200) / 25))
    return length, passed.astype(int), rng


def test_a_noisy_copy_of_prompt_length_adds_nothing_beyond_it():
    length_tr, y_tr, rng = _tasks(400, 0)
    length_ev, y_ev, rng2 = _tasks(400, 1)
    latent_tr = length_tr + rng.normal(0, 5, len(length_tr))
    latent_ev = length_ev + rng2.normal(0, 5, len(length_ev))
    result = beyond_confounds(length_tr[:, None], latent_tr, y_tr, length_ev[:, None], latent_ev, y_ev, 300, 0)
    assert not result.adds_information
    assert abs(result.delta) < 0.03
    # The latent alone predicts well: it is the confound that it copies.
    assert single_feature_auroc(latent_tr, y_tr, latent_ev, y_ev, 200, 0).auroc > 0.7


def test_a_signal_independent_of_the_confound_is_found():
    length_tr, _, rng = _tasks(400, 2)
    length_ev, _, _ = _tasks(400, 3)
    hidden_tr, hidden_ev = rng.normal(size=400), rng.normal(size=400)
    y_tr = (hidden_tr + 0.3 * rng.normal(size=400) > 0).astype(int)
    y_ev = (hidden_ev + 0.3 * rng.normal(size=400) > 0).astype(int)
    result = beyond_confounds(length_tr[:, None], hidden_tr, y_tr, length_ev[:, None], hidden_ev, y_ev, 300, 0)
    assert result.adds_information and result.delta > 0.3


def test_feature_direction_is_learnt_on_the_training_split():
    """A feature that predicts *failure* still gets an AUROC above 0.5: its sign comes from the sae split."""
    length_tr, y_tr, _ = _tasks(300, 4)
    length_ev, y_ev, _ = _tasks(300, 5)
    assert single_feature_auroc(length_tr, y_tr, length_ev, y_ev, 100, 0).auroc > 0.7


def test_cosines_of_known_directions():
    a = np.array([1.0, 0.0, 0.0])
    assert cosine(a, np.array([0.0, 2.0, 0.0])) == pytest.approx(0.0)
    assert cosine(a, 3 * a) == pytest.approx(1.0)
    assert cosine(a, -a) == pytest.approx(-1.0)
    table = cosine_table({"latent": a, "probe": 2 * a, "diff_means": np.array([0.0, 0.0, 1.0])})
    assert [(r["a"], r["b"]) for r in table] == [("latent", "probe"), ("latent", "diff_means"), ("probe", "diff_means")]
    assert [round(r["cosine"], 6) for r in table] == [1.0, 0.0, 0.0]
    with pytest.raises(ValueError):
        cosine(a, np.zeros(3))


def test_perfect_predictor_reaches_full_pass_rate_at_the_base_rate():
    rng = np.random.default_rng(0)
    passed = rng.random(200) < 0.3
    base_rate = passed.mean()
    curve = coverage_curve(passed.astype(float) + rng.normal(0, 0.01, 200), passed, coverages=(base_rate, 1.0))
    assert curve[0]["pass_rate"] == 1.0
    assert curve[1]["pass_rate"] == pytest.approx(base_rate)
    worst = coverage_curve(-passed.astype(float), passed, coverages=(0.5,))
    assert worst[0]["pass_rate"] == pytest.approx(max(0.0, (base_rate - 0.5) / 0.5))


def test_tied_scores_give_the_expected_pass_rate_over_orderings_not_task_order():
    """39 of 40 tasks tied: the curve is the tie's pass rate in expectation, whatever order the tasks come in."""
    passed = np.array([True] * 20 + [False] * 20)  # task order puts every pass first
    score = np.zeros(40)
    score[-1] = 1.0  # one failing task is ranked on its own, first
    curve = coverage_curve(score, passed, coverages=(0.25, 0.5, 1.0))
    # Top 10: the lone task (fails) + 9 of the 39 tied tasks, of which 20 pass: 9 * 20/39 passes expected.
    assert curve[0]["expected_passes"] == pytest.approx(9 * 20 / 39)
    assert curve[0]["pass_rate"] == pytest.approx(9 * 20 / 39 / 10)
    assert curve[0]["n_tied_at_cut"] == 39
    # Brute force: the mean over random orderings of the tie.
    rng = np.random.default_rng(0)
    tied = np.flatnonzero(score == 0)
    sims = [passed[rng.permutation(tied)[:9]].sum() for _ in range(20000)]
    assert np.mean(sims) == pytest.approx(9 * 20 / 39, abs=0.05)
    # Reversing task order changes nothing.
    assert coverage_curve(score[::-1], passed[::-1], coverages=(0.25, 0.5, 1.0)) == curve


def test_every_coverage_point_has_a_clopper_pearson_interval():
    rng = np.random.default_rng(2)
    passed = rng.random(60) < 0.4
    curve = coverage_curve(rng.normal(size=60), passed)
    for row in curve:
        k, expected = row["n_trusted"], row["expected_passes"]
        assert expected == int(expected)  # continuous scores: no tie at the cut
        ci = binomtest(int(expected), k).proportion_ci(method="exact")
        assert (row["ci_lo"], row["ci_hi"]) == pytest.approx((ci.low, ci.high))
        assert row["ci_lo"] <= row["pass_rate"] <= row["ci_hi"]
    lo, hi = rate_interval(2.5, 10)
    lo2, hi2 = rate_interval(2, 10)
    lo3, hi3 = rate_interval(3, 10)
    assert lo2 < lo < lo3 and hi2 < hi < hi3  # a fractional count sits between its integer neighbours


def test_a_worse_than_chance_confound_model_does_not_inflate_the_gain():
    """The confound model is anti-predictive on validation; the gain is measured from chance, not from it."""
    rng = np.random.default_rng(5)
    n = 300
    conf_tr, conf_ev = rng.normal(size=n), rng.normal(size=n)
    pred_tr, pred_ev = rng.normal(size=n), rng.normal(size=n)
    y_tr = (0.5 * conf_tr + pred_tr + rng.normal(0, 0.5, n) > 0).astype(int)
    y_ev = (-0.5 * conf_ev + pred_ev + rng.normal(0, 0.5, n) > 0).astype(int)  # the confound's sign flips
    result = beyond_confounds(conf_tr[:, None], pred_tr, y_tr, conf_ev[:, None], pred_ev, y_ev, 300, 0)
    assert result.auroc_confounds < 0.45
    # The raw gain over the confound model is inflated by exactly how far that model is below chance ...
    assert result.delta == pytest.approx(result.auroc_with_predictor - 0.5)
    assert result.vs_confounds.delta - result.delta == pytest.approx(0.5 - result.auroc_confounds)
    # ... and adding the confounds made the predictor worse, which the summary must show.
    assert result.auroc_with_predictor < result.auroc_predictor and result.vs_predictor.below
    doc = result.to_dict()
    assert doc["vs_predictor"]["loss"] and doc["tolerance"] == GAIN_TOLERANCE
    assert doc["combined_vs_chance"]["low"] <= result.auroc_with_predictor <= doc["combined_vs_chance"]["high"]


def test_identical_models_give_no_gain_whatever_the_float_noise():
    """A predictor equal to the confound: every paired difference is 0 up to rounding, never a gain or a loss."""
    length_tr, y_tr, _ = _tasks(200, 6)
    length_ev, y_ev, _ = _tasks(200, 7)
    result = beyond_confounds(length_tr[:, None], length_tr, y_tr, length_ev[:, None], length_ev, y_ev, 200, 0)
    assert abs(result.vs_confounds.low) < GAIN_TOLERANCE and abs(result.vs_confounds.high) < GAIN_TOLERANCE
    assert not result.adds_information and not result.vs_confounds.above and not result.vs_confounds.below
