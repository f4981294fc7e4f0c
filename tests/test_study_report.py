"""``run.py study-report``: the results page's numbers equal those in the study's output files.

The data directory is built here through the artifact writers (Phase 1 and
1.2 runs, split tables), a real corpus build, real metadata (``build_metadata``
with a ``RunClock``), Phase 2 score arrays and a Phase 3 result document of the current schema
(``tests.artifact_builders.phase3_result``, written by ``write_phase3_result``). Each expected number is recomputed here from the files,
independently of the generator (scipy's exact interval, numpy's counts).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest

from common.config import PipelineConfig
from common.corpora.builder import build_corpus
from common.datadir import (
    LatentResult,
    Phase3Result,
    ProbeEntry,
    ProbeSection,
    RunClock,
    TopLatent,
    build_metadata,
    read_phase3_result,
    save_npz,
    write_json,
    write_parquet,
    write_phase3_result,
)
from tests.artifact_builders import direction_steering, phase3_result, write_phase1_run, write_temperature_run
from tests.helpers import REPO_ROOT

STAMP = "20260101_000000_000000"


def _exact(k: int, n: int) -> str:
    ci = binomtest(k, n).proportion_ci(method="exact")
    return f"{k}/{n} = {k / n:.3f} [{ci.low:.3f}, {ci.high:.3f}]"


def _phase3_result(png: Path) -> Phase3Result:
    row = {"split": "validation", "temperature": 0.0, "auroc": 0.6123, "auroc_ci_lo": 0.5011, "auroc_ci_hi": 0.7234}
    top = {"correct": TopLatent("correct", 1, 1, 3, 0.4, 0.01, 0.5, 0.1),
           "incorrect": TopLatent("incorrect", 1, 0, 9, 0.3, 0.2, 0.1, 0.4)}
    latent = LatentResult("correct", 1, 1, 3, 0.4, 0.01, 0.5, 0.1, threshold=None, hyperparams_f1=None, rows=[row])
    probe = ProbeEntry("logistic", 1, "correct", threshold=None, threshold_note=None,
                       rows=[{**row, "auroc": 0.7345, "auroc_ci_lo": 0.6, "auroc_ci_hi": 0.85}])
    probes = ProbeSection(rules={}, best_layer_rule="", note=None, small_note=None,
                          best_layer={"logistic": {"correct": 1}}, chosen_c={}, probes=[probe])
    reviewer = {
        "confounds": {"n_prompt_tokens": {"auroc": 0.5812, "low": 0.4, "high": 0.7}},
        "predictors": {"latent": {"name": "SAE latent", "auroc": {"auroc": 0.6123, "low": 0.5, "high": 0.72}}},
        "verdicts": ["The SAE latent carries **no** information shown beyond the confounds."],
    }
    steering = direction_steering(top["correct"], 0.5, {"correction_rate": 0.125, "correction_ci_lo": 0.02,
                                                        "correction_ci_hi": 0.3, "predicted_effect": 0.125,
                                                        "mean_control_effect": 0.05, "excess_effect": 0.075,
                                                        "n_controls": 2, "p_vs_controls": 0.21})
    return phase3_result(STAMP, latents=[latent], probes=probes, reviewer=reviewer, directions={"correct": steering},
                         phase2_top=top, beats_null={"correct": True, "incorrect": False},
                         outputs={"roc_png": str(png)})


@pytest.fixture
def study_data(tmp_path):
    """A small study's outputs: 20 MBPP tasks (6 pass), Phase 1.2 at two temperatures, HumanEval, SAEs, Phase 2 and 3."""
    data = tmp_path / "data"
    ids = list(range(1, 21))
    passed = {t: t % 3 == 0 for t in ids}
    rows = pd.DataFrame({"task_id": ids, "passed": [passed[t] for t in ids],
                         "generated_text": [f"def f():\n    return {t}" for t in ids],
                         "n_prompt_tokens": [100 + t + (50 if passed[t] else 0) for t in ids]})
    write_phase1_run(data, rows, stamp=STAMP)
    splits = {"sae": ids[:10], "hyperparams": ids[10:12], "validation": ids[12:]}
    for name, members in splits.items():
        write_parquet(pd.DataFrame({"task_id": members}), data / "phase0_1" / f"{name}_mbpp.parquet")
    write_temperature_run(data, {
        0.4: pd.DataFrame({"task_id": splits["validation"] * 2, "sample_index": [0] * 8 + [1] * 8,
                           "passed": [True] * 5 + [False] * 11}),
        0.8: pd.DataFrame({"task_id": splits["validation"], "sample_index": [0] * 8, "passed": [True] + [False] * 7}),
    })
    he = pd.DataFrame({"task_id": list(range(5)), "passed": [True, False, False, False, False]})
    write_phase1_run(data / "humaneval", he, stamp=STAMP)
    clock = RunClock()
    write_json(data / "phase0" / f"difficulty_{STAMP}_metadata.json", build_metadata("0", PipelineConfig(), clock))
    saes = tmp_path / "saes"
    write_json(saes / "sae_training_report.json", {
        "n_train_tokens": 900, "n_heldout_tokens": 100, "n_texts": 30, "collect_seconds": 2.5,
        "layers": {"0": {"d_sae": 32, "heldout_fvu": 0.4321, "heldout_l0": 12.34, "train_seconds": 1.0},
                   "1": {"d_sae": 32, "heldout_fvu": 0.2468, "heldout_l0": 8.76, "train_seconds": 1.5}}})
    scores = data / "phase2" / f"scores_sae_{STAMP}"
    rng = np.random.default_rng(0)
    for layer in (0, 1):
        f = rng.random((2, 32))
        f[:, : 3 + layer] = 0  # 3 and 4 latents that never fire
        save_npz(scores / f"layer_{layer}.npz", f_correct=f[0], f_incorrect=f[1])
    write_json(data / "phase2" / f"results_sae_{STAMP}.json", {
        "scores_dir": str(scores), "sae": {"local_path": str(saes)},
        "fvu": {"0": {"own": 0.5555}, "1": {"own": 0.3333}}})
    png = data / "phase3" / f"roc_{STAMP}.png"
    png.parent.mkdir(parents=True)
    png.write_bytes(b"\x89PNG fake plot bytes")
    write_phase3_result(data / "phase3" / f"validation_{STAMP}.json", _phase3_result(png))
    (data / "phase3" / f"summary_{STAMP}.md").write_text("# Phase 3 summary\n\nBest latent AUROC 0.612 (from Phase 3).\n")
    site = tmp_path / "site"
    (site / "pkg").mkdir(parents=True)
    (site / "pkg" / "mod.py").write_text("def f():\n    return 1\n")
    corpus = build_corpus("code", tmp_path / "corpora" / "code.jsonl", [site])
    record = tmp_path / "study.json"
    write_json(record, {"preset": "tiny", "settings": {
        "coefficients": {"value": [0.0, 3.0], "full": [0.0, 1.0], "reduced": True, "reason": "a reason given"}},
        "steps": [{"command": f"python3 run.py build-corpus --kind code --out {corpus.path}"},
                  {"command": f"python3 run.py train-saes --model m --output {saes} --layers 0,1"}]})
    return {"data": data, "record": record, "rows": rows, "he": he, "corpus": corpus, "scores": scores, "saes": saes}


