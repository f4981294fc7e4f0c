"""Phase 3: rate arithmetic, statistical validation on a planted latent, steering end to end on the tiny model."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as sps
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

import phase0_difficulty
import phase1_0_generation
import phase3_validation
from common.benchmarks.mbpp import load_mbpp
from common.config import PipelineConfig
from common.datadir import STEERING_OUTCOMES, DirectionSteeringResult, RecordCheckpointer, read_phase3_result, write_phase3_result
from common.errors import PipelineError
from demo.humaneval_view import write_humaneval_view
from phase3_validation import validation as validation_module
from phase3_validation.inputs import load_inputs
from phase3_validation.statistical import (
    auroc_interval,
    evaluate_at_threshold,
    evaluate_scores,
    validate_latents,
)
from phase3_validation.steering_eval import (
    choose_control_latents,
    control_comparison,
    mean_residual_norm,
    rates_with_baselines,
    select_coefficient,
    steering_rates,
    transition_counts,
    unit_direction,
)
from phase3_validation.summary import render_summary
from tests.artifact_builders import write_temperature_run
from tests.helpers import DEMO_PROBLEMS
from tests.phase3_validation.builders import (
    latent_item,
    make_sae,
    mbpp_row,
    write_phase2_results,
    write_splits,
    write_synthetic_phase1,
)
from tests.phase3_validation.steering_checks import check_steering_p_values

# --------------------------------------------------------------------------- rates and tests (pure)


def test_rates_match_hand_computation_and_scipy():
    #            initially incorrect (6)      initially correct (4)
    before = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1], dtype=bool)
    after = np.array([1, 1, 0, 0, 0, 0, 1, 1, 1, 0], dtype=bool)
    counts = transition_counts(before, after)
    assert counts == {"n_tasks": 10, "n_initially_incorrect": 6, "n_corrected": 2, "n_initially_correct": 4, "n_corrupted": 1}
    rates = steering_rates(before, after)
    assert rates["correction_rate"] == pytest.approx(2 / 6)
    assert rates["corruption_rate"] == pytest.approx(1 / 4)
    assert rates["preservation_rate"] == pytest.approx(3 / 4)
    ci = sps.binomtest(2, 6).proportion_ci(method="exact")
    assert (rates["correction_ci_lo"], rates["correction_ci_hi"]) == pytest.approx((ci.low, ci.high))
    ci = sps.binomtest(1, 4).proportion_ci(method="exact")
    assert (rates["corruption_ci_lo"], rates["corruption_ci_hi"]) == pytest.approx((ci.low, ci.high))
    assert (rates["preservation_ci_lo"], rates["preservation_ci_hi"]) == pytest.approx((1 - ci.high, 1 - ci.low))
    # Exact McNemar = binomial test of 2 vs 1 discordant pairs at 1/2: p = 1.0 by hand (all outcomes as extreme).
    assert rates["mcnemar_p"] == pytest.approx(sps.binomtest(2, 3, 0.5).pvalue) == pytest.approx(1.0)


def test_rates_need_both_initial_classes():
    with pytest.raises(PipelineError, match="no initially-incorrect"):
        steering_rates(np.ones(4, bool), np.ones(4, bool), "validation split")
    with pytest.raises(PipelineError, match="no initially-correct"):
        steering_rates(np.zeros(4, bool), np.ones(4, bool))


def test_one_class_baseline_gives_the_rate_that_exists_when_allowed():
    """HumanEval transfer (require_both=False): no initially-correct task -> correction only, no crash."""
    base = np.zeros(6, dtype=bool)
    target = np.array([1, 1, 0, 0, 0, 0], dtype=bool)
    control = np.array([1, 0, 0, 0, 0, 0], dtype=bool)
    with pytest.raises(PipelineError, match="no initially-correct"):
        rates_with_baselines(base, base, target)  # MBPP's rule is unchanged
    rates = rates_with_baselines(base, base, target, "humaneval", require_both=False)
    assert rates["n_corrected"] == 2 and rates["correction_rate"] == pytest.approx(2 / 6)
    assert rates["n_initially_correct"] == 0 and np.isnan(rates["corruption_rate"]) and np.isnan(rates["preservation_rate"])
    assert rates["correction_ci_lo"] == pytest.approx(sps.binomtest(2, 6).proportion_ci(method="exact").low)
    test = control_comparison(base, target, [control], "correct", require_both=False)
    # The predicted effect counts the flips that could happen: the correction rate alone.
    assert test["target_effect"] == pytest.approx(2 / 6) and test["per_control"][0]["predicted_effect"] == pytest.approx(1 / 6)
    c = test["per_control"][0]
    assert test["n_beaten"] == 1 and (c["tasks_target_ahead"], c["tasks_control_ahead"]) == (1, 0)
    assert test["p_vs_controls"] == pytest.approx(0.5)  # one task differs: the target's +1 is drawn half the time
    against = control_comparison(base, target, [control], "incorrect", require_both=False)
    assert against["target_effect"] == pytest.approx(-2 / 6) and against["n_beaten"] == 0
    everyone = np.ones(6, dtype=bool)  # every task passes at alpha = 0: corruption only
    broken = np.array([0, 1, 1, 1, 1, 1], dtype=bool)
    test = control_comparison(everyone, broken, [everyone], "incorrect", require_both=False)
    assert test["target_effect"] == pytest.approx(1 / 6) and test["per_control"][0]["predicted_effect"] == 0.0
    with pytest.raises(PipelineError, match="no initially-correct"):
        control_comparison(base, target, [control], "correct")


def test_batch_dependent_baseline_is_not_a_correction():
    """Task 2 fails in Phase 1.0 but passes in the alpha = 0 rerun (other batch neighbours): batching, not steering.

    Steering leaves it passing; against Phase 1.0 that would be a "correction",
    against the rerun (the primary baseline) it is not. Task 0 is a real
    correction (fails in both baselines, passes steered).
    """
    phase1 = np.array([0, 0, 0, 1, 1, 1], dtype=bool)
    rerun = np.array([0, 0, 1, 1, 1, 1], dtype=bool)
    steered = np.array([1, 0, 1, 1, 1, 1], dtype=bool)
    rates = rates_with_baselines(rerun, phase1, steered)
    assert rates["n_corrected"] == 1 and rates["n_initially_incorrect"] == 2 and rates["correction_rate"] == 0.5
    assert rates["phase1_n_corrected"] == 2 and rates["phase1_n_initially_incorrect"] == 3
    assert rates["baseline"] == "alpha = 0 rerun"


def _grid_row(alpha, target, controls, direction="incorrect"):
    """A grid row built the way the phase builds it: rates of target and controls against one baseline."""
    base = np.array([0] * 10 + [1] * 10, dtype=bool)
    test = control_comparison(base, target, controls, direction)
    return {"alpha": alpha, "excess_effect": test["excess_effect"], "predicted_effect": test["target_effect"]}


def _run(n_corrected, n_corrupted):
    """Labels after steering a baseline of 10 failing then 10 passing tasks."""
    after = np.array([0] * 10 + [1] * 10, dtype=bool)
    after[:n_corrected] = True
    after[10:10 + n_corrupted] = False
    return after


def test_pure_damage_at_large_alpha_is_not_selected():
    """An incorrect-preferring latent: at alpha 4 everything breaks, for the controls as much as for the target.

    Its raw predicted effect (corruption - correction) is largest at 4, so the
    old raw-rate rule picked 4; in excess of the controls the real effect is
    at 0.5 (3 corruptions where controls make none).
    """
    small = _grid_row(0.5, _run(0, 3), [_run(0, 0), _run(0, 0)])
    large = _grid_row(4.0, _run(0, 9), [_run(0, 9), _run(0, 10)])
    assert large["predicted_effect"] > small["predicted_effect"]
    assert select_coefficient([small, large]) == 0.5


def test_selection_searches_the_hypothesis_sign_only():
    grid = [{"alpha": -1.0, "excess_effect": 0.9}, {"alpha": 0.5, "excess_effect": 0.1},
            {"alpha": 1.0, "excess_effect": 0.1}, {"alpha": 0.0, "excess_effect": 0.0}]
    assert select_coefficient(grid) == 0.5  # the negative alpha's larger effect is never chosen; ties: smallest
    with pytest.raises(PipelineError, match="no alpha > 0"):
        select_coefficient([{"alpha": -1.0, "excess_effect": 0.9}])


def test_controls_are_compared_paired_by_task():
    base = np.array([0] * 10 + [1] * 10, dtype=bool)
    target = _run(6, 1)  # corrects tasks 0-5, corrupts task 10
    control = _run(1, 2)  # corrects task 0, corrupts tasks 10-11
    one = control_comparison(base, target, [control], "correct")
    three = control_comparison(base, target, [control, control, control], "correct")
    assert one["per_control"][0]["paired_p"] == three["per_control"][2]["paired_p"]
    # Per task (+1 corrected, -1 corrupted): the target is ahead on tasks 1-5 and 11, behind on none.
    c = one["per_control"][0]
    assert (c["tasks_target_ahead"], c["tasks_control_ahead"]) == (6, 0)
    assert c["paired_p"] == pytest.approx(sps.binomtest(6, 6, 0.5).pvalue)
    # One control: the permutation test swaps target and control on each task, a one-sided sign test.
    assert one["p_vs_controls"] == pytest.approx(sps.binomtest(6, 6, 0.5, alternative="greater").pvalue)
    # Three controls alike: on each of the 6 tasks the target's value is drawn with probability 1/4.
    assert three["p_vs_controls"] == pytest.approx(0.25 ** 6)
    assert c["correction_rate"] == pytest.approx(0.1) and c["predicted_effect"] == pytest.approx(0.1 - 0.2)
    assert one["n_beaten"] == 1 and three["n_beaten"] == 3
    assert one["excess_effect"] == pytest.approx((0.6 - 0.1) - (0.1 - 0.2))
    # The same runs read for an incorrect-preferring direction: the target is now behind.
    rev = control_comparison(base, target, [control], "incorrect")
    assert (rev["per_control"][0]["tasks_target_ahead"], rev["per_control"][0]["tasks_control_ahead"]) == (0, 6)
    assert rev["n_beaten"] == 0
    better = control_comparison(base, target, [control, _run(9, 0)], "correct")
    assert better["n_beaten"] == 1 and better["n_controls"] == 2
    # Against all controls: the within-task permutation test (target and controls exchangeable on each task).
    perm = better["permutation_test"]
    assert better["p_vs_controls"] == perm["p"] and perm["method"] == "exact" and perm["n_controls"] == 2
    assert perm["n_tasks_runs_differ"] == 10  # tasks 1-8, 10 and 11 (task 0: all three correct it)


def test_control_latents_near_zero_seeded_prefer_firing():
    sep = np.array([0.5, 0.0, 0.001, -0.002, 0.3, 0.0, 0.0])
    f = np.array([0.5, 0.2, 0.0, 0.4, 0.5, 0.1, 0.0])
    scores = {"separation_correct": sep, "f_correct": f, "f_incorrect": f}
    chosen, info = choose_control_latents(scores, layer=3, exclude=1, n=3, max_separation=0.01, seed=0)
    assert set(chosen) == {3, 5} | ({2, 6} & set(chosen)) and len(chosen) == 3
    assert {3, 5} <= set(chosen) and 1 not in chosen and 0 not in chosen and 4 not in chosen
    again, _ = choose_control_latents(scores, layer=3, exclude=1, n=3, max_separation=0.01, seed=0)
    assert again == chosen
    assert info["n_eligible_firing"] == 2 and info["n_eligible_silent"] == 2
    with pytest.raises(PipelineError, match="controls were asked for"):
        choose_control_latents(scores, layer=3, exclude=1, n=5, max_separation=0.01, seed=0)
    flagged = {**scores, "general_flagged": np.array([0, 0, 0, 1, 0, 0, 0], dtype=bool)}
    chosen, _ = choose_control_latents(flagged, layer=3, exclude=1, n=3, max_separation=0.01, seed=0)
    assert sorted(chosen) == [2, 5, 6]  # the general-text-flagged latent 3 is never a control


def test_norm_and_direction_helpers():
    assert mean_residual_norm(np.array([[3.0, 4.0], [0.0, 1.0]])) == pytest.approx(3.0)
    u = unit_direction(np.array([0.0, 2.0, 0.0]))
    assert torch.equal(u, torch.tensor([0.0, 1.0, 0.0]))
    with pytest.raises(PipelineError):
        unit_direction(np.zeros(3))


# --------------------------------------------------------------------------- statistical part


def test_metrics_at_threshold_match_sklearn():
    rng = np.random.default_rng(0)
    y = rng.random(200) < 0.3
    s = rng.normal(size=200) + y
    row = evaluate_at_threshold(y, s, threshold=0.4, n_bootstrap=200, seed=0)
    pred = s >= 0.4
    assert row["auroc"] == pytest.approx(roc_auc_score(y, s))
    assert row["auroc_ci_lo"] < row["auroc"] < row["auroc_ci_hi"]
    assert row["f1"] == pytest.approx(f1_score(y, pred))
    assert row["precision"] == pytest.approx(precision_score(y, pred))
    assert row["recall"] == pytest.approx(recall_score(y, pred))
    assert row["accuracy"] == pytest.approx(accuracy_score(y, pred))
    b = y.mean()
    assert row["f1_baseline_always_positive"] == pytest.approx(2 * b / (1 + b))
    assert row["precision_baseline_base_rate"] == pytest.approx(b)
    assert row["accuracy_baseline_majority"] == pytest.approx(1 - b)
    assert row["recall_baseline_random"] == pytest.approx(pred.mean())
    assert row["auroc_baseline"] == 0.5
    one_class = evaluate_at_threshold(np.zeros(5, bool), np.arange(5.0), 1.0, 50, 0)
    assert np.isnan(one_class["auroc"]) and "one class" in one_class["note"]


def test_unrelated_latent_gets_no_informative_threshold_or_no_better_f1():
    """A sparse latent that ignores the label: silent on hyperparams -> no threshold; random firing -> no F1 gain."""
    rng = np.random.default_rng(5)
    hp_y, val_y = rng.random(200) < 0.5, rng.random(400) < 0.5
    silent = evaluate_scores({"name": "silent"}, "correct", hp_y, np.zeros(200),
                             [{"split": "validation", "temperature": 0.0, "correct": val_y, "scores": np.zeros(400)}], 50, 0)
    assert silent.threshold is None and "no informative threshold" in silent.threshold_note
    row = next(r for r in silent.rows if r["split"] == "validation")
    assert not row["informative_threshold"] and np.isnan(row["f1"]) and row["auroc"] == pytest.approx(0.5)
    hp_s = np.where(rng.random(200) < 0.1, rng.random(200), 0.0)
    val_s = np.where(rng.random(400) < 0.1, rng.random(400), 0.0)
    noise = evaluate_scores({"name": "noise"}, "correct", hp_y, hp_s,
                            [{"split": "validation", "temperature": 0.0, "correct": val_y, "scores": val_s}], 50, 0)
    assert noise.threshold is not None and 0 < (hp_s >= noise.threshold).sum() < 200
    row = next(r for r in noise.rows if r["split"] == "validation")
    assert row["f1"] <= row["f1_baseline_always_positive"]


def test_task_clustered_interval_is_wider_than_row_bootstrap():
    """Five identical samples per task are not five times the evidence: the task bootstrap says so."""
    rng = np.random.default_rng(1)
    y = rng.random(60) < 0.5
    s = rng.normal(size=60) + 0.8 * y
    y5, s5, groups = np.repeat(y, 5), np.repeat(s, 5), np.repeat(np.arange(60), 5)
    auc, lo, hi, method = auroc_interval(y5, s5, 500, 0, groups)
    _, row_lo, row_hi, _ = auroc_interval(y5, s5, 500, 0, None)
    _, task_lo, task_hi, _ = auroc_interval(y, s, 500, 0, None)
    assert auc == pytest.approx(roc_auc_score(y, s))
    assert "tasks" in method
    assert (hi - lo) > 1.5 * (row_hi - row_lo)
    assert (hi - lo) == pytest.approx(task_hi - task_lo, rel=0.35)


def test_task_interval_holds_its_error_rate_for_a_latent_silent_on_the_passing_samples():
    """Simulated null studies of a sampled split's shape: 390 tasks x 3 samples, 1.8% passing, a latent firing on 5%.

    The latent is a task's value (one prompt), so it is often 0 on every passing sample; the task bootstrap alone
    then gives an interval entirely below 0.5 (it did in 36% of such studies). Widened to van Dantzig's bound it
    must hold about 5%.
    """
    rng = np.random.default_rng(4)
    groups = np.repeat(np.arange(390), 3)
    excluded = studies = 0
    while studies < 150:
        y = rng.random(groups.size) < 0.018
        if not y.any():
            continue
        s = np.where(rng.random(390) < 0.05, rng.exponential(size=390), 0.0)[groups]
        _, lo, hi, method = auroc_interval(y, s, 200, int(rng.integers(2**31)), groups)
        excluded += not lo <= 0.5 <= hi
        studies += 1
    assert excluded / studies <= 0.06
    y = np.zeros(groups.size, dtype=bool)
    y[[0, 10, 20]] = True  # three passing samples, all scored 0; one failing task fires
    s = np.zeros(groups.size)
    s[groups == 7] = 1.0
    auc, lo, hi, method = auroc_interval(y, s, 200, 0, groups)
    assert lo < 0.5 < hi and method.endswith("widened to van Dantzig's bound") and auc < 0.5


def test_task_interval_at_perfect_separation_is_not_a_point():
    """Two passing tasks of six, each sample scored above every failing one: every resample says 1.0.

    Two passing tasks could rank first by chance in 1 of 15 orders: the interval must hold 0.5, as
    Clopper-Pearson's for 2 of 2 does (its lower end 0.158).
    """
    groups = np.repeat(np.arange(6), 3)
    y = groups < 2
    s = np.where(y, 2.0, 1.0) + 0.01 * np.arange(groups.size)
    auc, lo, hi, method = auroc_interval(y, s, 200, 0, groups)
    assert auc == 1.0 and hi == 1.0 and lo == pytest.approx(0.025 ** 0.5) and "van Dantzig" in method


D_IN, D_SAE = 16, 8


@pytest.fixture
def planted_data(tmp_path):
    """Hyperparams (20) and validation (40) tasks whose activations carry a planted correct/incorrect signal."""
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    u_correct, u_incorrect = np.eye(D_IN)[0], np.eye(D_IN)[1]
    hp_ids, val_ids = list(range(100, 120)), list(range(200, 240))
    rows = [mbpp_row(t, f"Write a function number {t}.", [f"assert f() == {t}"]) for t in hp_ids + val_ids]
    passed = {t: bool(i % 2) for i, t in enumerate(hp_ids + val_ids)}
    acts = {}
    for t in hp_ids + val_ids:
        base = rng.normal(0, 0.1, size=D_IN).astype(np.float32)
        base += (2.0 * u_correct if passed[t] else 2.0 * u_incorrect).astype(np.float32)
        acts[t] = {2: base}
    write_splits(data, rows, hp_ids, val_ids)
    write_synthetic_phase1(data, rows, passed, acts)
    sae_dir = tmp_path / "saes"
    make_sae(sae_dir, 2, D_IN, D_SAE, planted={3: u_correct, 5: u_incorrect})
    top = {"correct": [latent_item(1, 2, 3, 0.9), latent_item(2, 2, 0, 0.1)],
           "incorrect": [latent_item(1, 2, 5, 0.9)]}
    write_phase2_results(data, sae_dir, top, D_SAE, [2], beats_null={"correct": True, "incorrect": True})
    return data, val_ids, passed, acts


def test_planted_latent_validates_with_threshold_from_hyperparams(planted_data):
    data, val_ids, passed, acts = planted_data
    cfg = PipelineConfig(data_dir=str(data), bootstrap=300)
    inputs = load_inputs(cfg)
    assert "Phase 1.2 outputs absent" in inputs.temperature.note
    evaluations = validate_latents(inputs, top_n=2, n_bootstrap=300, seed=0)
    assert [(e.ref.direction, e.ref.latent) for e in evaluations] == [("correct", 3), ("correct", 0), ("incorrect", 5)]
    for ev in evaluations[0], evaluations[2]:
        val = next(r for r in ev.rows if r["split"] == "validation")
        # Perfect separation of 20 and 20 tasks: Clopper-Pearson's interval for 20 of 20, not the point.
        assert val["auroc"] == 1.0 and val["auroc_ci_hi"] == 1.0
        assert val["auroc_ci_lo"] == pytest.approx(sps.binomtest(20, 20).proportion_ci(method="exact").low)
        # The hyperparams threshold sits at its lowest positive score, so a few validation positives fall below it.
        assert val["f1"] > 0.9 and val["f1_baseline_always_positive"] == pytest.approx(2 / 3)
        assert val["base_rate"] == pytest.approx(0.5) and val["threshold"] == ev.threshold
        hp = next(r for r in ev.rows if r["split"] == "hyperparams")
        assert hp["f1"] == pytest.approx(ev.hyperparams_f1)
    # The threshold is the hyperparams one, applied unchanged: recompute the validation metrics by hand.
    ev = evaluations[0]
    from common.saes.loading import SAESource, encode, load_sae

    sae = load_sae(SAESource(local_path=str(data.parent / "saes")), 2)
    scores = encode(sae, np.stack([acts[t][2] for t in val_ids]))[:, 3]
    y = np.array([passed[t] for t in val_ids])
    pred = scores >= ev.threshold
    val = next(r for r in ev.rows if r["split"] == "validation")
    assert val["auroc"] == pytest.approx(roc_auc_score(y, scores))
    assert val["f1"] == pytest.approx(f1_score(y, pred)) and val["recall"] == pytest.approx(recall_score(y, pred))


def test_temperature_rows_use_phase1_2_samples(planted_data):
    data, val_ids, passed, acts = planted_data
    from common.datadir import save_task_activations

    rng = np.random.default_rng(3)
    tables = {}
    for temperature in (0.6, 1.2):
        rows = []
        for t in val_ids:
            for k in range(3):
                ok = rng.random() < (0.8 if passed[t] else 0.1)
                rows.append({"task_id": t, "sample_index": k, "passed": ok})
        tables[temperature] = pd.DataFrame(rows)
    write_temperature_run(data, tables)
    for t in val_ids:
        save_task_activations(data / "phase1_2" / "activations", t, acts[t])
    inputs = load_inputs(PipelineConfig(data_dir=str(data)))
    assert inputs.temperature.temperatures == [0.6, 1.2]
    (ev,) = validate_latents(inputs, top_n=1, n_bootstrap=100, seed=0)[:1]
    temps = [r for r in ev.rows if r["split"] == "validation" and r["temperature"] > 0]
    assert [r["temperature"] for r in temps] == [0.6, 1.2]
    for r in temps:
        assert r["n"] == 3 * len(val_ids) and r["n_tasks"] == len(val_ids)
        assert 0.7 < r["auroc"] <= 1.0 and r["auroc_ci_lo"] < r["auroc"]
        assert "task" in r["auroc_ci_method"]


def test_latent_out_of_range_is_an_error(planted_data):
    data, *_ = planted_data
    results = next((data / "phase2").glob("results_sae_*.json"))
    doc = json.loads(results.read_text())
    doc["top_latents"]["correct"][0]["latent"] = 999
    results.write_text(json.dumps(doc))
    with pytest.raises(PipelineError, match="latent 999 of layer 2 .*out of range"):
        phase3_validation.run(PipelineConfig(data_dir=str(data), device="cpu"))


def test_split_without_correct_baseline_is_an_error(planted_data):
    data, *_ = planted_data
    dataset_path = next((data / "phase1_0").glob("dataset_*.parquet"))
    dataset = pd.read_parquet(dataset_path)
    hp_ids = pd.read_parquet(data / "phase0_1" / "hyperparams_mbpp.parquet")["task_id"]
    dataset.loc[dataset["task_id"].isin(hp_ids), "passed"] = False
    dataset.to_parquet(dataset_path)
    with pytest.raises(PipelineError, match="hyperparams split has no correct tasks"):
        phase3_validation.run(PipelineConfig(data_dir=str(data)))


def test_no_phase2_output_names_the_command(tmp_path):
    with pytest.raises(PipelineError, match=r"run `python3 run.py phase 2 --split sae`"):
        phase3_validation.run(PipelineConfig(data_dir=str(tmp_path)))


def test_empty_coefficient_grid_is_an_error(tmp_path):
    with pytest.raises(PipelineError, match="coefficient grid is empty"):
        phase3_validation.run(PipelineConfig(data_dir=str(tmp_path), coefficients=[]))


# --------------------------------------------------------------------------- end to end on the tiny model

N_PROBLEMS = 20


def _tiny_problems(path: Path) -> Path:
    """The first bundled problems, as they are: the trained demo model solves those it saw, so both classes occur.

    Steering a model that really solves problems breaks some of them, so labels flip.
    """
    lines = DEMO_PROBLEMS.read_text().splitlines()[:N_PROBLEMS]
    path.write_text("\n".join(lines) + "\n")
    return path


def _cfg(data: Path, problems: Path, model_dir: Path, **over) -> PipelineConfig:
    base = dict(
        data_dir=str(data), mbpp_path=str(problems), model=str(model_dir), device="cpu", max_new_tokens=48,
        batch_size=4, workers=2, coefficients=[-3.0, 0.0, 3.0], n_random_controls=2, bootstrap=200,
        top_latents_validated=2, checkpoint_every=2, autosave_every=4,
    )
    base.update(over)
    return PipelineConfig(**base)


@pytest.fixture(scope="module")
def e2e(demo_trained_model, tmp_path_factory):
    """Phases 0 and 1 on the trained demo model, synthetic splits and Phase 2 results, then Phase 3 killed and rerun."""
    root = tmp_path_factory.mktemp("p3e2e")
    data = root / "data"
    problems = _tiny_problems(root / "problems.jsonl")
    cfg = _cfg(data, problems, Path(demo_trained_model.model_dir))
    phase0_difficulty.run(cfg)
    dataset_path = phase1_0_generation.run(cfg)
    dataset = pd.read_parquet(dataset_path)
    correct = dataset.loc[dataset["passed"], "task_id"].astype(int).tolist()
    incorrect = dataset.loc[~dataset["passed"], "task_id"].astype(int).tolist()
    assert len(correct) >= 5 and len(incorrect) >= 5, dataset[["task_id", "passed", "extracted_code"]]
    hp_ids = correct[:2] + incorrect[:2]
    val_ids = correct[2:5] + incorrect[2:5]
    # A batch-dependent baseline: Phase 1.0 "failed" validation task `noisy` (another program), which the alpha = 0
    # rerun reproduces as passing. Steering that leaves it passing must not count as a correction.
    noisy = correct[2]
    dataset.loc[dataset["task_id"] == noisy, ["passed", "extracted_code"]] = [False, "def batch_noise(:"]
    dataset.to_parquet(dataset_path)
    for src in (data / "phase1_0" / "activations" / "correct").glob(f"{noisy}_layer_*.npz"):
        src.rename(data / "phase1_0" / "activations" / "incorrect" / src.name)
    rows = [r._asdict() for r in load_mbpp(str(problems)).itertuples(index=False)]
    write_splits(data, rows, hp_ids, val_ids)
    sae_dir = root / "saes"
    for layer in (0, 1):
        make_sae(sae_dir, layer, 64, 32, seed=layer)
    top = {"correct": [latent_item(1, 1, 3, 0.4, 0.5), latent_item(2, 0, 5, 0.3, 0.7)],
           "incorrect": [latent_item(1, 1, 7, 0.4, 0.6), latent_item(2, 0, 9, 0.3, 0.8)]}
    write_phase2_results(data, sae_dir, top, 32, [0, 1], beats_null={"correct": False, "incorrect": False})
    # The same problems in HumanEval's format, through the real HumanEval Phase 1, for the transfer section.
    view = write_humaneval_view(load_mbpp(str(problems)), root / "humaneval_view.jsonl.gz")
    phase1_0_generation.run(dataclasses.replace(cfg, dataset="humaneval", humaneval_path=str(view)))

    # First attempt dies after all steering was generated (checkpointed), before any output is written.
    def crash(*_args, **_kwargs):
        raise RuntimeError("simulated crash")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(validation_module.plots, "roc_curves", crash)
        with pytest.raises(RuntimeError, match="simulated crash"):
            phase3_validation.run(cfg)
    assert not [p for p in (data / "phase3").iterdir() if p.is_file()]  # no partial outputs
    checkpoints = [p for p in (data / "phase3" / "checkpoints").rglob("*.parquet")]
    # The HumanEval steering runs' checkpoints, kept aside: the rerun removes them once its outputs are written.
    he_checkpoints = root / "humaneval_checkpoints"
    for folder in (data / "phase3" / "checkpoints").glob("*/humaneval_*"):
        shutil.copytree(folder, he_checkpoints / folder.name)
    summary = phase3_validation.run(cfg)
    return {"cfg": cfg, "data": data, "summary": summary, "dataset": dataset, "hp_ids": hp_ids, "noisy": noisy,
            "val_ids": val_ids, "checkpoints_after_crash": checkpoints, "problems": problems,
            "humaneval_checkpoints": he_checkpoints, "humaneval_view": view}


def _output(e2e, prefix: str, suffix: str) -> Path:
    """The file of the e2e fixture's own Phase 3 run (other tests add later runs to the same folder)."""
    stamp = e2e["summary"].stem.removeprefix("summary_")
    return e2e["data"] / "phase3" / f"{prefix}_{stamp}{suffix}"


