"""Tests for common.statistics.stats: latent scores by hand, the permutation null, validation metrics.

Expected values are computed with explicit loops or written as literal
numbers, so the vectorised code is checked against something independent.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats as sps
from scipy.stats import binomtest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

from common.errors import PipelineError
from common.statistics.stats import (
    PermutationNull,
    auroc_with_ci,
    best_f1_threshold,
    bootstrap_aurocs,
    classification_metrics,
    clopper_pearson,
    delong_interval,
    family_p_values,
    latent_scores,
    mcnemar_exact,
    monte_carlo_verdict,
    paired_sign_test,
    permutation_null,
    shuffles_for_margin,
)

# ---------------------------------------------------------------- fixtures (own module scope)


@pytest.fixture
def small_case() -> tuple[np.ndarray, np.ndarray]:
    """6 tasks (3 correct) x 5 latents: a separating latent, ties, a dead latent, one firing everywhere."""
    acts = np.array(
        [
            # sep   tie   dead  all   mixed
            [1.0, 0.5, 0.0, 2.0, 0.0],  # correct
            [2.0, 0.0, 0.0, 2.0, 3.0],  # correct
            [0.5, 0.5, 0.0, 2.0, 0.0],  # correct
            [0.0, 0.5, 0.0, 1.0, 1.0],  # incorrect
            [0.0, 0.0, 0.0, 3.0, 0.0],  # incorrect
            [0.0, 0.5, 0.0, 2.0, 4.0],  # incorrect
        ],
        dtype=np.float32,
    )
    correct = np.array([True, True, True, False, False, False])
    return acts, correct


def _scores_by_loop(acts: np.ndarray, correct: np.ndarray) -> dict[str, np.ndarray]:
    """The naive per-latent definition, written out with Python loops."""
    n, d = acts.shape
    out = {k: np.zeros(d) for k in ("f_correct", "f_incorrect", "mean_correct", "mean_incorrect")}
    for j in range(d):
        fire_c = fire_i = 0
        sum_c = sum_i = 0.0
        n_c = n_i = 0
        for t in range(n):
            if correct[t]:
                n_c += 1
                fire_c += acts[t, j] > 0
                sum_c += acts[t, j]
            else:
                n_i += 1
                fire_i += acts[t, j] > 0
                sum_i += acts[t, j]
        out["f_correct"][j] = fire_c / n_c
        out["f_incorrect"][j] = fire_i / n_i
        out["mean_correct"][j] = sum_c / n_c
        out["mean_incorrect"][j] = sum_i / n_i
    out["separation_correct"] = out["f_correct"] - out["f_incorrect"]
    out["separation_incorrect"] = out["f_incorrect"] - out["f_correct"]
    return out


# ---------------------------------------------------------------- latent_scores


def test_latent_scores_literal_values(small_case):
    acts, correct = small_case
    s = latent_scores(acts, correct)
    np.testing.assert_allclose(s["f_correct"], [1, 2 / 3, 0, 1, 1 / 3])
    np.testing.assert_allclose(s["f_incorrect"], [0, 2 / 3, 0, 1, 2 / 3])
    np.testing.assert_allclose(s["separation_correct"], [1, 0, 0, 0, -1 / 3])
    np.testing.assert_allclose(s["separation_incorrect"], [-1, 0, 0, 0, 1 / 3])
    np.testing.assert_allclose(s["mean_correct"], [3.5 / 3, 1 / 3, 0, 2, 1])
    np.testing.assert_allclose(s["mean_incorrect"], [0, 1 / 3, 0, 2, 5 / 3])
    # The dead latent has identical values everywhere: t is defined as 0.
    assert s["t_stat"][2] == 0.0
    # Latent 0: correct {1, 2, .5} vs incorrect all 0 -> zero variance in one class only.
    mean_c, var_c = 3.5 / 3, np.var([1.0, 2.0, 0.5], ddof=1)
    assert s["t_stat"][0] == pytest.approx(mean_c / np.sqrt(var_c / 3))


def test_latent_scores_match_loops_on_random_data():
    rng = np.random.default_rng(1)
    acts = np.maximum(rng.normal(size=(40, 30)), 0).astype(np.float32)
    acts[:, 5] = 0.0  # never fires
    correct = rng.random(40) < 0.4
    s = latent_scores(acts, correct)
    expected = _scores_by_loop(acts, correct)
    for key, value in expected.items():
        np.testing.assert_allclose(s[key], value, rtol=1e-6, atol=1e-9, err_msg=key)


def test_welch_t_matches_scipy_per_latent():
    rng = np.random.default_rng(2)
    acts = np.maximum(rng.normal(0.2, 1, size=(50, 12)), 0).astype(np.float32)
    correct = rng.random(50) < 0.5
    s = latent_scores(acts, correct)
    for j in range(acts.shape[1]):
        a = acts[correct, j].astype(np.float64)
        b = acts[~correct, j].astype(np.float64)
        expected = sps.ttest_ind(a, b, equal_var=False).statistic
        # Welch's formula written out, as a second opinion.
        by_hand = (a.mean() - b.mean()) / np.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)
        assert s["t_stat"][j] == pytest.approx(expected, rel=1e-9)
        assert s["t_stat"][j] == pytest.approx(by_hand, rel=1e-9)


def test_single_task_class():
    acts = np.array([[1.0, 0.0, 1.0], [0.0, 0.0, 2.0], [3.0, 0.0, 1.0]], dtype=np.float32)
    correct = np.array([True, False, False])  # one correct task
    s = latent_scores(acts, correct)
    np.testing.assert_allclose(s["f_correct"], [1, 0, 1])
    np.testing.assert_allclose(s["f_incorrect"], [0.5, 0, 1])
    np.testing.assert_allclose(s["mean_correct"], [1, 0, 1])
    # Variance of a one-task class is undefined -> nan, except a constant latent -> 0.
    assert np.isnan(s["t_stat"][0]) and np.isnan(s["t_stat"][2])
    assert s["t_stat"][1] == 0.0


def test_zero_variance_both_classes_gives_infinite_t():
    acts = np.array([[1.0], [1.0], [0.0], [0.0]], dtype=np.float32)
    s = latent_scores(acts, np.array([True, True, False, False]))
    assert s["t_stat"][0] == np.inf
    assert s["separation_correct"][0] == 1.0


@pytest.mark.parametrize("labels", [[True, True, True], [False, False, False], [0, 0, 0]])
def test_one_empty_class_is_an_error(labels):
    with pytest.raises(PipelineError, match="no (correct|incorrect) samples"):
        latent_scores(np.ones((3, 2)), np.array(labels))


def test_label_length_mismatch_is_an_error():
    with pytest.raises(PipelineError, match="labels"):
        latent_scores(np.ones((3, 2)), np.array([True, False]))


# ---------------------------------------------------------------- permutation null


def _null_by_loop(fire: np.ndarray, shuffled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each permutation column, recompute every latent's score naively and take the max."""
    n_perm = shuffled.shape[1]
    max_c, max_i = np.empty(n_perm), np.empty(n_perm)
    for p in range(n_perm):
        labels = shuffled[:, p].astype(bool)
        sep = latent_scores(fire.astype(np.float32), labels)["separation_correct"]
        max_c[p], max_i[p] = sep.max(), (-sep).max()
    return max_c, max_i