def _report(data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO_ROOT / "run.py"), "study-report", "--data-dir", str(data),
                           "--out", str(out), *extra], capture_output=True, text=True, timeout=300)


def test_page_numbers_equal_the_files(study_data, tmp_path):
    out = tmp_path / "results" / "page.md"
    done = _report(study_data["data"], out, "--record", str(study_data["record"]))
    assert done.returncode == 0, done.stderr
    page = out.read_text()
    rows = study_data["rows"]
    assert f"Pass rate, all tasks: {_exact(int(rows['passed'].sum()), len(rows))}" in page
    for split, members in {"sae": range(1, 11), "hyperparams": range(11, 13), "validation": range(13, 21)}.items():
        inside = rows[rows["task_id"].isin(members)]["passed"]
        assert f"| {split} | {_exact(int(inside.sum()), len(inside))} |" in page
    assert f"| 0.4 | {_exact(5, 16)} | 8 |" in page and f"| 0.8 | {_exact(1, 8)} | 8 |" in page
    assert f"Pass rate: {_exact(1, 5)}." in page  # HumanEval
    lengths = rows.groupby("passed")["n_prompt_tokens"].mean()
    assert f"Mean prompt length in tokens: passing {lengths[True]:.1f}, failing {lengths[False]:.1f}." in page
    report = json.loads((study_data["saes"] / "sae_training_report.json").read_text())
    own = json.loads(next((study_data["data"] / "phase2").glob("results_sae_*.json")).read_text())["fvu"]
    for layer, entry in report["layers"].items():
        with np.load(study_data["scores"] / f"layer_{layer}.npz") as a:
            dead = int(((a["f_correct"] == 0) & (a["f_incorrect"] == 0)).sum())
        assert dead == 3 + int(layer)
        assert (f"| {layer} | 32 | {entry['heldout_fvu']:.3f} | {entry['heldout_l0']:.1f} | {dead} | "
                f"{own[layer]['own']:.3f} |") in page
    doc = json.loads(next((study_data["data"] / "phase3").glob("validation_*.json")).read_text())
    latent = doc["statistical"]["latents"][0]["rows"][0]
    probe = doc["statistical"]["probes"]["probes"][0]["rows"][0]
    assert (f"| this study | correct | 1 | 3 | yes | {latent['auroc']:.3f} [{latent['auroc_ci_lo']:.3f}, "
            f"{latent['auroc_ci_hi']:.3f}] | L1 {probe['auroc']:.3f} [{probe['auroc_ci_lo']:.3f}, {probe['auroc_ci_hi']:.3f}] | 0.5 |") in page
    assert "- confound n_prompt_tokens: 0.581 [0.400, 0.700]" in page
    assert "Best latent AUROC 0.612 (from Phase 3)." in page  # the Phase 3 summary, verbatim
    meta = json.loads((study_data["data"] / "phase0" / f"difficulty_{STAMP}_metadata.json").read_text())
    assert f"| phase 0 | {meta['wall_time_s']:.1f} | {meta['peak_rss_mb']:.1f} |" in page
    # A report without the command's own record: 2.5 s collecting + 1.0 + 1.5 s training.
    assert "| train-saes (collecting and training only) | 5.0 | not measured |" in page
    corpus = study_data["corpus"]
    assert f"| code | {corpus.n_documents} | {corpus.n_chars} | 1 | `{corpus.sha256}` |" in page
    assert "| coefficients | [0.0, 3.0] | [0.0, 1.0] | yes | a reason given |" in page
    assert ("- The best correct-preferring latent beats its permutation null on the sae split; validation AUROC "
            f"{latent['auroc']:.3f} [{latent['auroc_ci_lo']:.3f}, {latent['auroc_ci_hi']:.3f}], "
            "an interval that excludes chance") in page
    assert "- The validation split, where every number above is measured, holds 2 passing programs of 8" in page
    assert (f"- The logistic probe on the residual stream (layer 1, chosen on hyperparams; correct as the positive "
            f"class): validation AUROC {probe['auroc']:.3f} [{probe['auroc_ci_lo']:.3f}, {probe['auroc_ci_hi']:.3f}], "
            "an interval that excludes chance.") in page
    assert ("- Steering the correct-preferring latent (alpha 0.5, chosen on hyperparams) does **not** beat its 2 "
            "random-latent controls on validation: effect 0.125 against a mean control effect 0.050 (excess 0.075, "
            "one-sided p = 0.210).") in page
    assert "- HumanEval transfer: not measured (no run)." in page
    assert ("- Phase 2's FVU at the last prompt token (layers 0, 1) (reconstruction error over the variance between "
            f"tasks): {0.3333:.3f} to {0.5555:.3f}.") in page
    assert "AUPRC: not measured" in page and "| phase 3 | not measured |" in page
    generations = [json.loads(line) for line in (out.parent / "page" / "mbpp_generations.jsonl").read_text().splitlines()]
    assert [g["task_id"] for g in generations] == rows["task_id"].tolist()
    assert [g["passed"] for g in generations] == rows["passed"].tolist()
    assert (out.parent / "page" / "roc.png").read_bytes() == b"\x89PNG fake plot bytes"
    assert f"`page/roc.png` (roc; Phase 3's `roc_{STAMP}.png`)" in page