def test_outputs_written(e2e):
    out = e2e["data"] / "phase3"
    summary = e2e["summary"]
    stamp = summary.stem.removeprefix("summary_")
    for name in (f"validation_{stamp}.json", f"metrics_{stamp}.parquet", f"steering_{stamp}.parquet",
                 f"roc_{stamp}.png", f"metrics_by_temperature_{stamp}.png", f"steering_grid_{stamp}.png",
                 f"flipped_examples_{stamp}.md", f"validation_{stamp}_metadata.json", "summary.md",
                 f"probe_metrics_{stamp}.parquet"):
        assert (out / name).is_file(), name
    assert (out / "summary.md").read_text() == summary.read_text()
    assert not (out / "checkpoints").exists()  # removed once the outputs are written
    metrics = pd.read_parquet(out / f"metrics_{stamp}.parquet")
    # 4 latents x (hyperparams, validation@T0, HumanEval transfer); no Phase 1.2 here
    assert len(metrics) == 4 * 3 and (metrics["split"] == "humaneval").sum() == 4
    meta = json.loads((out / f"validation_{stamp}_metadata.json").read_text())
    assert meta["phase"] == "3" and meta["coefficients"] == [-3.0, 0.0, 3.0] and "phase2_results" in meta["inputs"]
    # No sae split here: the before-generation baselines are not computed, and the summary still says when each
    # predictor is known.
    assert "self_assessment_prompt" in meta and "### When each predictor is known" in summary.read_text()