def test_null_matches_naive_loop_and_keeps_class_sizes():
    rng = np.random.default_rng(3)
    fire = rng.random((30, 25)) < 0.2
    correct = rng.random(30) < 0.4
    null = PermutationNull(correct, n_permutations=15, seed=7)
    null.update(fire)
    assert (null.shuffled.sum(axis=0) == correct.sum()).all()
    max_c, max_i = _null_by_loop(fire, null.shuffled)
    np.testing.assert_array_equal(null.null_max["correct"], max_c)
    np.testing.assert_array_equal(null.null_max["incorrect"], max_i)


def test_null_is_deterministic_for_a_seed():
    rng = np.random.default_rng(4)
    fire = rng.random((40, 50)) < 0.1
    correct = rng.random(40) < 0.5
    a = permutation_null([fire], correct, n_permutations=20, seed=11)
    b = permutation_null([fire], correct, n_permutations=20, seed=11)
    c = permutation_null([fire], correct, n_permutations=20, seed=12)
    assert a == b
    assert a["null_max_correct"] != c["null_max_correct"]


def test_streaming_over_layers_equals_concatenated_and_chunking_is_invisible():
    rng = np.random.default_rng(5)
    layers = [rng.random((35, d)) < 0.15 for d in (20, 7, 33)]
    correct = rng.random(35) < 0.45
    streamed = PermutationNull(correct, n_permutations=30, seed=1)
    for fire in layers:
        streamed.update(fire)
    whole = PermutationNull(correct, n_permutations=30, seed=1)
    whole.update(np.concatenate(layers, axis=1))
    # A block budget of one permutation column at a time.
    tiny = PermutationNull(correct, n_permutations=30, seed=1, max_block_bytes=1)
    tiny.update(np.concatenate(layers, axis=1))
    for direction in ("correct", "incorrect"):
        np.testing.assert_array_equal(streamed.null_max[direction], whole.null_max[direction])
        np.testing.assert_array_equal(tiny.null_max[direction], whole.null_max[direction])
    assert streamed.n_latents == 60 and streamed.n_layers == 3

    def generator():
        yield from layers

    assert permutation_null(generator, correct, 30, seed=1) == streamed.to_dict()


