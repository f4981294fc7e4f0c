"""Phase 3's reviewer baselines on planted data whose answers are known by construction.

The residual stream carries correctness along u_correct - u_incorrect; the
SAE's latent 3 reads u_correct and latent 5 u_incorrect; the confounds are
noise; the model's confidence is a weaker, real signal. So the latent must
beat the confounds, its decoder must sit at cos 45 degrees to the
difference of means, and trusting its top half must give a 100% pass rate.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from common.config import PipelineConfig
from common.datadir import write_parquet
from phase3_validation import baselines, confounds
from phase3_validation.inputs import load_inputs
from phase3_validation.probes import evaluate_probes, fit_logistic_probe
from phase3_validation.statistical import validate_latents
from tests.phase3_validation.builders import (
    latent_item,
    make_sae,
    mbpp_row,
    write_phase2_results,
    write_splits,
    write_synthetic_phase1,
)

D_IN, D_SAE, LAYER = 16, 8, 2


def _build(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    u_correct, u_incorrect = np.eye(D_IN)[0], np.eye(D_IN)[1]
    sae_ids, hp_ids, val_ids = list(range(1, 61)), list(range(100, 120)), list(range(200, 240))
    ids = sae_ids + hp_ids + val_ids
    rows = [mbpp_row(t, f"Write a function number {t}.", [f"assert f() == {t}"] * int(rng.integers(1, 4))) for t in ids]
    for row in rows:
        row["cyclomatic_complexity"] = int(rng.integers(1, 6))
    passed = {t: bool(i % 2) for i, t in enumerate(ids)}
    acts = {}
    for t in ids:
        base = rng.normal(0, 0.1, size=D_IN).astype(np.float32)
        base += (2.0 * u_correct if passed[t] else 2.0 * u_incorrect).astype(np.float32)
        acts[t] = {LAYER: base}
    write_splits(data, rows, hp_ids, val_ids)
    write_parquet(pd.DataFrame([r for r in rows if r["task_id"] in sae_ids]), data / "phase0_1" / "sae_mbpp.parquet")
    dataset_path = write_synthetic_phase1(data, rows, passed, acts)
    dataset = pd.read_parquet(dataset_path)
    y = dataset["passed"].to_numpy(dtype=float)
    dataset["n_prompt_tokens"] = rng.integers(40, 200, size=len(dataset))  # noise: no relation to correctness
    dataset["mean_logprob"] = -1.0 + 0.3 * y + rng.normal(0, 0.3, size=len(dataset))  # a weaker, real signal
    dataset.to_parquet(dataset_path)
    sae_dir = tmp_path / "saes"
    make_sae(sae_dir, LAYER, D_IN, D_SAE, planted={3: u_correct, 5: u_incorrect})
    top = {"correct": [latent_item(1, LAYER, 3, 0.9)], "incorrect": [latent_item(1, LAYER, 5, 0.9)]}
    write_phase2_results(data, sae_dir, top, D_SAE, [LAYER], beats_null={"correct": True, "incorrect": True})
    return data, dataset_path


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The planted data and its section, computed once (probe fitting is the slow part)."""
    data, dataset_path = _build(tmp_path_factory.mktemp("reviewer"))
    return data, dataset_path, _section(data)


@pytest.fixture
def reviewer_data(tmp_path):
    """Fresh planted data, for tests that damage it (Phase 2's results name the dataset by absolute path)."""
    return _build(tmp_path)


def _section(data):
    inputs = load_inputs(PipelineConfig(data_dir=str(data), bootstrap=100))
    evaluations = validate_latents(inputs, top_n=1, n_bootstrap=100, seed=0)
    probes = evaluate_probes(inputs, 100, 0)
    return confounds.evaluate(inputs, probes, evaluations, 100, 0)