# The document's top-level keys as Phase 3 wrote them before the document was typed (schema_version came after).
UNVERSIONED_KEYS = ["phase", "timestamp", "configuration", "inputs", "phase2_null", "phase2_top", "statistical",
                    "small_split_notes", "transfer", "steering", "outputs", "flags"]


def test_result_document_reads_back_typed_and_renders_the_same_summary(e2e, tmp_path):
    """The run's validation JSON reads as the typed document, writes again byte for byte, and renders its own summary.

    A copy without ``schema_version`` (a file written before the field existed) reads as the same version-1 document.
    """
    path = _output(e2e, "validation", ".json")
    doc = json.loads(path.read_text())
    assert list(doc) == ["schema_version", *UNVERSIONED_KEYS] and doc["schema_version"] == 1
    result = read_phase3_result(path)
    assert isinstance(result.steering.directions["correct"], DirectionSteeringResult) and result.transfer.measured
    assert result.steering.alpha0_check["validation"].changed_task_ids == [e2e["noisy"]]
    assert write_phase3_result(tmp_path / "again.json", result).read_text() == path.read_text()
    assert read_phase3_result(tmp_path / "again.json") == result
    assert render_summary(result) == e2e["summary"].read_text()
    legacy = tmp_path / "legacy.json"
    legacy.write_text(json.dumps({k: v for k, v in doc.items() if k != "schema_version"}, indent=2))
    assert read_phase3_result(legacy) == result


