"""Evaluation-set rows: a threshold that puts the evaluated set in one class reports no threshold metrics; AUPRC
stands beside the prevalence."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score

from common.datadir import TransferSection, from_json, json_safe
from phase3_validation.statistical import NO_THRESHOLD_ON_SET, evaluate_at_threshold
from phase3_validation.summary import _metric_cells, _transfer_section


def _set(seed: int = 0, n: int = 80):
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.4
    scores = y + rng.normal(0, 0.8, n)
    return y, scores


@pytest.mark.parametrize("side", ["above", "below"])
def test_one_class_predictions_on_the_evaluated_set_are_not_reported_as_results(side):
    y, scores = _set()
    threshold = scores.max() + 1.0 if side == "above" else scores.min() - 1.0
    row = evaluate_at_threshold(y, scores, threshold, n_bootstrap=100, seed=0)
    assert not row["informative_threshold"] and row["threshold_status"] == "one class on this set"
    assert row["predicted_positive_rate_at_threshold"] == (0.0 if side == "above" else 1.0)
    assert all(math.isnan(row[k]) for k in ("f1", "precision", "recall", "accuracy"))
    assert row["threshold"] == threshold  # the MBPP-chosen number is kept, only its metrics are withheld
    assert NO_THRESHOLD_ON_SET in row["note"]
    cells = _metric_cells(row)
    assert NO_THRESHOLD_ON_SET in cells and "0.000" not in cells.split(NO_THRESHOLD_ON_SET)[1]
    # The AUROC needs no threshold and stays.
    assert 0.5 < row["auroc"] <= 1.0


def test_a_splitting_threshold_reports_f1_beside_flag_everything_and_auprc_beside_prevalence():
    y, scores = _set(1)
    threshold = float(np.median(scores))
    row = evaluate_at_threshold(y, scores, threshold, n_bootstrap=100, seed=0)
    assert row["informative_threshold"] and row["threshold_status"] == "informative"
    assert row["f1"] == pytest.approx(f1_score(y, scores >= threshold))
    assert row["f1_baseline_always_positive"] == pytest.approx(f1_score(y, np.ones_like(y)))
    assert row["auprc"] == pytest.approx(average_precision_score(y, scores))
    assert row["auprc_baseline_prevalence"] == pytest.approx(y.mean())
    cells = _metric_cells(row)
    assert f"{row['auprc']:.3f} ({y.mean():.3f})" in cells


def test_one_class_labels_leave_auprc_undefined():
    scores = np.linspace(0, 1, 10)
    row = evaluate_at_threshold(np.ones(10, dtype=bool), scores, 0.5, n_bootstrap=50, seed=0)
    assert math.isnan(row["auroc"]) and math.isnan(row["auprc"])


def test_transfer_rows_read_back_from_json_render_each_threshold_status():
    """Rows as Phase 3 writes them (NaN -> null): no threshold chosen, one class on HumanEval, informative."""
    y, scores = _set(2)
    rows = []
    for name, threshold in (("none", None), ("one-class", scores.max() + 1), ("splits", float(np.median(scores)))):
        row = evaluate_at_threshold(y, scores, threshold, n_bootstrap=50, seed=0)
        rows.append({**row, "probe": "logistic", "name": name, "positive_class": "correct",
                     "mbpp_validation_auroc": 0.7, "mbpp_validation_auroc_ci_lo": 0.6, "mbpp_validation_auroc_ci_hi": 0.8,
                     "mbpp_validation_f1": 0.5, "mbpp_validation_f1_baseline_always_positive": 0.6})
    transfer = {"benchmark": "humaneval", "measured": True, "slice": None, "probe_note": None, "sizes": {"n": 80, "n_correct": int(y.sum()), "n_incorrect": int((~y).sum())},
                "rule": "r", "dataset": "d", "model": "m", "prompt_template_version": "v", "note": None,
                "latents": [], "probes": rows, "steering": {"measured": False, "note": "n"}}
    text = "\n".join(_transfer_section(from_json(TransferSection, json_safe(transfer)), {}))
    lines = {name: next(ln for ln in text.splitlines() if f"| {name} |" in ln) for name in ("none", "one-class", "splits")}
    assert "| no informative threshold |" in lines["none"] and "| n/a |" in lines["none"]
    assert NO_THRESHOLD_ON_SET in lines["one-class"] and f"{scores.max() + 1:.4g}" in lines["one-class"]
    assert f"{np.median(scores):.4g}" in lines["splits"] and "no informative" not in lines["splits"]
