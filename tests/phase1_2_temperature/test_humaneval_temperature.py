"""Phase 1.2 with --dataset humaneval on the tiny model: its own folder, HumanEval's prompt and labels, runs that merge."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import phase1_2_temperature
from common.benchmarks.humaneval import HUMANEVAL_PROMPT_VERSION, humaneval_completion, humaneval_tasks, program_pieces
from common.config import PipelineConfig
from common.datadir import activation_path, file_sha256
from common.errors import PipelineError
from common.sandbox.executor import Executor, ExecutorConfig
from phase1_2_temperature.temperature_phase import build_jobs, temperature_table_name
from tests.helpers import REAL_HUMANEVAL, REPO_ROOT, requires_real_humaneval

pytestmark = requires_real_humaneval

TEMPERATURES = [0.8, 1.3]
SAMPLES = 2


def _cfg(data_dir, model_dir, **over):
    base = dict(
        data_dir=str(data_dir), humaneval_path=str(REAL_HUMANEVAL), dataset="humaneval", model=str(model_dir),
        device="cpu", start=0, end=2, max_new_tokens=8, batch_size=4, workers=2, temperatures=TEMPERATURES,
        samples_per_task=SAMPLES,
    )
    base.update(over)
    return PipelineConfig(**base)


def _problems():
    return humaneval_tasks(REAL_HUMANEVAL).set_index("task_id")


def _rerun_by_hand(table: pd.DataFrame) -> tuple[list, list]:
    """Each row's completion (cut at the Codex stop sequences) run again as the harness's program.

    Returns (the sandbox's verdicts, their outcomes, an empty completion's failure named ``no_code``).
    """
    problems = _problems()
    items = []
    for row in table.itertuples():
        problem = {**problems.loc[row.task_id].to_dict(), "task_id": row.task_id}
        assert row.prompt == problem["prompt"]  # the release's prompt, verbatim: no MBPP template, no chat
        completion = humaneval_completion(problem, row.generated_text, "plain")
        assert row.extracted_code == problem["prompt"] + completion
        items.append(program_pieces(problem, completion))
    with Executor(ExecutorConfig(workers=2)) as executor:
        verdicts = executor.run_many(items, progress=False)
    empty = [i["code"] == problems.loc[i["task_id"], "prompt"] + "\n" + problems.loc[i["task_id"], "test"] for i in items]
    return verdicts, ["no_code" if e and not v.passed else v.outcome for e, v in zip(empty, verdicts)]


def test_humaneval_samples_land_in_their_own_folder_with_labels_that_rerun(tiny_model_dir, tmp_path):
    cfg = _cfg(tmp_path, tiny_model_dir)
    folder = phase1_2_temperature.run(cfg)
    assert folder == tmp_path / "humaneval" / "phase1_2"
    assert not (tmp_path / "phase1_2").exists() and not (tmp_path / "phase0_1").exists()  # MBPP's folders untouched

    for t in TEMPERATURES:
        table = pd.read_parquet(folder / temperature_table_name(t))
        assert len(table) == 3 * SAMPLES
        assert not table.duplicated(["task_id", "sample_index"]).any()
        assert sorted(set(zip(table["task_id"], table["sample_index"]))) == [(i, s) for i in range(3) for s in range(SAMPLES)]
        assert (table["temperature"] == t).all()
        verdicts, outcomes = _rerun_by_hand(table)
        assert [r.passed for r in verdicts] == list(table["passed"])
        assert outcomes == list(table["outcome"])

    # Activations once per task and layer (not per sample or temperature), each a d_model vector.
    files = sorted(p.name for p in (folder / "activations").iterdir())
    assert files == sorted(f"{tid}_layer_{layer}.npz" for tid in range(3) for layer in (0, 1))
    assert np.load(activation_path(folder / "activations", 0, 1))["activation"].shape == (64,)

    meta = json.loads((folder / "temperature_metadata.json").read_text())
    assert meta["dataset"] == "humaneval" and meta["prompt_template_version"] == HUMANEVAL_PROMPT_VERSION
    assert meta["inputs"]["humaneval"]["sha256"] == file_sha256(REAL_HUMANEVAL)
    assert "validation_split" not in meta["inputs"]
    settings = meta["run"]["settings"]
    assert settings["dataset"] == "humaneval" and settings["source"] == str(REAL_HUMANEVAL)
    assert settings["source_sha256"] == file_sha256(REAL_HUMANEVAL) and settings["prompt_format"] == "plain"
    assert meta["run"]["slices"] == [[0, 2]]
    assert {k: v["n_samples"] for k, v in meta["temperatures"].items()} == {"0.8": 6, "1.3": 6}


def test_rerun_same_settings_changes_nothing_and_slices_merge(tiny_model_dir, tmp_path):
    cfg = _cfg(tmp_path, tiny_model_dir, temperatures=[0.9])
    folder = phase1_2_temperature.run(cfg)
    first = pd.read_parquet(folder / "dataset_temp_0_9.parquet")
    run_id = json.loads((folder / "temperature_metadata.json").read_text())["run"]["run_id"]

    phase1_2_temperature.run(cfg)  # same settings, same slice: seeded, so the very same samples
    again = pd.read_parquet(folder / "dataset_temp_0_9.parquet")
    cols = ["task_id", "sample_index", "prompt", "generated_text", "extracted_code", "passed", "outcome"]
    pd.testing.assert_frame_equal(again[cols], first[cols])
    meta = json.loads((folder / "temperature_metadata.json").read_text())
    assert meta["run"]["run_id"] == run_id and not (folder / "archive").exists()

    phase1_2_temperature.run(dataclasses.replace(cfg, start=3, end=3))  # another slice joins the run
    merged = pd.read_parquet(folder / "dataset_temp_0_9.parquet")
    assert sorted(set(merged["task_id"])) == [0, 1, 2, 3] and len(merged) == 4 * SAMPLES
    pd.testing.assert_frame_equal(merged[merged["task_id"] < 3].reset_index(drop=True)[cols], first[cols])
    meta = json.loads((folder / "temperature_metadata.json").read_text())
    assert meta["run"]["slices"] == [[0, 3]] and meta["run"]["run_id"] == run_id

    phase1_2_temperature.run(dataclasses.replace(cfg, samples_per_task=1))  # other settings: earlier run set aside
    kept = folder / "archive" / run_id
    pd.testing.assert_frame_equal(pd.read_parquet(kept / "dataset_temp_0_9.parquet"), merged)
    assert len(list((kept / "activations").glob("*_layer_0.npz"))) == 4


def test_a_run_that_died_before_publishing_resumes_without_generating(tiny_model_dir, tmp_path, monkeypatch):
    """Every sample was generated and checkpointed, then publishing failed (a full disk, say): the rerun generates
    no sequence again and publishes exactly what an uninterrupted run publishes."""
    import common.modeling.generation_loop as loop
    from phase1_2_temperature import temperature_phase

    reference = phase1_2_temperature.run(_cfg(tmp_path / "reference", tiny_model_dir))
    cfg = _cfg(tmp_path / "crashed", tiny_model_dir)

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(temperature_phase, "publish", disk_full)
        with pytest.raises(OSError):
            phase1_2_temperature.run(cfg)
    folder = tmp_path / "crashed" / "humaneval" / "phase1_2"
    assert any((folder / "checkpoints").rglob("*.parquet")) and not (folder / "temperature_metadata.json").exists()

    generated = []
    real = loop.generate_batches

    def counting(*args, **kwargs):  # the real generator, counted
        for results in real(*args, **kwargs):
            generated.extend(results)
            yield results

    monkeypatch.setattr(loop, "generate_batches", counting)
    assert phase1_2_temperature.run(cfg) == folder
    assert generated == []
    for t in TEMPERATURES:
        pd.testing.assert_frame_equal(
            pd.read_parquet(folder / temperature_table_name(t)).drop(columns=["gen_time_s", "exec_time_s"]),
            pd.read_parquet(reference / temperature_table_name(t)).drop(columns=["gen_time_s", "exec_time_s"]),
        )
    assert not (folder / "checkpoints").exists() or not any((folder / "checkpoints").rglob("*.parquet"))
    phase1_2_temperature.run(dataclasses.replace(cfg, start=3, end=3))  # the counter does see new work
    assert len(generated) == len(TEMPERATURES) * SAMPLES


def test_canonical_solutions_pass_through_the_jobs_phase_1_2_builds(tiny_model):
    """The labelling sanity check: Phase 1.2's own jobs, labelled as generate_and_execute labels them (the job's
    judge: the harness's program), pass all 164 canonical completions and fail a wrong one,
    so a pass in the tables means the check ran and passed."""
    _, tokenizer = tiny_model
    problems = humaneval_tasks(REAL_HUMANEVAL)
    jobs = build_jobs(PipelineConfig(dataset="humaneval"), problems, tokenizer, 0.5)
    assert [j.key for j in jobs] == [f"{i}@T0.5" for i in range(164)]

    def label(executor, job, completion):
        return job.judge(executor, completion)[1]

    with Executor(ExecutorConfig(workers=2)) as executor:
        good = [f.result() for f in [label(executor, j, c) for j, c in zip(jobs, problems["canonical_solution"])]]
        bad = [f.result() for f in [label(executor, j, "    return None\n") for j in jobs[:5]]]
    assert sum(r.passed for r in good) == 164, [r.detail for r in good if not r.passed][:3]
    assert not any(r.passed for r in bad)


def test_an_unknown_format_or_an_mbpp_input_is_refused_before_anything_moves(tiny_model_dir, tmp_path):
    cfg = _cfg(tmp_path, tiny_model_dir, temperatures=[0.9], samples_per_task=1, end=0)
    folder = phase1_2_temperature.run(cfg)
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    with pytest.raises(PipelineError, match="plain or chat"):
        phase1_2_temperature.run(dataclasses.replace(cfg, prompt_format="markdown"))
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before
    assert not (folder / "archive").exists()
    with pytest.raises(PipelineError, match="--input"):
        phase1_2_temperature.run(dataclasses.replace(cfg, input=str(tmp_path / "split.parquet")))


def _cli(*args, data_dir):
    env = {k: v for k, v in os.environ.items() if k not in ("PVA_DATA_DIR", "PVA_MBPP_PATH", "PVA_HUMANEVAL_PATH")}
    env.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "run.py"), "phase", "1.2", *args, "--data-dir", str(data_dir)],
        capture_output=True, text=True, timeout=120, env=env, stdin=subprocess.DEVNULL,
    )


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def test_cli_refusals_are_one_line_and_write_nothing(tiny_model_dir, tmp_path):
    out = _cli("--dataset", "humaneva1", data_dir=tmp_path / "bad")
    assert out.returncode == 2
    assert "invalid choice: 'humaneva1'" in _one_line(out.stderr)
    assert not Path(tmp_path / "bad").exists()


def test_cli_logs_beside_the_humaneval_outputs(tiny_model_dir, tmp_path):
    out = _cli("--dataset", "humaneval", "--humaneval-path", str(REAL_HUMANEVAL), "--model", str(tiny_model_dir),
               "--device", "cpu", "--start", "0", "--end", "0", "--temperatures", "0.9", "--samples-per-task", "1",
               "--max-new-tokens", "4", "--workers", "1", data_dir=tmp_path)
    assert out.returncode == 0, out.stderr
    assert len(list((tmp_path / "humaneval" / "phase1_2" / "logs").glob("phase1.2_*.log"))) == 1
    assert (tmp_path / "humaneval" / "phase1_2" / "dataset_temp_0_9.parquet").is_file()
    assert not (tmp_path / "phase1_2").exists()  # neither MBPP's log folder nor its lock
