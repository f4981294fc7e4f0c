"""Probe baselines: known answers on synthetic residual vectors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from common.config import PipelineConfig
from common.datadir import write_parquet
from phase3_validation.inputs import load_inputs
from phase3_validation.probes import diff_of_means_direction, evaluate_probes, fit_logistic_probe
from phase3_validation.statistical import split_too_small
from tests.artifact_builders import write_temperature_run
from tests.phase3_validation.builders import (
    latent_item,
    make_sae,
    mbpp_row,
    write_phase2_results,
    write_splits,
    write_synthetic_phase1,
)

D_IN = 12
LAYERS = (0, 1, 2)
SIGNAL_LAYER = 1


def _write(tmp_path, n_sae=60, seed=0):
    """sae / hyperparams / validation tasks; only layer 1's vectors carry the label (along a dense direction)."""
    rng = np.random.default_rng(seed)
    data = tmp_path / "data"
    sae_ids, hp_ids, val_ids = list(range(1, 1 + n_sae)), list(range(100, 130)), list(range(200, 260))
    ids = sae_ids + hp_ids + val_ids
    rows = [mbpp_row(t, f"Write a function number {t}.", [f"assert f() == {t}"]) for t in ids]
    passed = {t: bool(rng.random() < 0.5) for t in ids}
    for group in (sae_ids, hp_ids, val_ids):  # both classes in every split
        passed[group[0]], passed[group[1]] = True, False
    signal = rng.normal(size=D_IN)
    signal /= np.linalg.norm(signal)
    acts = {}
    for t in ids:
        acts[t] = {}
        for layer in LAYERS:
            v = rng.normal(0, 1.0, size=D_IN)
            if layer == SIGNAL_LAYER:
                v += (1.5 if passed[t] else -1.5) * signal
            acts[t][layer] = v.astype(np.float32)
    write_splits(data, rows, hp_ids, val_ids)
    write_parquet(pd.DataFrame([r for r in rows if r["task_id"] in sae_ids]), data / "phase0_1" / "sae_mbpp.parquet")
    write_synthetic_phase1(data, rows, passed, acts)
    sae_dir = tmp_path / "saes"
    make_sae(sae_dir, SIGNAL_LAYER, D_IN, 8)
    write_phase2_results(data, sae_dir, {"correct": [latent_item(1, 1, 3, 0.3)], "incorrect": [latent_item(1, 1, 5, 0.3)]},
                         8, [SIGNAL_LAYER])
    return data, signal, passed, acts, val_ids


def test_planted_linear_signal_is_found_at_its_layer(tmp_path):
    data, signal, passed, acts, val_ids = _write(tmp_path)
    inputs = load_inputs(PipelineConfig(data_dir=str(data)))
    assert inputs.saved_layers() == list(LAYERS)
    probes = evaluate_probes(inputs, n_bootstrap=200, seed=0)
    assert probes.note is None
    for kind in ("logistic", "diff_means"):
        assert probes.best[kind] == {"correct": SIGNAL_LAYER, "incorrect": SIGNAL_LAYER}
        for positive in ("correct", "incorrect"):
            ev = probes.find(kind, positive, SIGNAL_LAYER)
            val = next(r for r in ev.rows if r["split"] == "validation")
            assert val["auroc"] > 0.9 and val["auroc_ci_lo"] > 0.75
            assert val["f1"] > val["f1_baseline_always_positive"]
            noise = next(r for r in probes.find(kind, positive, 0).rows if r["split"] == "validation")
            assert noise["auroc_ci_lo"] < 0.5 + 0.2 and noise["auroc"] < 0.75
    # The diff-of-means direction recovers the planted one; its score is the plain projection.
    assert float(probes.directions[SIGNAL_LAYER] @ signal) > 0.9
    ev = probes.find("diff_means", "correct", SIGNAL_LAYER)
    x_val = np.stack([acts[t][SIGNAL_LAYER] for t in val_ids]).astype(np.float64)
    y_val = np.array([passed[t] for t in val_ids])
    val = next(r for r in ev.rows if r["split"] == "validation")
    assert val["auroc"] == pytest.approx(roc_auc_score(y_val, x_val @ probes.directions[SIGNAL_LAYER]))
    assert len(probes.best_rows()) == 4 and set(probes.chosen_c) == set(LAYERS)


def test_logistic_probe_and_direction_helpers():
    rng = np.random.default_rng(1)
    y = rng.random(80) < 0.5
    x = rng.normal(size=(80, 5))
    x[:, 2] += 3 * y
    d = diff_of_means_direction(x, y)
    assert np.linalg.norm(d) == pytest.approx(1.0) and np.argmax(np.abs(d)) == 2 and d[2] > 0
    pipe = fit_logistic_probe(x, y, seed=0)
    assert roc_auc_score(y, pipe.decision_function(x)) > 0.95
    assert pipe[-1].C_ > 0


def test_too_small_sae_split_gives_one_line_and_no_probes(tmp_path):
    data, *_ = _write(tmp_path, n_sae=4)
    inputs = load_inputs(PipelineConfig(data_dir=str(data)))
    counts = (int(inputs.sae.correct.sum()), int((~inputs.sae.correct).sum()))
    probes = evaluate_probes(inputs, n_bootstrap=50, seed=0)
    assert probes.evaluations == [] and probes.note.startswith("the sae split is too small to fit a probe")
    assert f"{counts[0]} correct and {counts[1]} incorrect" in probes.note
    assert split_too_small(np.array([1, 1, 1, 0, 0, 0], bool), "x", 3, "y") is None


def test_probe_rows_at_each_phase1_2_temperature(tmp_path):
    from common.datadir import save_task_activations

    data, signal, passed, acts, val_ids = _write(tmp_path)
    rng = np.random.default_rng(4)
    rows = [{"task_id": t, "sample_index": k, "passed": bool(rng.random() < (0.9 if passed[t] else 0.1))}
            for t in val_ids for k in range(2)]
    write_temperature_run(data, {0.7: pd.DataFrame(rows)})
    for t in val_ids:
        save_task_activations(data / "phase1_2" / "activations", t, acts[t])
    probes = evaluate_probes(load_inputs(PipelineConfig(data_dir=str(data))), n_bootstrap=100, seed=0)
    ev = probes.find("logistic", "correct", SIGNAL_LAYER)
    (hot,) = [r for r in ev.rows if r["temperature"] == 0.7]
    assert hot["split"] == "validation" and hot["n"] == 2 * len(val_ids) and hot["n_tasks"] == len(val_ids)
    assert hot["auroc"] > 0.75 and "task" in hot["auroc_ci_method"]