def test_transfer_section_scores_the_humaneval_run_at_mbpp_thresholds(e2e):
    doc = json.loads(_output(e2e, "validation", ".json").read_text())
    transfer = doc["transfer"]
    assert transfer["measured"] and transfer["sizes"]["n"] == N_PROBLEMS and transfer["model"] == e2e["cfg"].model
    assert "humaneval_phase1_dataset" in doc["inputs"]
    mbpp = {(lat["direction"], lat["rank"]): lat["threshold"] for lat in doc["statistical"]["latents"]}
    assert [(r["direction"], r["rank"]) for r in transfer["latents"]] == list(mbpp)
    for row in transfer["latents"]:
        assert row["split"] == "humaneval" and row["n"] == N_PROBLEMS
        assert row["threshold"] == mbpp[(row["direction"], row["rank"])] or not row["informative_threshold"]
    meta = json.loads(_output(e2e, "validation", "_metadata.json").read_text())
    assert "humaneval_phase1_dataset" in meta["inputs"]
    assert "## 2b. Transfer to HumanEval" in e2e["summary"].read_text()


def test_rates_use_the_alpha_zero_rerun_and_report_phase1_beside(e2e):
    doc = json.loads(_output(e2e, "validation", ".json").read_text())
    check = doc["steering"]["alpha0_check"]
    assert check["hyperparams"]["n_programs_changed"] == 0 and check["hyperparams"]["n_label_flips"] == 0
    # The only difference on validation is the planted batch-dependent task.
    assert check["validation"]["changed_task_ids"] == [e2e["noisy"]]
    assert check["validation"]["n_programs_changed"] == 1 and check["validation"]["n_label_flips"] == 1
    steering = pd.read_parquet(_output(e2e, "steering", ".parquet"))
    zero = steering[steering["role"] == "alpha0"].set_index("split")
    assert set(zero.index) == {"hyperparams", "validation", "humaneval"}  # HumanEval: the transfer's own rerun
    assert zero.loc["validation", "n_initially_incorrect"] == 3  # the rerun: the noisy task passes
    assert zero.loc["validation", "phase1_n_initially_incorrect"] == 4  # Phase 1.0: it failed
    for direction in ("correct", "incorrect"):
        v = doc["steering"]["directions"][direction]["validation"]
        assert v["n_initially_incorrect"] == 3 and v["phase1_n_initially_incorrect"] == 4
        assert v["baseline"] == "alpha = 0 rerun"
        assert v["n_corrected"] <= v["phase1_n_corrected"]
    assert any("differs from Phase 1.0 in 1 program" in f for f in doc["flags"])
    for direction in ("correct", "incorrect"):
        v = doc["steering"]["directions"][direction]["validation"]
        against = any(f.startswith(f"The {direction}-preferring latent's steering on validation goes against") for f in doc["flags"])
        assert against == (v["predicted_effect"] < 0)


