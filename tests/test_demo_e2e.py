"""`run.py demo` end to end at the small test size: every phase's real outputs, both classes present."""

import json
import subprocess
import sys

import pandas as pd
import pytest

from tests.helpers import REPO_ROOT
from tests.phase3_validation.steering_checks import check_steering_p_values


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    data = tmp_path_factory.mktemp("demo_data")
    out = subprocess.run(
        [sys.executable, str(REPO_ROOT / "run.py"), "demo", "--size", "test", "--data-dir", str(data)],
        # A hang guard, not a timing check: Phase 3 also steers the 100 HumanEval-format problems now (7 runs), and a
        # run on 2 shared cores measured 853 s in all (training 439 s, Phase 3 365 s), too close to the old 900 s.
        capture_output=True, text=True, timeout=1800, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return data, out.stdout


@pytest.mark.slow
def test_every_phase_wrote_its_outputs(demo_run):
    data, stdout = demo_run
    assert "summary:" in stdout
    assert list((data / "phase0").glob("difficulty_*.parquet"))
    sizes = {name: len(pd.read_parquet(data / "phase0_1" / f"{name}_mbpp.parquet")) for name in ("sae", "hyperparams", "validation")}
    assert sum(sizes.values()) == 100
    assert all(abs(sizes[k] - v) <= 4 for k, v in {"sae": 50, "hyperparams": 10, "validation": 40}.items())
    dataset = pd.read_parquet(next((data / "phase1_0").glob("dataset_*.parquet")))
    assert len(dataset) == 100
    share = dataset["passed"].mean()
    assert 0.2 <= share <= 0.8, f"both classes must occur: {share:.0%} correct"
    n_correct = len(list((data / "phase1_0" / "activations" / "correct").glob("*_layer_0.npz")))
    assert n_correct == int(dataset["passed"].sum())
    temps = list((data / "phase1_2").glob("dataset_temp_*.parquet"))
    assert temps and all(len(pd.read_parquet(t)) == sizes["validation"] * 2 for t in temps)


@pytest.mark.slow
def test_phase2_and_phase3_results_are_valid(demo_run):
    data, _ = demo_run
    results = json.loads(next(p for p in (data / "phase2").glob("results_sae_*.json") if not p.name.endswith("_metadata.json")).read_text())
    assert results["n_correct"] > 0 and results["n_incorrect"] > 0
    for direction in ("correct", "incorrect"):
        top = results["top_latents"][direction]
        assert top and all(0 < row["p_family"] <= 1 for row in top)
        assert all(-1 <= row["separation_score"] <= 1 for row in top)
    for fvu in results["fvu"].values():
        assert 0 <= fvu["own"] < 1
    validation = list((data / "phase2").glob("results_validation_*.json"))
    assert any("stability" in json.loads(p.read_text()) for p in validation if not p.name.endswith("_metadata.json"))
    metrics = pd.read_parquet(next((data / "phase3").glob("metrics_*.parquet")))
    assert metrics["auroc"].dropna().between(0, 1).all() and metrics["f1"].dropna().between(0, 1).all()
    steering = pd.read_parquet(next((data / "phase3").glob("steering_2*.parquet")))
    assert {"grid", "validation", "control_validation", "opposite", "alpha0"} <= set(steering["role"])
    assert {"sae_latent", "diff_means"} <= set(steering["vector"])  # the diff-of-means steering baseline ran
    # Every steering p-value in the results, the diff-of-means ones included, re-derives from the per-task outcomes.
    doc = json.loads(next(p for p in (data / "phase3").glob("validation_*.json")
                          if not p.name.endswith("_metadata.json")).read_text())
    outcomes = pd.read_parquet(next((data / "phase3").glob("steering_outcomes_*.parquet")))
    assert "diffmeans" in set(outcomes["run"]) and check_steering_p_values(doc, outcomes, steering) > 8
    # HumanEval (the demo's second problem set) has its own alpha = 0 rerun for the steering transfer.
    assert set(steering.loc[steering["role"] == "alpha0", "split"]) == {"hyperparams", "validation", "humaneval"}
    probes = pd.read_parquet(next((data / "phase3").glob("probe_metrics_*.parquet")))
    assert set(probes["probe"]) == {"logistic", "diff_means"} and probes["auroc"].dropna().between(0, 1).all()
    summary = (data / "phase3" / "summary.md").read_text()
    assert "AUROC" in summary and "null" in summary.lower()
    assert "logistic probe, best layer" in summary and "diff_means probe, best layer" in summary
    assert list((data / "phase3").glob("*.png"))
    # The reviewer baselines are computed on the demo (it has a sae split and Phase 1 records
    # n_prompt_tokens and mean_logprob) and every section shows in the summary.
    doc = json.loads(next(p for p in (data / "phase3").glob("validation_*.json") if not p.name.endswith("_metadata.json"))
                     .read_text())
    reviewer = doc["statistical"]["reviewer_baselines"]
    assert reviewer["note"] is None and reviewer["confidence_note"] is None, reviewer
    assert "n_prompt_tokens" in reviewer["confounds_used"] and {"latent", "probe", "mean_logprob"} <= set(reviewer["predictors"])
    assert all(0 <= p["auroc"]["auroc"] <= 1 for p in reviewer["predictors"].values())
    assert all(-1 - 1e-9 <= pair["cosine"] <= 1 + 1e-9 for g in reviewer["geometry"] for pair in g["pairs"])
    cov = reviewer["coverage"]
    assert cov["overall_pass_rate"] == pytest.approx(next(c["pass_rate"] for c in cov["curves"]["latent"] if c["coverage"] == 1.0))
    assert list((data / "phase3").glob("coverage_*.png"))
    for heading in ("Baselines a reviewer asks for", "confound: n_prompt_tokens", "beside the model's confidence",
                    "Direction geometry", "Coverage-accuracy", "At 50% coverage"):
        assert heading in summary, heading


def test_transfer_table_scores_the_humaneval_view_with_mbpp_choices(demo_run):
    """The demo's second problem set runs through Phase 1 --dataset humaneval and Phase 3's transfer."""
    data, _ = demo_run
    he = pd.read_parquet(next((data / "humaneval" / "phase1_0").glob("dataset_*.parquet")))
    assert len(he) == 100
    doc = json.loads(next(p for p in (data / "phase3").glob("validation_*.json") if not p.name.endswith("_metadata.json")).read_text())
    transfer = doc["transfer"]
    assert transfer["measured"] and transfer["sizes"]["n"] == 100
    assert transfer["sizes"]["n_correct"] == int(he["passed"].sum())
    # The demo model learnt its seen problems in HumanEval's format too: both classes, so AUROC is defined.
    assert 0 < transfer["sizes"]["n_correct"] < 100 and transfer["sizes"]["n_incorrect"] > 0
    assert not transfer["note"] or "AUROC undefined" not in transfer["note"]
    for row in transfer["latents"] + transfer["probes"]:
        assert 0 <= row["auroc"] <= 1 and row["auroc_ci_lo"] <= row["auroc"] <= row["auroc_ci_hi"], row
    thresholds = {(lat["direction"], lat["rank"]): lat["threshold"] for lat in doc["statistical"]["latents"]}
    assert [(r["direction"], r["rank"]) for r in transfer["latents"]] == list(thresholds)
    for row in transfer["latents"]:
        assert row["threshold"] == thresholds[(row["direction"], row["rank"])] or not row["informative_threshold"]
    assert {r["probe"] for r in transfer["probes"]} == {"logistic", "diff_means"}
    assert "## 2b. Transfer to HumanEval" in (data / "phase3" / "summary.md").read_text()
    # The steering half: every direction at its MBPP alpha on the 100 HumanEval tasks.
    assert transfer["steering"]["measured"] and transfer["steering"]["sizes"]["n"] == 100
    for direction, info in transfer["steering"]["directions"].items():
        assert info["alpha"] == doc["steering"]["directions"][direction]["chosen_alpha"]
    assert "### Steering transfer" in (data / "phase3" / "summary.md").read_text()