def test_an_sae_that_loses_the_between_task_variance_is_said_plainly(study_data, tmp_path):
    """Phase 2's FVU above 1 at every layer: the page says the latents are not expected to separate the classes."""
    results = next((study_data["data"] / "phase2").glob("results_sae_*.json"))
    doc = json.loads(results.read_text())
    doc["fvu"] = {"0": {"own": 23.5}, "1": {"own": 4.6}}
    results.write_text(json.dumps(doc))
    out = tmp_path / "page.md"
    assert _report(study_data["data"], out, "--record", str(study_data["record"])).returncode == 0
    page = out.read_text()
    assert ("- At the last prompt token (layers 0, 1), the SAEs' reconstruction error is 4.600 to 23.500 times the "
            "variance between tasks (Phase 2's FVU): the error is larger than everything that tells one task from "
            "another, so their latents are not expected to separate correct from incorrect") in page


def test_missing_pieces_are_named_not_measured(tmp_path):
    data = tmp_path / "empty"
    data.mkdir()
    out = tmp_path / "page.md"
    done = _report(data, out)
    assert done.returncode == 0, done.stderr
    page = out.read_text()
    for line in ("Pass rate: not measured (no HumanEval Phase 1 dataset).", "Pass rate: not measured (no Phase 1 dataset).",
                 "Pass rates by temperature: not measured (no Phase 1.2 run).", "SAE quality: not measured",
                 "Latents, probes, confounds, steering and HumanEval transfer: not measured", "Study record: not measured"):
        assert line in page