def test_grid_controls_and_opposite_sign(e2e):
    steering = pd.read_parquet(_output(e2e, "steering", ".parquet"))
    grid = steering[steering["role"] == "grid"]
    assert len(grid) == 2 and (grid["alpha"] == 3.0).all() and (grid["split"] == "hyperparams").all()
    assert (grid["n_generations_changed"] > 0).all()  # alpha 3 changes the tiny model's programs
    opposite = steering[steering["role"] == "opposite"]
    assert len(opposite) == 2 and (opposite["alpha"] == -3.0).all() and (opposite["split"] == "hyperparams").all()
    # Every grid point, opposite-sign point and validation run has its two controls at the same alpha.
    for role in ("grid", "opposite", "validation"):
        assert len(steering[steering["role"] == f"control_{role}"]) == 2 * len(steering[steering["role"] == role])
    val = steering[steering["role"] == "validation"]
    assert (val["n_controls"] == 2).all() and val["p_vs_controls"].between(0, 1).all()
    assert (val["excess_effect"] == val["predicted_effect"] - val["mean_control_effect"]).all()
    doc = json.loads(_output(e2e, "validation", ".json").read_text())
    for direction in ("correct", "incorrect"):
        info = doc["steering"]["directions"][direction]
        assert info["chosen_alpha"] == 3.0 and info["opposite_sign"]["grid_hyperparams"][0]["alpha"] == -3.0
        assert len(info["control_test"]["per_control"]) == 2
        assert info["diff_means"] is None and info["diff_means_note"]  # no sae split in this fixture


def test_rerun_resumed_from_steering_checkpoints(e2e):
    assert e2e["checkpoints_after_crash"], "the crashed run left no checkpoints"
    steering = pd.read_parquet(_output(e2e, "steering", ".parquet"))
    runs = steering
    sizes = {"hyperparams": len(e2e["hp_ids"]), "validation": len(e2e["val_ids"]), "humaneval": N_PROBLEMS}
    # Every run, HumanEval's included, came whole from its checkpoint: the rerun generated nothing.
    assert (runs["n_resumed"].to_numpy() == runs["split"].map(sizes).to_numpy()).all()
    assert set(runs["split"]) == set(sizes)