def test_planted_latent_beats_noise_confounds_and_confidence(built):
    section = built[2]
    assert section["note"] is None and section["confidence_note"] is None
    assert section["confounds_used"] == ["n_prompt_tokens", "cyclomatic_complexity", "n_asserts", "asserts_chars"]
    for auc in section["confounds"].values():  # noise: the interval holds chance
        assert auc["low"] <= 0.5 + 0.05 and auc["high"] >= 0.5 - 0.05
    preds = section["predictors"]
    assert set(preds) == {"latent", "probe", "probe_length_residualised", "mean_logprob"}
    # Length is noise here, so removing it leaves the probe as good as it was.
    assert preds["probe_length_residualised"]["auroc"]["auroc"] > 0.99
    for p in preds.values():  # AUPRC beside the prevalence for every predictor
        assert 0 <= p["auroc"]["auprc"] <= 1 + 1e-12 and p["auroc"]["auprc_baseline_prevalence"] == pytest.approx(0.5)
    assert preds["latent"]["auroc"]["auroc"] > 0.99 and preds["latent"]["beyond_confounds"]["adds_information"]
    assert preds["probe"]["auroc"]["auroc"] > 0.99 and preds["probe"]["beyond_confounds"]["adds_information"]
    assert 0.6 < preds["mean_logprob"]["auroc"]["auroc"] < preds["latent"]["auroc"]["auroc"]
    assert all("carries information beyond" in v for v in section["verdicts"][:2])
    # The planted latent is far better than the (weaker) confidence signal, and says so.
    assert preds["latent"]["beyond_confidence"]["adds_information"] and section["flags"] == []


def test_geometry_of_planted_directions(built):
    section = built[2]
    geometry = {g["latent"]: {(p["a"], p["b"]): p["cosine"] for p in g["pairs"]} for g in section["geometry"]}
    # diff of means ~ (u_c - u_i)/sqrt(2): cos +0.707 with u_c (latent 3), -0.707 with u_i (latent 5).
    assert geometry[3][("SAE decoder L2/3", "diff of means L2")] == pytest.approx(2 ** -0.5, abs=0.05)
    assert geometry[5][("SAE decoder L2/5", "diff of means L2")] == pytest.approx(-(2 ** -0.5), abs=0.05)
    # The probe's weights in residual coordinates (coef / feature scale) also weight the low-variance noise
    # dimensions, so it only leans the same way as the difference of means; the sign must still agree.
    assert geometry[3][("logistic probe L2", "diff of means L2")] > 0.3
    assert geometry[3][("SAE decoder L2/3", "logistic probe L2")] > 0.2
    assert geometry[5][("SAE decoder L2/5", "logistic probe L2")] < -0.2


def test_coverage_of_a_perfect_latent_and_the_base_rate(built):
    section = built[2]
    cov = section["coverage"]
    assert cov["overall_pass_rate"] == pytest.approx(0.5) and cov["n_validation"] == 40
    assert set(cov["curves"]) == {"latent", "probe", "probe_length_residualised", "mean_logprob", "n_prompt_tokens"}
    for rows in cov["curves"].values():
        assert all(r["ci_lo"] <= r["pass_rate"] <= r["ci_hi"] for r in rows)
    assert cov["pass_rate_at_50"]["latent"] == 1.0  # 50% coverage = the base rate: a perfect predictor trusts only passes
    assert cov["curves"]["latent"][-1]["pass_rate"] == pytest.approx(0.5)  # 100% coverage = everything


def test_dataset_without_logprobs_drops_only_that_predictor(reviewer_data):
    data, dataset_path = reviewer_data
    pd.read_parquet(dataset_path).drop(columns=["mean_logprob", "n_prompt_tokens"]).to_parquet(dataset_path)
    section = _section(data)
    assert "confidence baseline unavailable" in section["confidence_note"] and "mean_logprob" in section["confidence_note"]
    assert "n_prompt_tokens" in section["confounds_missing"]
    assert set(section["predictors"]) == {"latent", "probe"} and "n_prompt_tokens" not in section["coverage"]["curves"]
    assert "length-residualised probe not fitted" in section["residualised_probe_note"]
    text = "\n".join(confounds.summary_lines(section))
    assert "Confidence baseline unavailable" in text and "Confound n_prompt_tokens not used" in text


