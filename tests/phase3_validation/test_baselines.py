"""Baselines on synthetic data whose answer is known by construction."""

import numpy as np
import pytest

from phase3_validation.baselines import beyond_confounds, cosine, cosine_table, coverage_curve, single_feature_auroc


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