def _he_records(e2e, prefix: str) -> pd.DataFrame:
    """The records of the one kept HumanEval checkpoint folder named ``humaneval_<prefix>_<key>``, by task id."""
    folders = [f for f in e2e["humaneval_checkpoints"].iterdir() if f.name.rsplit("_", 1)[0] == f"humaneval_{prefix}"]
    assert len(folders) == 1, [f.name for f in e2e["humaneval_checkpoints"].iterdir()]
    records = pd.DataFrame(RecordCheckpointer(folders[0]).load())
    return records.assign(task_id=records["task_id"].astype(int)).set_index("task_id").sort_index()


def _exact(k: int, n: int) -> tuple[float, float, float]:
    if n == 0:
        return (float("nan"),) * 3
    ci = sps.binomtest(k, n).proportion_ci(method="exact")
    return k / n, ci.low, ci.high


def test_humaneval_steering_reuses_mbpp_alpha_scale_vector_and_controls(e2e):
    doc = json.loads(_output(e2e, "validation", ".json").read_text())
    steering = doc["transfer"]["steering"]
    assert steering["measured"] and "not re-chosen" in steering["alpha_source"]
    assert "MBPP hyperparams" in steering["scale_source"] and steering["sizes"]["n"] == N_PROBLEMS
    table = pd.read_parquet(_output(e2e, "steering", ".parquet"))
    he = table[table["split"] == "humaneval"]
    assert set(he["role"]) == {"transfer", "control_transfer", "alpha0"}
    for direction in ("correct", "incorrect"):
        mbpp, info = doc["steering"]["directions"][direction], steering["directions"][direction]
        assert info["alpha"] == mbpp["chosen_alpha"] and info["humaneval"]["alpha"] == mbpp["chosen_alpha"]
        assert info["residual_norm"] == mbpp["residual_norm"] and info["hook_name"] == mbpp["hook_name"]
        assert info["control_latents"] == mbpp["control_selection"]["latents"]
        assert info["target"] == mbpp["target"]
        rows = he[(he["direction"] == direction) & he["role"].isin(["transfer", "control_transfer"])]
        assert (rows["alpha"] == mbpp["chosen_alpha"]).all()  # no other alpha was run on HumanEval
        assert sorted(rows.loc[rows["role"] == "control_transfer", "latent"]) == sorted(info["control_latents"])
        assert rows.loc[rows["role"] == "transfer", "latent"].tolist() == [mbpp["target"]["latent"]]
        assert info["mbpp_validation"]["correction_rate"] == mbpp["validation"]["correction_rate"]
    # The vectors are the MBPP ones: the HumanEval runs' checkpoint folders exist under the keys MBPP's alpha gives.
    names = {f.name.rsplit("_", 1)[0] for f in e2e["humaneval_checkpoints"].iterdir()}
    t = {d: doc["steering"]["directions"][d]["target"] for d in ("correct", "incorrect")}
    assert {f"humaneval_{d}_L{t[d]['layer']}_{t[d]['latent']}_a{doc['steering']['directions'][d]['chosen_alpha']:g}"
            for d in t} | {"humaneval_alpha0"} <= names
    summary = e2e["summary"].read_text()
    assert "### Steering transfer (MBPP's alpha, vector, scale and controls on HumanEval)" in summary
    assert "| run (HumanEval) |" in summary


def test_humaneval_steering_rates_equal_those_recomputed_from_checkpoints(e2e):
    doc = json.loads(_output(e2e, "validation", ".json").read_text())
    steering = doc["transfer"]["steering"]
    base = _he_records(e2e, "alpha0")["passed"].astype(bool)
    assert list(base.index) == list(range(N_PROBLEMS))
    assert steering["sizes"]["n_correct_alpha0"] == int(base.sum())
    phase1 = pd.read_parquet(doc["transfer"]["dataset"]).set_index("task_id").sort_index()["passed"].astype(bool)
    for direction in ("correct", "incorrect"):
        info = steering["directions"][direction]
        t = info["target"]
        after = _he_records(e2e, f"{direction}_L{t['layer']}_{t['latent']}_a{info['alpha']:g}")["passed"].astype(bool)
        row = info["humaneval"]
        corrected, corrupted = int((~base & after).sum()), int((base & ~after).sum())
        assert (row["n_corrected"], row["n_initially_incorrect"]) == (corrected, int((~base).sum()))
        assert (row["n_corrupted"], row["n_initially_correct"]) == (corrupted, int(base.sum()))
        for kind, k, n in (("correction", corrected, int((~base).sum())), ("corruption", corrupted, int(base.sum()))):
            expected = _exact(k, n)
            got = (row[f"{kind}_rate"], row[f"{kind}_ci_lo"], row[f"{kind}_ci_hi"])
            if n == 0:  # a one-class rerun: the rate that does not exist is empty and the note says so
                assert got == (None, None, None) and steering["note"]
            else:
                assert got == pytest.approx(expected)
        if corrected + corrupted:
            assert row["mcnemar_p"] == pytest.approx(sps.binomtest(corrected, corrected + corrupted).pvalue)
        assert row["phase1_n_corrected"] == int((~phase1 & after).sum())
        assert row["phase1_n_corrupted"] == int((phase1 & ~after).sum())
        # Each control, recomputed from its own checkpoint; "beaten" = a lower predicted effect than the target's.
        sign = 1 if direction == "correct" else -1
        n_inc, n_cor = int((~base).sum()), int(base.sum())
        target_effect = sign * ((corrected / n_inc if n_inc else 0.0) - (corrupted / n_cor if n_cor else 0.0))
        assert info["control_test"]["target_effect"] == pytest.approx(target_effect)
        beaten = 0
        for latent, c in zip(info["control_latents"], info["control_test"]["per_control"]):
            c_after = _he_records(e2e, f"control_L{t['layer']}_{latent}_a{info['alpha']:g}")["passed"].astype(bool)
            assert (c["n_corrected"], c["n_corrupted"]) == (int((~base & c_after).sum()), int((base & ~c_after).sum()))
            beaten += target_effect > c["predicted_effect"]
        assert info["control_test"]["n_beaten"] == beaten == row["n_controls_beaten"]


def test_humaneval_transfer_rows_in_metric_tables(e2e):
    doc = json.loads(_output(e2e, "validation", ".json").read_text())
    metrics = pd.read_parquet(_output(e2e, "metrics", ".parquet"))
    he = metrics[metrics["split"] == "humaneval"]
    assert len(he) == len(doc["transfer"]["latents"])
    for row in doc["transfer"]["latents"]:
        match = he[(he["direction"] == row["direction"]) & (he["rank"] == row["rank"])]
        assert len(match) == 1 and match["n"].iloc[0] == row["n"]
        expected = float("nan") if row["auroc"] is None else row["auroc"]  # JSON has null where the table has NaN
        assert match["auroc"].iloc[0] == pytest.approx(expected, nan_ok=True)
        assert match["f1"].iloc[0] == pytest.approx(float("nan") if row["f1"] is None else row["f1"], nan_ok=True)
    probes = pd.read_parquet(_output(e2e, "probe_metrics", ".parquet"))
    assert doc["transfer"]["probes"] == [] and probes.empty  # no sae split here: no probes (test_transfer covers them)