def test_summary_shows_every_section(built):
    section = built[2]
    text = "\n".join(confounds.summary_lines(section))
    for heading in ("Confounds and confidence", "Direction geometry", "Coverage-accuracy", "At 50% coverage",
                    "confound: n_prompt_tokens", "mean log-probability", "carries information beyond",
                    "beside the model's confidence"):
        assert heading in text, heading


def test_no_sae_split_is_one_line(reviewer_data):
    data, _ = reviewer_data
    (data / "phase0_1" / "sae_mbpp.parquet").unlink()
    section = _section(data)
    assert section["note"].startswith("reviewer baselines skipped") and "predictors" not in section
    assert confounds.summary_lines(section)[-2].startswith("Reviewer baselines skipped")


def test_a_noisy_copy_of_prompt_length_is_reported_and_flagged_as_adding_nothing():
    rng = np.random.default_rng(3)

    def tasks(n):
        length = rng.normal(200, 50, n)
        return length, (rng.random(n) < 1 / (1 + np.exp((length - 200) / 25))).astype(int)

    (len_tr, y_tr), (len_ev, y_ev) = tasks(400), tasks(400)
    copy_tr, copy_ev = len_tr + rng.normal(0, 5, 400), len_ev + rng.normal(0, 5, 400)
    gain = baselines.beyond_confounds(len_tr[:, None], copy_tr, y_tr, len_ev[:, None], copy_ev, y_ev, 200, 0)
    predictors = {"latent": {"name": "SAE latent L1/7", "beyond_confounds": gain.to_dict()}}
    verdict = confounds._verdicts(predictors, ["n_prompt_tokens"])[0]
    assert "carries **no** information shown beyond the confounds (n_prompt_tokens)" in verdict
    assert confounds._flags(predictors) == [
        f"The SAE latent L1/7 adds no information shown beyond the trivial confounds on validation (AUROC confounds "
        f"{gain.auroc_confounds:.3f}, predictor alone {gain.auroc_predictor:.3f}, combined {gain.auroc_with_predictor:.3f}; "
        f"combined - max(confounds, 0.5) {gain.delta:+.3f} [{gain.delta_low:+.3f}, {gain.delta_high:+.3f}]; combined "
        f"- predictor alone {gain.vs_predictor.delta:+.3f} [{gain.vs_predictor.low:+.3f}, {gain.vs_predictor.high:+.3f}])"]


def test_length_residualised_probe_loses_a_signal_that_is_only_prompt_length():
    """Activations that carry prompt length (and noise) predict correctness only through it: removing the linear
    effect of length, fitted on the training split, leaves the refitted probe near chance while the plain one is not."""
    rng = np.random.default_rng(11)

    def split(n):
        length = rng.normal(200, 50, n)
        y = rng.random(n) < 1 / (1 + np.exp((length - 200) / 20))
        x = np.outer(length, rng.normal(size=12) * 0 + np.linspace(1, 2, 12)) / 100 + rng.normal(0, 0.3, (n, 12))
        return length, y, x

    (len_tr, y_tr, x_tr), (len_ev, y_ev, x_ev) = split(300), split(300)
    plain = fit_logistic_probe(x_tr, y_tr, 0).decision_function(x_ev)
    r_tr, r_ev = confounds.residualise_on_length(x_tr, len_tr, x_ev, len_ev)
    np.testing.assert_allclose(r_tr.mean(axis=0), 0, atol=1e-9)  # least squares: residuals centred on training rows
    assert abs(np.corrcoef(r_tr[:, 0], len_tr)[0, 1]) < 1e-9
    residualised = fit_logistic_probe(r_tr, y_tr, 0).decision_function(r_ev)
    assert roc_auc_score(y_ev, plain) > 0.75
    assert abs(roc_auc_score(y_ev, residualised) - 0.5) < 0.1
