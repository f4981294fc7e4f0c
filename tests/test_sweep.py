"""``run.py sweep``: refusals, the plan, and whole two-model studies on the local backend and on real SLURM.

Why the always-true asserts: a random tiny model writes junk; junk that
extracts to an empty program passes them and broken code fails, so both
classes occur and Phases 2 and 3 run for real (as in Phase 3's own tests).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from common.errors import PipelineError
from sweep.plan import plan_steps, resolve_models
from sweep.table import comparison_rows, render_table
from tests.helpers import DEMO_PROBLEMS, REPO_ROOT

N_PROBLEMS = 40
PHASE_OPTIONS = [
    "--split-fractions", "0.4,0.3,0.3", "--max-new-tokens", "48", "--batch-size", "8", "--workers", "1",
    "--temperatures", "0.8", "--samples-per-task", "1", "--permutations", "20", "--no-general-filter",
    "--coefficients", "0,3", "--n-random-controls", "1", "--bootstrap", "50", "--top-latents-validated", "1",
    "--device", "cpu",
]


@pytest.fixture(scope="module")
def study(demo_trained_model, tmp_path_factory):
    """Two model folders and one random SAE folder each, on the first bundled problems.

    Both folders hold the trained demo model (it solves the problems it saw and
    none of the others, so both labels occur); training a second one would cost
    CI minutes and test nothing more of the sweep's plumbing, which is what this
    checks (each model's own chain, data directory and table row).
    """
    import shutil

    from tests.phase3_validation.builders import make_sae

    root = tmp_path_factory.mktemp("sweep_study")
    problems = root / "problems.jsonl"
    problems.write_text("\n".join(DEMO_PROBLEMS.read_text().splitlines()[:N_PROBLEMS]) + "\n")
    models = {"a": root / "model_a", "b": root / "model_b"}
    for folder in models.values():
        shutil.copytree(demo_trained_model.model_dir, folder)
        for layer in (0, 1):
            make_sae(root / "saes" / folder.name, layer, 64, 32, seed=layer)
    return {"root": root, "problems": problems, "models": models, "sae_path": str(root / "saes" / "{model}")}


def _sweep(study, data, models, *extra):
    cmd = [sys.executable, str(REPO_ROOT / "run.py"), "sweep", "--models", ",".join(str(m) for m in models),
           "--sae-path", study["sae_path"], "--data-dir", str(data), "--mbpp-path", str(study["problems"]),
           "--poll", "1", *extra, *PHASE_OPTIONS]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


def _check_table(stdout: str, data: Path, names: list[str]) -> None:
    """Every model's rows are in the printed table and equal its own Phase 3 JSON's numbers."""
    for name in names:
        validation = [p for p in (data / "models" / name / "phase3").glob("validation_*.json") if "metadata" not in p.name]
        assert len(validation) == 1
        doc = json.loads(validation[0].read_text())
        for direction in ("correct", "incorrect"):
            top = doc["phase2_top"][direction]
            entry = next(e for e in doc["statistical"]["latents"] if e["direction"] == direction and e["latent"] == top["latent"]
                         and e["layer"] == top["layer"])
            row = next(r for r in entry["rows"] if r["split"] == "validation" and r["temperature"] == 0.0)
            auroc = f"{row['auroc']:.3f} [{row['auroc_ci_lo']:.3f}, {row['auroc_ci_hi']:.3f}]"
            line = f"| {name} | {direction} | {top['layer']} | {top['latent']} |"
            assert line in stdout and auroc in stdout.split(line)[1].splitlines()[0], stdout
            probes = doc["statistical"]["probes"]
            layer = (probes.get("best_layer") or {}).get("logistic", {}).get(direction)
            if layer is not None:  # the probe cell is the logistic probe's own validation AUROC at its best layer
                probe = next(p for p in probes["probes"] if p["probe"] == "logistic" and p["positive_class"] == direction
                             and p["layer"] == layer)
                prow = next(r for r in probe["rows"] if r["split"] == "validation" and r["temperature"] == 0.0)
                assert f"L{layer} {prow['auroc']:.3f}" in stdout.split(line)[1].splitlines()[0], stdout


@pytest.mark.slow
def test_local_two_model_sweep_and_rerun(study, tmp_path):
    data = tmp_path / "data"
    models = list(study["models"].values())
    out = _sweep(study, data, models)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    names = [m.name for m in models]
    for name in names:
        assert (data / "models" / name / "phase0_1").is_symlink()
        assert (data / "models" / name / "phase0_1").resolve() == (data / "phase0_1").resolve()
        assert list((data / "models" / name / "phase1_0").glob("dataset_*.parquet"))
    assert not (data / "phase1_0").exists()  # generation happens only in the models' own folders
    _check_table(out.stdout, data, names)
    meta = next((data / "sweep").glob("sweep_*/comparison_*_metadata.json"))
    meta = json.loads(meta.read_text())
    assert meta["failed_steps"] == [] and set(meta["inputs"]) == {f"{n}_phase3" for n in names}

    again = _sweep(study, data, models)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "12 steps, 12 done earlier" in again.stdout and ": running" not in again.stdout
    _check_table(again.stdout, data, names)  # the table of a rerun still reads this sweep's own Phase 3 results


@pytest.mark.slow
def test_slurm_two_model_sweep_as_dependent_jobs(study, tmp_path):
    from tests.slurm_cluster import slurm_or_skip

    pytest.importorskip("submitit")
    slurm_or_skip()
    data = tmp_path / "data"
    models = list(study["models"].values())
    out = _sweep(study, data, models, "--backend", "slurm", "--partition", "cpu")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    jobs = dict(re.findall(r"^  (\S+): SLURM job (\d+)", out.stdout, flags=re.M))
    assert len(jobs) == 12, out.stdout
    scripts = data / "sweep"
    for name in [m.name for m in models]:
        chain = ["phase0.1", *(f"{name}/{s}" for s in ("phase1", "phase1.2", "phase2-sae", "phase2-validation", "phase3"))]
        for before, after in zip(chain, chain[1:]):
            script = next(scripts.glob(f"sweep_*/slurm/{jobs[after]}_submission.sh")).read_text()
            assert f"--dependency=afterok:{jobs[before]}" in script
    assert "12 done, 0 running, 0 pending, 0 failed" in out.stdout
    _check_table(out.stdout, data, [m.name for m in models])


def test_plan_shares_phase0_and_chains_each_model(study, tmp_path):
    models = resolve_models([str(m) for m in study["models"].values()], tmp_path, study["sae_path"])
    steps = plan_steps(models, tmp_path, {"0": ["--seed", "3"], "2": ["--top-k", "5"]}, tmp_path / "logs")
    assert [s.name for s in steps[:2]] == ["phase0", "phase0.1"]
    assert len(steps) == 2 + 5 * len(models)
    assert steps[0].args[-2:] == ["--seed", "3"] and "--top-k" not in steps[1].args  # options go where they apply
    for model in models:
        chain = [s for s in steps if s.model == model.name]
        assert chain[0].after == "phase0.1" and all(b.after == a.name for a, b in zip(chain, chain[1:]))
        assert all(s.args[s.args.index("--data-dir") + 1] == str(tmp_path / "models" / model.name) for s in chain)
        p2 = [s for s in chain if s.args[1] == "2"]
        assert [s.args[s.args.index("--split") + 1] for s in p2] == ["sae", "validation"]
        assert all(s.args[s.args.index("--sae-path") + 1] == str(study["root"] / "saes" / model.name) for s in p2)


def test_table_without_phase3_output_shows_na(tmp_path):
    rows = comparison_rows([("m", tmp_path / "nothing.json"), ("u", None)])
    assert len(rows) == 4 and all(r["latent_auroc"] == "n/a" and r["best_layer"] == "n/a" for r in rows)
    assert "| m | correct | n/a |" in render_table(rows)


def test_table_of_a_result_of_another_schema_version_shows_na_and_logs_why(tmp_path, caplog):
    """A model whose Phase 3 result this code cannot read gets n/a cells, and the log says why, not a crash."""
    path = tmp_path / "validation_20260101_000000_000000.json"
    path.write_text(json.dumps({"schema_version": 99, "phase": "3"}))
    rows = comparison_rows([("m", path)])
    assert [r["latent_auroc"] for r in rows] == ["n/a", "n/a"] and rows[0]["source"] is None
    assert "schema version 99" in caplog.text


@pytest.mark.parametrize(
    ("models", "extra", "message"),
    [
        ("nosuch", [], "--models: unknown model 'nosuch': not a preset, not a model folder, not a hub id org/name"),
        ("{a},{a}", [], "appears twice"),
        ("{a}", ["--model", "x"], "run.py sweep sets --model itself"),
        ("{a}", ["--max-new-tokens", "many"], "argument --max-new-tokens: invalid int value: 'many'"),
        ("{a}", ["--frobnicate"], "unrecognized arguments: --frobnicate"),
        ("{empty}", [], "holds no config.json"),
    ],
)
def test_bad_sweep_input_is_one_line_and_runs_nothing(study, tmp_path, models, extra, message):
    (tmp_path / "empty").mkdir()
    data = tmp_path / "data"
    spec = models.format(a=study["models"]["a"], empty=tmp_path / "empty")
    cmd = [sys.executable, str(REPO_ROOT / "run.py"), "sweep", "--models", spec, "--data-dir", str(data), *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and message in out.stderr, out.stderr
    assert not data.exists()


def test_missing_sae_folder_for_a_model_is_refused(study, tmp_path):
    with pytest.raises(PipelineError, match="is not a folder"):
        resolve_models([str(study["models"]["a"])], tmp_path, str(tmp_path / "nosaes" / "{model}"))


def test_slurm_sweep_without_submitit_is_one_line_and_writes_nothing(study, tmp_path):
    """submitit shadowed by a package that raises ImportError: refused before any check or write."""
    import os

    shadow = tmp_path / "shadow" / "submitit"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named submitit')\n")
    data = tmp_path / "data"
    out = subprocess.run(
        [sys.executable, str(REPO_ROOT / "run.py"), "sweep", "--models", str(study["models"]["a"]), "--backend", "slurm",
         "--data-dir", str(data)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(shadow.parent)},
    )
    assert out.returncode == 2
    assert out.stderr.strip() == "error: the SLURM backend needs submitit: pip install submitit==1.5.4"
    assert not data.exists()


def test_preset_names_are_checked_against_the_registry(tmp_path):
    """Presets of ``run.py models`` pass; an unknown name is refused with the list of presets."""
    models = resolve_models(["gemma-2-2b", "google/gemma-2-9b"], tmp_path, None)
    assert [(m.spec, m.name) for m in models] == [("gemma-2-2b", "gemma-2-2b"), ("google/gemma-2-9b", "google__gemma-2-9b")]
    with pytest.raises(PipelineError, match="unknown model 'gemma-9-1b'.*presets: gemma-2-2b, gemma-2-2b-it"):
        resolve_models(["gemma-9-1b"], tmp_path, None)


def test_negative_coefficients_reach_phase3_as_one_word():
    """``--coefficients=-1,0,1`` given to the sweep must parse again in Phase 3's own command (not as an option)."""
    import argparse

    import run

    words = run._sweep_passthrough(["--coefficients=-1,0,1", "--max-new-tokens", "8"], argparse.Namespace())["3"]
    assert "--coefficients=-1,0,1" in words
    assert run.config_for(["phase", "3", *words]).coefficients == [-1.0, 0.0, 1.0]