def test_humaneval_prompt_that_differs_from_phase1_is_one_line(e2e, tmp_path):
    import gzip

    from phase3_validation.transfer import load_transfer_set
    from phase3_validation.transfer_steering import load_transfer_split

    lines = gzip.open(e2e["humaneval_view"], "rt").read().splitlines()
    first = json.loads(lines[0])
    first["prompt"] = first["prompt"].replace('"""', '"""Edited. ', 1)
    changed = tmp_path / "changed.jsonl"
    changed.write_text("\n".join([json.dumps(first)] + lines[1:]) + "\n")
    tset = load_transfer_set(e2e["data"], e2e["cfg"].model)
    split, source = load_transfer_split(tset, None)  # the file the HumanEval run recorded
    assert source == str(e2e["humaneval_view"]) and len(split) == N_PROBLEMS
    with pytest.raises(PipelineError, match="HumanEval task 0 .*differs from the one the HumanEval Phase 1 run used") as exc:
        load_transfer_split(tset, str(changed))
    assert "\n" not in str(exc.value)
    short = tmp_path / "short.jsonl"
    short.write_text("\n".join(lines[:10]) + "\n")
    with pytest.raises(PipelineError, match=r"has no task 10 of the HumanEval Phase 1 run .*\(10 missing\)"):
        load_transfer_split(tset, str(short))


def test_summary_reports_null_intervals_baselines_and_config(e2e):
    text = e2e["summary"].read_text()
    assert "No correct-preferring latent beat the shuffled-label null" in text
    assert "beat Phase 2's permutation null" in text
    assert "AUROC [95% CI] (0.5)" in text and "F1 (flag everything)" in text and "base rate" in text
    assert "AUPRC (prevalence)" in text
    assert "Clopper-Pearson" in text and "McNemar" in text and "sign test" in text and "beats **" in text
    assert "alpha = 0 rerun against Phase 1.0" in text and "| validation | 1 | 1 (0) | 6 |" in text
    assert "| hyperparams | 0 | 0 (0) | 4 |" in text
    assert "hook point: `resid_post`" in text and "position policy: `all`" in text
    assert "coefficient grid: -3, 0, 3" in text and "git commit" in text
    assert "against the hypothesis (alpha < 0" in text and "Split: sae" in text
    assert "(1 + number of shuffles whose maximum is at or above" in text and "1/51" in text
    assert "Probe baselines: no sae split" in text
    assert "Reviewer baselines skipped: no sae split" in text  # reviewer baselines: one line, nothing else fails
    # The prompting baseline, beside steering, against the same alpha = 0 rerun.
    doc = json.loads(_output(e2e, "validation", ".json").read_text())
    prompting_doc = doc["steering"]["prompting_baseline"]
    assert prompting_doc["instruction"] in text and "### Prompting baseline" in text
    assert doc["configuration"]["prompting_instruction"] == prompting_doc["instruction"]
    meta = json.loads(_output(e2e, "validation", "_metadata.json").read_text())
    assert meta["prompting_instruction"] == prompting_doc["instruction"]
    steering = pd.read_parquet(_output(e2e, "steering", ".parquet"))
    row = steering[steering["role"] == "prompting"].iloc[0]
    assert row["split"] == "validation" and row["n_tasks"] == 6
    assert row["n_corrected"] == prompting_doc["rates"]["n_corrected"]
    assert row["n_initially_incorrect"] + row["n_initially_correct"] == 6
    # Bad input: 2 + 2 hyperparams tasks are too few for a threshold; one line says so and the rest is computed.
    assert text.count("The hyperparams split is too small to choose a threshold: 2 correct and 2 incorrect tasks") == 1
    metrics = pd.read_parquet(_output(e2e, "metrics", ".parquet"))
    assert not metrics["informative_threshold"].any() and metrics["f1"].isna().all()
    assert metrics.loc[metrics["split"] == "validation", "auroc"].between(0, 1).all()
    assert "| no informative threshold |" in text
    flipped = _output(e2e, "flipped_examples", ".md").read_text()
    assert "correct-preferring latent L1/3" in flipped


def test_model_mismatch_with_phase1_is_an_error(e2e, tmp_path):
    cfg = _cfg(e2e["data"], e2e["problems"], tmp_path / "another_model")
    with pytest.raises(PipelineError, match="not the model that produced the Phase 1 activations"):
        phase3_validation.run(cfg)


def test_prompt_position_policy_runs(e2e, caplog):
    """--steer-positions prompt goes through the same path (and is recorded); resid_pre's norm is measured there."""
    model_dir = Path(e2e["cfg"].model)
    cfg = _cfg(e2e["data"], e2e["problems"], model_dir, steer_positions="prompt", hook_point="resid_pre",
               n_random_controls=1, top_latents_validated=1)
    with caplog.at_level(logging.INFO):
        summary = phase3_validation.run(cfg)
    text = summary.read_text()
    assert "position policy: `prompt`" in text and "hook point: `resid_pre`" in text
    assert "saved layer 0's activations give" in text  # resid_pre of layer 1 = saved layer 0, shown beside
    doc = json.loads(summary.with_name(summary.name.replace("summary_", "validation_").replace(".md", ".json")).read_text())
    for info in doc["steering"]["directions"].values():
        # The forward pass over the hyperparams prompts sees the same vectors Phase 1.0 saved at that site.
        assert info["scale_layer"] == 0 and info["residual_norm"] == pytest.approx(info["saved_layer_norm"], rel=1e-3)


def test_resid_mid_is_steered_with_the_norm_measured_there(e2e):
    """resid_mid has no saved activations: its norm comes from the forward pass, recorded, and alpha scales by it."""
    model_dir = Path(e2e["cfg"].model)
    summary = phase3_validation.run(_cfg(e2e["data"], e2e["problems"], model_dir, hook_point="resid_mid",
                                         coefficients=[3.0], n_random_controls=1, top_latents_validated=1))
    stamp = summary.stem.removeprefix("summary_")
    doc = json.loads((summary.parent / f"validation_{stamp}.json").read_text())
    post = json.loads(_output(e2e, "validation", ".json").read_text())
    for direction, info in doc["steering"]["directions"].items():
        assert info["hook_name"].endswith("hook_resid_mid") and info["scale_layer"] is None
        assert info["saved_layer_norm"] is None and info["residual_norm"] > 0
        assert info["residual_norm"] != pytest.approx(post["steering"]["directions"][direction]["residual_norm"])
    outcomes = pd.read_parquet(summary.parent / f"steering_outcomes_{stamp}.parquet")
    steered = outcomes[outcomes["run"].isin(["target", "control_0"])]
    norms = {d: doc["steering"]["directions"][d]["residual_norm"] for d in ("correct", "incorrect")}
    # Target and control have the same length at the hook point: alpha x the measured norm.
    assert np.allclose(steered["vector_norm"], steered["alpha"].abs() * steered["direction"].map(norms), rtol=1e-5)
    assert "no saved activations at this site" in summary.read_text()


def test_kept_generations_let_a_rerun_generate_nothing(e2e):
    """--keep-generations leaves the steered runs on disk; the next run reads every one back, then clears them."""
    model_dir = Path(e2e["cfg"].model)
    small = dict(coefficients=[3.0], n_random_controls=1, top_latents_validated=1)
    checkpoints = e2e["data"] / "phase3" / "checkpoints"
    first = phase3_validation.run(_cfg(e2e["data"], e2e["problems"], model_dir, keep_generations=True, **small))
    kept = sorted(p.relative_to(checkpoints) for p in checkpoints.rglob("*.parquet"))
    assert kept
    again = phase3_validation.run(_cfg(e2e["data"], e2e["problems"], model_dir, **small))
    runs = {s: pd.read_parquet(s.parent / s.name.replace("summary_", "steering_").replace(".md", ".parquet"))
            for s in (first, again)}
    assert (runs[first]["n_resumed"] == 0).all()  # the fixture's own checkpoints were cleared before this test
    sizes = {"hyperparams": len(e2e["hp_ids"]), "validation": len(e2e["val_ids"]), "humaneval": N_PROBLEMS}
    assert (runs[again]["n_resumed"].to_numpy() == runs[again]["split"].map(sizes).to_numpy()).all()
    outcomes = [pd.read_parquet(s.parent / s.name.replace("summary_", "steering_outcomes_").replace(".md", ".parquet"))
                for s in (first, again)]
    pd.testing.assert_frame_equal(outcomes[0], outcomes[1])
    assert not checkpoints.exists()  # the run without the flag removed what it read
    # The generations' model time moves from "this process" to "read back": the rerun knows what they cost.
    cost = [json.loads((s.parent / s.name.replace("summary_", "validation_").replace(".md", "_metadata.json"))
                       .read_text())["generation_cost"] for s in (first, again)]
    assert cost[0]["sequences_read_back"] == 0 and cost[0]["model_seconds_this_process"] > 0
    assert cost[1]["sequences_read_back"] == cost[1]["sequences"] == cost[0]["sequences"]
    assert cost[1]["model_seconds_this_process"] == 0
    assert cost[1]["model_seconds_read_back"] == cost[0]["model_seconds_this_process"]