def test_activations_and_firing_matrices_give_the_same_null():
    rng = np.random.default_rng(6)
    acts = np.maximum(rng.normal(-1, 1, size=(30, 40)), 0)
    correct = rng.random(30) < 0.5
    a = permutation_null([acts], correct, 10, seed=0)
    b = permutation_null([acts > 0], correct, 10, seed=0)
    assert a == b


def test_planted_latent_beats_the_null_and_noise_does_not():
    rng = np.random.default_rng(8)
    n, d, n_perm = 200, 300, 99
    correct = rng.random(n) < 0.5
    fire = rng.random((n, d)) < 0.1
    fire[:, 0] = correct  # fires on exactly the correct tasks
    fire[:, 1] = ~correct  # fires on exactly the incorrect tasks
    scores = latent_scores(fire.astype(np.float32), correct)
    null = PermutationNull(correct, n_permutations=n_perm, seed=0)
    null.update(fire)

    p_c = null.p_value(scores["separation_correct"], "correct")
    p_i = null.p_value(scores["separation_incorrect"], "incorrect")
    assert ((p_c > 0) & (p_c <= 1)).all() and ((p_i > 0) & (p_i <= 1)).all()
    assert p_c[0] == pytest.approx(1 / (1 + n_perm))
    assert p_i[1] == pytest.approx(1 / (1 + n_perm))
    # Noise latents cannot beat the maximum over all latents of shuffled data.
    assert np.median(p_c[2:]) > 0.9 and np.median(p_i[2:]) > 0.9
    assert p_c[2:].min() > 0.05 and p_i[2:].min() > 0.05


def test_family_p_values_by_hand():
    null_max = np.array([0.1, 0.2, 0.3])
    np.testing.assert_allclose(family_p_values([0.0, 0.2, 0.25, 0.35], null_max), [1.0, 0.75, 0.5, 0.25])
    assert family_p_values(0.2, null_max) == pytest.approx(0.75)
    with pytest.raises(PipelineError, match="nan"):
        family_p_values([np.nan], null_max)


def test_p_value_guards():
    null = PermutationNull(np.array([True, False, True]), n_permutations=3)
    with pytest.raises(PipelineError, match="no layer"):
        null.p_value(0.5, "correct")
    null.update(np.ones((3, 2), dtype=bool))
    with pytest.raises(PipelineError, match="direction"):
        null.p_value(0.5, "sideways")
    with pytest.raises(PipelineError, match=r"\(3, latents\)"):
        null.update(np.ones((4, 2), dtype=bool))
    with pytest.raises(PipelineError, match="no incorrect"):
        PermutationNull(np.array([True, True]))


# ---------------------------------------------------------------- validation metrics


def test_auroc_with_ci():
    rng = np.random.default_rng(9)
    y = rng.random(80) < 0.4
    s = y * 0.8 + rng.normal(size=80)
    for method in ("delong", "bootstrap"):
        auroc, lo, hi = auroc_with_ci(y, s, n_bootstrap=200, seed=3, method=method)
        assert auroc == pytest.approx(roc_auc_score(y, s))
        assert lo <= auroc <= hi and 0 <= lo < hi <= 1
        assert auroc_with_ci(y, s, n_bootstrap=200, seed=3, method=method) == (auroc, lo, hi)
    with pytest.raises(PipelineError, match="one class"):
        auroc_with_ci(np.ones(5, dtype=bool), np.arange(5.0))
    with pytest.raises(PipelineError, match="method"):
        auroc_with_ci(y, s, method="wald")