def test_missing_data_dir_is_one_line(tmp_path):
    done = _report(tmp_path / "nowhere", tmp_path / "page.md")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "is not a folder" in done.stderr


def test_the_transfer_finding_counts_intervals_on_each_side_of_chance(study_data, tmp_path):
    path = next((study_data["data"] / "phase3").glob("validation_*.json"))
    doc = read_phase3_result(path)
    rows = [{"name": "a", "auroc": 0.8, "auroc_ci_lo": 0.6, "auroc_ci_hi": 0.9},
            {"name": "b", "auroc": 0.2, "auroc_ci_lo": 0.1, "auroc_ci_hi": 0.4},
            {"name": "c", "auroc": 0.55, "auroc_ci_lo": 0.3, "auroc_ci_hi": 0.7}]
    transfer = dataclasses.replace(doc.transfer, measured=True, note=None, latents=rows[:2], probes=rows[2:],
                                   sizes={"n": 164, "n_correct": 7, "n_incorrect": 157})
    write_phase3_result(path, dataclasses.replace(doc, transfer=transfer))
    out = tmp_path / "page.md"
    assert _report(study_data["data"], out).returncode == 0
    assert ("- On HumanEval (7 passing of 164), 1 of the 3 scores chosen on MBPP (latents and probes, applied "
            "unchanged) have an AUROC interval above chance and 1 below it; with so few passing programs most "
            "intervals are wide.") in out.read_text()