def test_runs_on_real_phase2_results(e2e, tmp_path):
    """The contract with phase2_sae_analysis: Phase 3 reads what Phase 2 really writes (schema, paths)."""
    phase2 = pytest.importorskip("phase2_sae_analysis")

    from common.datadir import write_parquet

    data = tmp_path / "data"
    shutil.copytree(e2e["data"], data)
    used = set(e2e["hp_ids"]) | set(e2e["val_ids"])
    rest = load_mbpp(str(e2e["problems"]))
    rest = rest[~rest["task_id"].isin(used)].reset_index(drop=True)
    labels = e2e["dataset"].set_index("task_id").loc[rest["task_id"], "passed"]
    if labels.all() or not labels.any():
        pytest.skip("the remaining tasks hold one class only: no sae split for Phase 2")
    write_parquet(rest, data / "phase0_1" / "sae_mbpp.parquet")
    cfg = _cfg(data, e2e["problems"], Path(e2e["cfg"].model), sae_path=str(Path(e2e["cfg"].data_dir).parent / "saes"),
               general_filter=False, permutations=20, top_k=3, n_random_controls=1, top_latents_validated=1)
    results = phase2.run(cfg)
    summary = phase3_validation.run(cfg)
    doc = json.loads(summary.with_name(summary.name.replace("summary_", "validation_").replace(".md", ".json")).read_text())
    assert doc["inputs"]["phase2_results"] == str(results)
    assert doc["inputs"]["phase1_dataset"] == str(next((data / "phase1_0").glob("dataset_*.parquet")))
    from common.datadir import PHASE2_RESULTS, PHASE2_TOP, read_phase1_metadata

    raw = PHASE2_RESULTS.read_json(results)  # every declared field is there
    dataset = Path(raw["label_source"]["tables"][0])
    assert raw["label_source"]["phase"] == "1" and dataset.is_file()
    assert raw["phase1_model"] == read_phase1_metadata(dataset)["model"] == e2e["cfg"].model
    PHASE2_TOP.read_table(raw["top_latents_path"])
    assert doc["phase2_top"]["correct"]["latent"] == raw["top_latents"]["correct"][0]["latent"]
    assert doc["steering"]["alpha0_check"]["hyperparams"]["n_programs_changed"] == 0
    # The real Phase 2 run wrote an sae split: the probe rows and the diff-of-means steering baseline are there.
    assert doc["statistical"]["probes"]["best_layer"] or doc["statistical"]["probes"]["note"]


# --------------------------------------------------------------------------- bad input across runs


def _val_samples(val_ids):
    return pd.DataFrame([{"task_id": t, "sample_index": k, "passed": k == 0} for t in val_ids for k in range(2)])


def test_phase12_tables_from_another_model_are_refused(planted_data):
    data, val_ids, *_ = planted_data
    write_temperature_run(data, {0.6: _val_samples(val_ids)}, model="other/model")
    with pytest.raises(PipelineError, match=r"temperature_metadata\.json: the Phase 1\.2 tables are from model 'other/model' but the Phase 1\.0 dataset dataset_.*is from 'google/gemma-2-2b'"):
        load_inputs(PipelineConfig(data_dir=str(data)))


def test_phase2_results_from_another_model_are_refused(planted_data):
    data, *_ = planted_data
    results = next((data / "phase2").glob("results_sae_*.json"))
    doc = json.loads(results.read_text())
    doc["phase1_model"] = "other/model"
    results.write_text(json.dumps(doc))
    with pytest.raises(PipelineError, match=r"results_sae_.*\.json: Phase 2 read activations of model 'other/model' but the Phase 1\.0 dataset"):
        load_inputs(PipelineConfig(data_dir=str(data)))


def test_phase2_results_missing_a_field_name_it(planted_data):
    data, *_ = planted_data
    results = next((data / "phase2").glob("results_sae_*.json"))
    doc = json.loads(results.read_text())
    del doc["label_source"]
    results.write_text(json.dumps(doc))
    with pytest.raises(PipelineError, match=rf"{results.name}: missing label_source; a Phase 2 results file"):
        load_inputs(PipelineConfig(data_dir=str(data)))


def test_phase12_folder_with_two_runs_is_one_line_and_writes_nothing(planted_data):
    """Through the CLI: a stray table of another run beside the run's own tables; exit 2, no Phase 3 output."""
    import subprocess
    import sys

    from tests.helpers import REPO_ROOT

    data, val_ids, *_ = planted_data
    folder = write_temperature_run(data, {0.6: _val_samples(val_ids)})
    stray = folder / "dataset_temp_0_6.parquet"
    stray.rename(folder / "dataset_temp_0_9.parquet")  # as if another run's table sat beside this run's
    write_temperature_run(data, {0.6: _val_samples(val_ids)})
    out = subprocess.run(
        [sys.executable, str(REPO_ROOT / "run.py"), "phase", "3", "--data-dir", str(data), "--device", "cpu"],
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 2, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in out.stderr
    assert "dataset_temp_0_9.parquet is not part of the run" in errors[0] and "two runs" in errors[0]
    assert sorted(p.name for p in (data / "phase3").iterdir() if not p.name.startswith(".")) == ["logs"]  # .lock aside


# --------------------------------------------------------------------------- per-task outcomes: every p re-derived


def test_every_steering_p_value_rederives_from_the_outcomes_file(e2e):
    doc = json.loads(_output(e2e, "validation", ".json").read_text())
    outcomes = STEERING_OUTCOMES.read_table(_output(e2e, "steering_outcomes", ".parquet"))
    steering = pd.read_parquet(_output(e2e, "steering", ".parquet"))
    assert set(outcomes["run"]) == {"alpha0", "target", "control_0", "control_1", "prompting"}
    # Per direction: grid (one alpha > 0), validation, opposite sign (one alpha < 0); then HumanEval's two.
    assert check_steering_p_values(doc, outcomes, steering) == 2 * 3 + 2
    unsteered = doc["steering"]["unsteered_degenerate"]
    for split in ("hyperparams", "validation"):
        rows = outcomes[(outcomes["split"] == split) & (outcomes["run"] == "alpha0")]
        assert unsteered[f"{split} alpha = 0 rerun"]["n_degenerate"] == int(rows["degenerate"].sum())
    for direction, info in doc["steering"]["directions"].items():
        broken = info["validation"]["degenerate_rate"] >= 0.5
        assert broken == any(f.startswith("At the chosen alpha") and f"{direction}-preferring steered" in f
                             for f in doc["flags"])
    summary = e2e["summary"].read_text()
    for text in ("Norm matching:", "Within-task permutation test against all 2 controls", "Degenerate output:",
                 "corruption without degenerate outputs", "Degenerate outputs without steering"):
        assert text in summary, text