def test_delong_variance_by_hand_with_ties():
    """DeLong's placements written out pair by pair, on scores with ties within and across classes."""
    rng = np.random.default_rng(12)
    y = rng.random(30) < 0.4
    s = np.round(rng.normal(size=30) + y, 1)
    pos, neg = s[y], s[~y]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    a, b = v10.var(ddof=1) / pos.size, v01.var(ddof=1) / neg.size
    df = (a + b) ** 2 / (a**2 / (pos.size - 1) + b**2 / (neg.size - 1))  # Welch-Satterthwaite
    auroc, lo, hi = delong_interval(y, s)
    assert auroc == pytest.approx(roc_auc_score(y, s)) == pytest.approx(psi.mean())
    t = sps.t.ppf(0.975, df)
    assert 2.0 < t < 2.2  # about 12 passing tasks: wider than the normal 1.96
    logit, half = math.log(auroc / (1 - auroc)), t * math.sqrt(a + b) / (auroc * (1 - auroc))
    assert (lo, hi) == pytest.approx((1 / (1 + math.exp(-(logit - half))), 1 / (1 + math.exp(-(logit + half)))))


@pytest.mark.parametrize("n_pos,n_neg", [(2, 2), (3, 3), (4, 4), (3, 10), (4, 12), (3, 20)])
def test_delong_interval_exact_error_rate_on_small_splits(n_pos, n_neg):
    """Every order of untied scores is equally likely under the null: the exact false-positive rate, no simulation.

    With the point interval at perfect separation and the normal quantile, 3 passing and 3 failing tasks
    excluded 0.5 in at least 2 of the 20 orders (10%).
    """
    n = n_pos + n_neg
    scores = np.arange(n, dtype=float)
    excluded = total = 0
    for passing in itertools.combinations(range(n), n_pos):
        y = np.isin(np.arange(n), passing)
        _, lo, hi = delong_interval(y, scores)
        excluded += not lo <= 0.5 <= hi
        total += 1
    assert excluded / total <= 0.05


def test_perfect_separation_gives_clopper_pearson_of_the_smaller_class():
    auroc, lo, hi = delong_interval(np.array([1, 1, 1, 0, 0, 0, 0], bool), np.array([9.0, 8, 7, 3, 2, 1, 0]))
    assert (auroc, hi) == (1.0, 1.0) and lo == pytest.approx(binomtest(3, 3).proportion_ci(method="exact").low)
    assert lo == pytest.approx(0.025 ** (1 / 3))
    auroc, lo, hi = delong_interval(np.array([0, 0, 1, 1], bool), np.array([9.0, 8, 1, 0]))
    assert (auroc, lo) == (0.0, 0.0) and hi == pytest.approx(1 - 0.025 ** 0.5)


def test_delong_uses_the_largest_possible_variance_when_a_class_is_constant():
    """A latent silent on every passing task: DeLong's estimate of that class's variance is 0, so the bound is used."""
    y = np.arange(40) < 5
    s = np.zeros(40)
    s[[10, 20, 30]] = [0.4, 1.2, 2.0]  # fires on three failing tasks only
    auroc, lo, hi = delong_interval(y, s)
    assert auroc == pytest.approx(roc_auc_score(y, s)) == pytest.approx(0.5 - 3 / 35 / 2)
    se = math.sqrt(auroc * (1 - auroc) / 5)  # van Dantzig's bound, min(n_pos, n_neg) = 5
    logit, half = math.log(auroc / (1 - auroc)), 1.959963984540054 * se / (auroc * (1 - auroc))
    assert (lo, hi) == pytest.approx((1 / (1 + math.exp(-(logit - half))), 1 / (1 + math.exp(-(logit + half)))))
    assert lo < 0.5 < hi
    auroc, lo, hi = delong_interval(y, np.ones(40))  # a constant score: no longer the point 0.5
    assert auroc == 0.5 and lo < 0.3 and hi > 0.7