def test_a_resumed_phase3_says_its_wall_time_is_the_last_process_alone_and_what_its_generations_cost(study_data, tmp_path):
    path = next((study_data["data"] / "phase3").glob("validation_*.json"))
    doc = read_phase3_result(path)
    steering = study_data["data"] / "phase3" / f"steering_{STAMP}.parquet"
    write_parquet(pd.DataFrame({"role": ["grid", "grid", "validation"], "n_resumed": [0, 50, 97]}), steering)
    write_phase3_result(path, dataclasses.replace(doc, outputs={**doc.outputs, "steering": str(steering)}))
    out = tmp_path / "page.md"
    assert _report(study_data["data"], out).returncode == 0
    text = out.read_text()
    assert ("Phase 3 read generations back from the checkpoints of earlier processes (2 of the 3 rows of its "
            "steering table:") in text
    assert text.index("| train-saes") < text.index("Phase 3 read")  # the note follows the table, never splits it
    assert "model time in all" not in text  # no Phase 3 metadata in the fixture: no cost to report
    cost = {"runs": 3, "sequences": 147, "sequences_read_back": 147, "model_seconds_this_process": 0.0,
            "model_seconds_read_back": 812.3, "measure": "gen_time_s"}
    write_json(study_data["data"] / "phase3" / f"validation_{STAMP}_metadata.json",
               build_metadata("3", PipelineConfig(), RunClock(), extra={"generation_cost": cost}))
    assert _report(study_data["data"], out).returncode == 0
    assert ("Its 3 generation runs (147 sequences, 147 read back) cost 812.3 s of model time: 0.0 s in the last "
            "process and 812.3 s in earlier ones") in out.read_text()
    write_parquet(pd.DataFrame({"role": ["grid"], "n_resumed": [0]}), steering)
    assert _report(study_data["data"], out).returncode == 0
    assert "read generations back" not in out.read_text()


def test_published_figures_are_placed_against_this_studys_intervals(study_data, tmp_path):
    """Latent 0.6123 [0.5011, 0.7234], probe 0.7345 [0.6, 0.85], prompt length 0.5812 [0.4, 0.7] (the fixture)."""
    out = tmp_path / "page.md"
    assert _report(study_data["data"], out).returncode == 0
    text = out.read_text()
    assert ("- The rank-1 correct-preferring latent here has validation AUROC 0.612; gemma-2-2b's published 0.64 to "
            "0.67 lies inside this study's interval.") in text
    assert "Qwen3-4B's published 0.931 lies above this study's interval." in text
    assert "the probe study's 0.754 lies above this study's interval." in text
    assert "rank-1 incorrect-preferring latent here" not in text  # the fixture validated no incorrect latent
    path = next((study_data["data"] / "phase3").glob("validation_*.json"))
    doc = read_phase3_result(path)
    probe = dataclasses.replace(doc.statistical.probes.probes[0], rows=[
        {"split": "validation", "temperature": 0.0, "auroc": 0.97, "auroc_ci_lo": 0.95, "auroc_ci_hi": 0.99}])
    probes = dataclasses.replace(doc.statistical.probes, probes=[probe])
    latent = dataclasses.replace(doc.statistical.latents[0], rows=[
        {"split": "validation", "temperature": 0.0, "auroc": 0.66, "auroc_ci_lo": 0.65, "auroc_ci_hi": 0.7}])
    statistical = dataclasses.replace(doc.statistical, probes=probes, latents=[latent])
    write_phase3_result(path, dataclasses.replace(doc, statistical=statistical))
    assert _report(study_data["data"], out).returncode == 0
    text = out.read_text()
    assert "Qwen3-4B's published 0.931 lies below this study's interval." in text
    assert "gemma-2-2b's published 0.64 to 0.67 overlaps this study's interval." in text
