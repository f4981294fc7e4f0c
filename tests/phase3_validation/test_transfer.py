"""HumanEval transfer: MBPP's latents, thresholds and probes scored unchanged on HumanEval."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from common.config import PipelineConfig
from common.datadir import TransferSection, from_json, json_safe, save_task_activations, write_parquet
from common.errors import PipelineError
from common.saes.loading import SAESource, encode, load_sae
from phase3_validation.inputs import load_inputs
from phase3_validation.probes import evaluate_probes
from phase3_validation.statistical import validate_latents
from phase3_validation.summary import _transfer_section
from phase3_validation.transfer import (
    HUMANEVAL_COMMAND,
    THRESHOLD_SOURCE,
    load_transfer_set,
    transfer_flags,
    transfer_statistics,
)
from tests.artifact_builders import DEFAULT_MODEL, write_phase1_run
from tests.phase3_validation.builders import (
    latent_item,
    make_sae,
    mbpp_row,
    write_phase2_results,
    write_splits,
    write_synthetic_phase1,
)

D_IN, D_SAE, LAYER = 16, 8, 2
U_CORRECT, U_INCORRECT = np.eye(D_IN)[0], np.eye(D_IN)[1]


def _vector(rng: np.random.Generator, passed: bool, shift: np.ndarray | None = None) -> np.ndarray:
    v = rng.normal(0, 0.3, size=D_IN) + (2.0 * U_CORRECT if passed else 2.0 * U_INCORRECT)
    return (v if shift is None else v + shift).astype(np.float32)


def _mbpp(tmp_path):
    """MBPP sae (30), hyperparams (20), validation (30) tasks with a planted signal at layer 2, and its Phase 2."""
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    sae_ids, hp_ids, val_ids = list(range(1, 31)), list(range(100, 120)), list(range(200, 230))
    ids = sae_ids + hp_ids + val_ids
    rows = [mbpp_row(t, f"Write a function number {t}.", [f"assert f() == {t}"]) for t in ids]
    passed = {t: bool(i % 2) for i, t in enumerate(ids)}
    write_splits(data, rows, hp_ids, val_ids)
    write_parquet(pd.DataFrame([r for r in rows if r["task_id"] in sae_ids]), data / "phase0_1" / "sae_mbpp.parquet")
    write_synthetic_phase1(data, rows, passed, {t: {LAYER: _vector(rng, passed[t])} for t in ids})
    sae_dir = tmp_path / "saes"
    make_sae(sae_dir, LAYER, D_IN, D_SAE, planted={3: U_CORRECT, 5: U_INCORRECT})
    top = {"correct": [latent_item(1, LAYER, 3, 0.9)], "incorrect": [latent_item(1, LAYER, 5, 0.9)]}
    write_phase2_results(data, sae_dir, top, D_SAE, [LAYER], beats_null={"correct": True, "incorrect": True})
    return data, sae_dir


def _humaneval(data, n=24, shift=None, model=DEFAULT_MODEL, seed=1, signal=True, reverse=False):
    """A HumanEval Phase 1.0 run (task ids 0..n-1, a third correct) under data/humaneval, as the real phase writes it."""
    rng = np.random.default_rng(seed)
    root = data / "humaneval"
    passed = {t: t % 3 == 0 for t in range(n)}
    # signal=False: the vectors follow a coin flip unrelated to the label, so nothing can transfer.
    # reverse=True: the vectors follow the opposite label, so every score's sign reverses on this set.
    acts = {t: _vector(rng, (passed[t] != reverse) if signal else bool(rng.random() < 0.5), shift) for t in range(n)}
    for t in range(n):
        save_task_activations(root / "phase1_0" / "activations", t, {LAYER: acts[t]}, "correct" if passed[t] else "incorrect")
    write_phase1_run(root, pd.DataFrame({"task_id": list(range(n)), "passed": [passed[t] for t in range(n)]}), model=model)
    return passed, acts


def _mbpp_side(data):
    inputs = load_inputs(PipelineConfig(data_dir=str(data)))
    evaluations = validate_latents(inputs, top_n=1, n_bootstrap=200, seed=0)
    probes = evaluate_probes(inputs, n_bootstrap=200, seed=0)
    return inputs, evaluations, probes


def _transfer(data):
    inputs, evaluations, probes = _mbpp_side(data)
    tset = load_transfer_set(data, str(inputs.phase1_meta["model"]))
    return evaluations, probes, transfer_statistics(tset, inputs, evaluations, probes, 200, 0, data)


def _section(result):
    """The transfer section as the result document holds it (as written: NaN as null)."""
    return from_json(TransferSection, json_safe(result.to_dict()), "transfer")


def test_latents_and_probes_are_scored_on_humaneval_at_mbpp_thresholds(tmp_path):
    data, sae_dir = _mbpp(tmp_path)
    passed, acts = _humaneval(data)
    evaluations, probes, result = _transfer(data)
    assert result.note is None and result.sizes == {"n": 24, "n_correct": 8, "n_incorrect": 16}
    y = np.array([passed[t] for t in range(24)])
    x = np.stack([acts[t] for t in range(24)])
    encoded = encode(load_sae(SAESource(local_path=str(sae_dir)), LAYER), x)
    assert [(r["direction"], r["latent"]) for r in result.latents] == [("correct", 3), ("incorrect", 5)]
    for ev, row in zip(evaluations, result.latents):
        positive = y if ev.ref.direction == "correct" else ~y
        scores = encoded[:, ev.ref.latent]
        assert row["threshold"] == ev.threshold and row["threshold_source"] == THRESHOLD_SOURCE
        assert row["auroc"] == pytest.approx(roc_auc_score(positive, scores)) and row["auroc"] > 0.95
        assert row["auroc_ci_lo"] <= row["auroc"] <= row["auroc_ci_hi"]
        pred = scores >= ev.threshold
        assert row["f1"] == pytest.approx(f1_score(positive, pred))
        assert row["accuracy"] == pytest.approx(accuracy_score(positive, pred))
        b = positive.mean()
        assert row["base_rate"] == pytest.approx(b) and row["f1_baseline_always_positive"] == pytest.approx(2 * b / (1 + b))
        mbpp = next(r for r in ev.rows if r["split"] == "validation")
        assert row["mbpp_validation_auroc"] == mbpp["auroc"] and row["mbpp_validation_f1"] == mbpp["f1"]
    # Probes: the ones fitted on MBPP's sae split, at their MBPP best layer and threshold.
    assert {(r["probe"], r["positive_class"]) for r in result.probes} == {
        (k, p) for k in ("logistic", "diff_means") for p in ("correct", "incorrect")}
    for row in result.probes:
        ev = probes.find(row["probe"], row["positive_class"], row["layer"])
        sign = 1.0 if row["positive_class"] == "correct" else -1.0
        scores = sign * probes.fitted[LAYER].scores(row["probe"], x)
        positive = y if row["positive_class"] == "correct" else ~y
        assert row["threshold"] == ev.threshold
        assert row["auroc"] == pytest.approx(roc_auc_score(positive, scores))
        assert row["f1"] == pytest.approx(f1_score(positive, scores >= ev.threshold))
    assert transfer_flags(_section(result)) == []
    text = "\n".join(_transfer_section(_section(result), {}))
    assert "## 2b. Transfer to HumanEval" in text and "24 tasks, 8 correct, 16 incorrect" in text
    assert "L2/3" in text and "logistic probe L2" in text and "Steering on HumanEval: not measured" in text


def test_threshold_is_not_rechosen_on_humaneval(tmp_path):
    """A shift that makes every HumanEval task fire: the ranking survives (AUROC), the MBPP threshold does not."""
    data, _ = _mbpp(tmp_path)
    _humaneval(data, shift=4.0 * U_CORRECT)
    evaluations, _, result = _transfer(data)
    row = result.latents[0]
    assert row["direction"] == "correct" and row["threshold"] == evaluations[0].threshold
    assert row["auroc"] > 0.95
    # Every task is above the MBPP threshold: the rule flags everything, so its F1 would be the flag-everything
    # baseline by construction. The row says so instead of printing it (a threshold re-chosen on HumanEval, F1
    # near 1 at this AUROC, would have hidden it).
    assert row["predicted_positive_rate_at_threshold"] == 1.0
    assert not row["informative_threshold"] and row["threshold_status"] == "one class on this set"
    assert math.isnan(row["f1"]) and math.isnan(row["accuracy"]) and row["tp"] == -1
    assert "no informative threshold on this set" in row["note"]
    rendered = "\n".join(_transfer_section(_section(result), {}))
    line = next(ln for ln in rendered.splitlines() if row["name"] in ln)
    assert "no informative threshold on this set" in line and "F1" not in line


def test_latent_that_does_not_transfer_is_flagged(tmp_path):
    data, _ = _mbpp(tmp_path)
    _humaneval(data, n=60, signal=False)
    _, _, result = _transfer(data)
    doc = _section(result)
    assert all(r["auroc_ci_lo"] <= 0.5 <= r["auroc_ci_hi"] for r in doc.latents)
    flags = transfer_flags(doc)
    assert len(flags) == 2 and all("does not transfer to HumanEval" in f for f in flags)


def test_latent_whose_sign_reverses_is_flagged_as_reversed(tmp_path):
    """An interval entirely below 0.5 is its own flag, not "does not transfer"."""
    data, _ = _mbpp(tmp_path)
    _humaneval(data, n=60, reverse=True)
    _, _, result = _transfer(data)
    doc = _section(result)
    assert all(r["auroc_ci_hi"] < 0.5 for r in doc.latents)
    flags = transfer_flags(doc)
    assert len(flags) == 2 and all("reverses sign on HumanEval" in f for f in flags)
    assert not any("does not transfer" in f for f in flags)


def test_no_humaneval_run_is_one_line_naming_the_command(tmp_path):
    data, _ = _mbpp(tmp_path)
    inputs, evaluations, probes = _mbpp_side(data)
    assert load_transfer_set(data, str(inputs.phase1_meta["model"])) is None
    result = transfer_statistics(None, inputs, evaluations, probes, 50, 0, data)
    assert result.latents == [] and result.input_paths() == {}
    section = _transfer_section(_section(result), {})
    assert section[2].startswith("Not measured: no HumanEval Phase 1 run") and HUMANEVAL_COMMAND in section[2]


def test_humaneval_run_of_another_model_is_refused(tmp_path):
    data, _ = _mbpp(tmp_path)
    _humaneval(data, model="some/other-model")
    with pytest.raises(PipelineError, match="HumanEval run is from model 'some/other-model'") as exc:
        load_transfer_set(data, DEFAULT_MODEL)
    assert "\n" not in str(exc.value)


def test_missing_humaneval_layer_names_the_file_and_command(tmp_path):
    data, _ = _mbpp(tmp_path)
    _humaneval(data)
    (data / "humaneval" / "phase1_0" / "activations" / "correct" / f"0_layer_{LAYER}.npz").unlink()
    inputs, evaluations, probes = _mbpp_side(data)
    tset = load_transfer_set(data, str(inputs.phase1_meta["model"]))
    with pytest.raises(PipelineError, match=f"task 0 layer {LAYER}.*{HUMANEVAL_COMMAND}"):
        transfer_statistics(tset, inputs, evaluations, probes, 50, 0, data)