def test_delong_interval_holds_its_error_rate_for_a_sparse_latent_with_few_positives():
    """Simulated null studies of a transfer set's shape (7 passing, 157 failing, latent firing on 5% at random).

    With DeLong's own variance the interval excluded 0.5 in 67% of such studies
    (bench.calibration's auroc_interval_sparse); it must hold about 5%.
    """
    rng = np.random.default_rng(21)
    y = np.arange(164) < 7
    excluded = 0
    for _ in range(400):
        s = np.where(rng.random(164) < 0.05, rng.exponential(size=164), 0.0)
        _, lo, hi = delong_interval(y, s)
        excluded += not lo <= 0.5 <= hi
    assert excluded / 400 <= 0.06


def _zero_inflated(rng: np.random.Generator, firing: np.ndarray) -> np.ndarray:
    """A latent's activations: exponential where it fires (each task with its own chance), else 0."""
    return np.where(rng.random(firing.size) < firing, rng.exponential(size=firing.size), 0.0)


def test_delong_interval_holds_its_error_rate_with_few_positives_and_a_dense_latent():
    """7 passing, 157 failing tasks, a latent firing on half of them at random: every placement varies.

    The normal quantile excluded 0.5 in 7.6% of these 1,000 studies; Student's
    t with Welch-Satterthwaite's degrees of freedom must hold the bench's 6%.
    """
    rng = np.random.default_rng(32)
    y = np.arange(164) < 7
    excluded = 0
    for _ in range(1000):
        _, lo, hi = delong_interval(y, _zero_inflated(rng, np.full(164, 0.5)))
        excluded += not lo <= 0.5 <= hi
    assert excluded / 1000 <= 0.06


def test_delong_interval_covers_a_true_auroc_far_from_chance_with_few_positives():
    """A latent firing on 20% of 7 passing and 90% of 157 failing tasks: true AUROC 0.15.

    With exponential values where it fires, AUROC = p (1 - q) + p q / 2 +
    (1 - p)(1 - q) / 2 = 0.15 for p = 0.2, q = 0.9. The normal quantile covered
    it in 93.5% of these 1,000 studies; the t interval must cover 94.5%.
    """
    rng = np.random.default_rng(31)
    y = np.arange(164) < 7
    p, q = 0.2, 0.9
    true = p * (1 - q) + p * q / 2 + (1 - p) * (1 - q) / 2
    assert true == pytest.approx(0.15)
    covered = 0
    for _ in range(1000):
        _, lo, hi = delong_interval(y, _zero_inflated(rng, np.where(y, p, q)))
        covered += lo <= true <= hi
    assert covered / 1000 >= 0.945


def test_bootstrap_aurocs_equal_roc_auc_score_per_resample():
    rng = np.random.default_rng(11)
    y = rng.random(40) < 0.3
    s = np.round(rng.normal(size=40) + y, 1)  # ties within and across classes
    boot = bootstrap_aurocs(y, s, n_bootstrap=50, seed=5)
    idx = np.random.default_rng(5).integers(0, 40, size=(50, 40))
    expected = [roc_auc_score(y[i], s[i]) for i in idx if 0 < y[i].sum() < 40]
    np.testing.assert_allclose(boot, expected, rtol=1e-12)


def test_auroc_bootstrap_skips_one_class_resamples():
    # With 1 positive in 6, about a third of resamples have no positive.
    y = np.array([1, 0, 0, 0, 0, 0])
    s = np.array([0.9, 0.1, 0.2, 0.3, 0.4, 0.5])
    auroc, lo, hi = auroc_with_ci(y, s, n_bootstrap=100, seed=0, method="bootstrap")
    assert (auroc, lo, hi) == (1.0, 1.0, 1.0)


def test_best_f1_threshold_matches_a_scan():
    rng = np.random.default_rng(10)
    y = rng.random(60) < 0.3
    s = np.round(y * 0.5 + rng.normal(size=60), 1)  # rounded: many ties
    threshold, f1 = best_f1_threshold(y, s)
    scan = {t: f1_score(y, s >= t) for t in np.unique(s)[1:]}  # the lowest score flags every task
    best = max(scan.values())
    assert f1 == pytest.approx(best)
    assert threshold == min(t for t, v in scan.items() if np.isclose(v, best))
    assert f1_score(y, s >= threshold) == pytest.approx(f1)


def test_best_f1_threshold_literal():
    y = np.array([0, 0, 1, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8])
    # >=0.35 -> P=2/3, R=1, F1=0.8; >=0.8 -> F1=2/3; >=0.1 -> F1=2/3.
    assert best_f1_threshold(y, s) == (pytest.approx(0.35), pytest.approx(0.8))


def test_best_f1_threshold_never_flags_every_task():
    """A sparse latent: "fires at >= 0" flags everything and has F1 = 2b/(1+b), the trivial baseline.

    With base rate 0.8 that trivial rule (F1 0.889) beats every splitting
    threshold, so an unrestricted search would pick it; the informative
    search must not.
    """
    y = np.array([1, 1, 1, 1, 1, 1, 1, 1, 0, 0], dtype=bool)
    s = np.array([0, 0, 0, 0, 0, 0, 0, 1.0, 0, 2.0])
    assert f1_score(y, s >= 0) == pytest.approx(2 * 0.8 / 1.8)
    threshold, f1 = best_f1_threshold(y, s)
    assert threshold is not None and 0 < (s >= threshold).sum() < s.size
    assert f1 == pytest.approx(f1_score(y, s >= threshold)) and f1 < 2 * 0.8 / 1.8


def test_constant_scores_have_no_informative_threshold():
    threshold, f1 = best_f1_threshold(np.array([1, 0, 1, 0]), np.zeros(4))
    assert threshold is None and np.isnan(f1)


def test_sign_test_with_one_control_is_mcnemar_on_discordant_tasks():
    target = np.array([1, 1, 1, 1, 1, 0, 0, 0], dtype=bool)
    control = np.array([1, 0, 0, 0, 0, 0, 0, 1], dtype=bool)
    out = paired_sign_test(target, [control])
    assert (out["n_target_above"], out["n_target_below"], out["n"]) == (4, 1, 8)
    assert out["p"] == pytest.approx(binomtest(4, 5, 0.5).pvalue) == pytest.approx(mcnemar_exact(4, 1))


def test_three_identical_controls_give_one_controls_p():
    rng = np.random.default_rng(3)
    target = rng.random(40) < 0.4
    control = rng.random(40) < 0.15
    one = paired_sign_test(target, [control])
    three = paired_sign_test(target, [control, control, control])
    assert one["p"] == three["p"] and one["n_target_above"] == three["n_target_above"]
    assert one["p"] == pytest.approx(mcnemar_exact(int((target & ~control).sum()), int((~target & control).sum())))
    # Pooling the three copies as independent trials (what Fisher on summed counts did) is more "significant".
    from scipy.stats import fisher_exact

    pooled = fisher_exact([[target.sum(), (~target).sum()], [3 * control.sum(), 3 * (~control).sum()]]).pvalue
    single = fisher_exact([[target.sum(), (~target).sum()], [control.sum(), (~control).sum()]]).pvalue
    assert pooled < single


def test_classification_metrics_vs_sklearn_and_baselines():
    y = np.array([1, 1, 1, 0, 0, 0, 0, 1, 0, 0], dtype=bool)
    p = np.array([1, 0, 1, 1, 0, 0, 0, 1, 0, 1], dtype=bool)
    m = classification_metrics(y, p)
    assert m["f1"] == pytest.approx(f1_score(y, p))
    assert m["precision"] == pytest.approx(precision_score(y, p))
    assert m["recall"] == pytest.approx(recall_score(y, p))
    assert m["accuracy"] == pytest.approx(accuracy_score(y, p))
    assert m["base_rate"] == pytest.approx(0.4)
    assert m["always_positive_f1"] == pytest.approx(2 * 0.4 / 1.4)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (3, 2, 1, 4)
    none_predicted = classification_metrics(y, np.zeros(10, dtype=bool))
    assert none_predicted["precision"] == 0.0 and none_predicted["f1"] == 0.0


def test_clopper_pearson():
    n, alpha = 20, 0.05
    lo, hi = clopper_pearson(0, n)
    assert lo == 0.0 and hi == pytest.approx(1 - (alpha / 2) ** (1 / n))
    lo, hi = clopper_pearson(n, n)
    assert hi == 1.0 and lo == pytest.approx((alpha / 2) ** (1 / n))
    lo, hi = clopper_pearson(7, n)
    assert lo == pytest.approx(sps.beta.ppf(alpha / 2, 7, n - 7 + 1))
    assert hi == pytest.approx(sps.beta.ppf(1 - alpha / 2, 7 + 1, n - 7))
    with pytest.raises(PipelineError):
        clopper_pearson(0, 0)
    with pytest.raises(PipelineError):
        clopper_pearson(5, 4)


def test_mcnemar_exact():
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)  # all 5 discordant pairs one way
    assert mcnemar_exact(5, 0) == mcnemar_exact(0, 5)
    assert mcnemar_exact(3, 3) == pytest.approx(1.0)
    assert mcnemar_exact(0, 0) == 1.0
    # 2 vs 8: P(X<=2) for Bin(10, 1/2) is 56/1024; two-sided doubles it.
    assert mcnemar_exact(2, 8) == pytest.approx(2 * 56 / 1024)


def test_family_null_takes_the_maximum_over_both_directions():
    """One family for both directions: each direction's p compares with max(correct max, incorrect max) per shuffle."""
    rng = np.random.default_rng(21)
    fire = rng.random((40, 30)) < 0.3
    correct = rng.random(40) < 0.5
    null = PermutationNull(correct, n_permutations=25, seed=2)
    null.update(fire)
    max_c, max_i = _null_by_loop(fire, null.shuffled)
    family = np.maximum(max_c, max_i)
    np.testing.assert_array_equal(null.family_max, family)
    score = float(np.median(family))
    expected = (1 + (family >= score - 1e-9).sum()) / 26
    assert null.p_value(score, "correct")[()] == pytest.approx(expected)
    assert null.p_value(score, "incorrect")[()] == pytest.approx(expected)
    # Never smaller than a one-direction p: the joint family is the stricter one.
    assert expected >= (1 + (max_c >= score - 1e-9).sum()) / 26
    assert null.to_dict()["null_max_family"] == family.tolist()


def test_family_null_holds_its_level_for_two_directions_where_a_per_direction_null_does_not():
    """Under exchangeable labels, "either rank-1 latent has p <= 0.05" must happen in about 5% of studies, not 10%."""
    rng = np.random.default_rng(0)
    n_studies, joint, per_direction = 400, 0, 0
    for _ in range(n_studies):
        fire = rng.random((40, 60)) < 0.3
        correct = rng.permutation(np.arange(40) < 20)
        null = PermutationNull(correct, n_permutations=99, seed=int(rng.integers(1 << 30)))
        null.update(fire)
        sep = latent_scores(fire.astype(np.float32), correct)["separation_correct"]
        best_c, best_i = float(sep.max()), float((-sep).max())
        joint += bool(min(null.p_value(best_c, "correct"), null.p_value(best_i, "incorrect")) <= 0.05)
        per_direction += bool(min(family_p_values(best_c, null.null_max["correct"]),
                                  family_p_values(best_i, null.null_max["incorrect"])) <= 0.05)
    assert joint / n_studies <= 0.075
    assert per_direction > joint  # the per-direction family rejects more often


def test_monte_carlo_verdict_by_hand():
    decided = monte_carlo_verdict(0.01, 2000)
    assert decided["decision"] == "below" and decided["mc_se"] == pytest.approx(math.sqrt(0.01 * 0.99 / 2000))
    assert decided["more_shuffles_needed"] is None
    assert monte_carlo_verdict(0.2, 2000)["decision"] == "above"
    # 0.043 at 2,000 shuffles: SE 0.0045, two SE 0.009 > 0.007 from 0.05, so undecided.
    close = monte_carlo_verdict(0.043, 2000)
    assert close["decision"] == "undecided"
    needed = math.ceil(4 * 0.043 * 0.957 / 0.007**2) + 1
    assert close["shuffles_needed"] == needed and close["more_shuffles_needed"] == needed - 2000
    assert monte_carlo_verdict(0.043, needed)["decision"] == "below"
    # The smallest p 50 shuffles can give is still undecided: 50 shuffles cannot certify 0.05.
    assert monte_carlo_verdict(1 / 51, 50)["decision"] == "undecided"
    assert shuffles_for_margin(0.01) == 1900
    with pytest.raises(PipelineError, match="p-value"):
        monte_carlo_verdict(1.5, 10)
