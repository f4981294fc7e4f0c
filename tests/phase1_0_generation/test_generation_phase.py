"""Phase 1.0 on a tiny random Gemma-2: outputs as docs/design.md section 2 says, resume after SIGKILL."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import phase0_difficulty
import phase1_0_generation
from common.config import PipelineConfig
from common.datadir.activations import CLASSES, activation_path, save_task_activations
from common.errors import PipelineError
from tests.helpers import DEMO_PROBLEMS, REPO_ROOT

N_TASKS = 8


def _cfg(data_dir, model_dir, **over):
    base = dict(
        data_dir=str(data_dir), mbpp_path=str(DEMO_PROBLEMS), model=str(model_dir), device="cpu",
        start=0, end=N_TASKS - 1, max_new_tokens=12, batch_size=3, workers=2,
    )
    base.update(over)
    return PipelineConfig(**base)


@pytest.fixture(scope="module")
def phase1_run(tiny_model_dir, tmp_path_factory):
    data = tmp_path_factory.mktemp("p1")
    cfg = _cfg(data, tiny_model_dir)
    phase0_difficulty.run(cfg)
    return cfg, phase1_0_generation.run(cfg)


def test_dataset_and_activation_layout(phase1_run):
    cfg, path = phase1_run
    df = pd.read_parquet(path)
    assert len(df) == N_TASKS and df["task_id"].is_unique
    for col in ("task_id", "prompt", "generated_text", "extracted_code", "passed", "outcome",
                "n_generated_tokens", "gen_time_s", "exec_time_s", "cyclomatic_complexity"):
        assert col in df.columns
    assert df["n_generated_tokens"].between(1, 12).all()
    acts = Path(cfg.data_dir) / "phase1_0" / "activations"
    for row in df.itertuples():
        label = "correct" if row.passed else "incorrect"
        other = "incorrect" if row.passed else "correct"
        for layer in (0, 1):
            vec = np.load(activation_path(acts, row.task_id, layer, label))["activation"]
            assert vec.dtype == np.float32 and vec.shape == (64,)
            assert not activation_path(acts, row.task_id, layer, other).exists()
    meta = list(path.parent.glob("dataset_*_metadata.json"))
    assert meta and '"prompt_template_version"' in meta[0].read_text()
    assert not (Path(cfg.data_dir) / "phase1_0" / "checkpoints").exists() or not any(
        (Path(cfg.data_dir) / "phase1_0" / "checkpoints").iterdir()
    )


def test_label_change_moves_files(tmp_path):
    save_task_activations(tmp_path, 5, {0: np.ones(4, np.float32)}, "correct")
    save_task_activations(tmp_path, 5, {0: np.zeros(4, np.float32)}, "incorrect")
    assert not activation_path(tmp_path, 5, 0, "correct").exists()
    assert activation_path(tmp_path, 5, 0, "incorrect").exists()
    assert set(CLASSES) == {"correct", "incorrect"}


@pytest.mark.parametrize("start,end,message", [(5, 2, "is after"), (0, 100, "out of range"), (-1, 3, ">= 0")])
def test_bad_ranges_are_one_line_and_write_nothing(phase1_run, tiny_model_dir, tmp_path, start, end, message):
    cfg, _ = phase1_run
    bad = _cfg(cfg.data_dir, tiny_model_dir, start=start, end=end)
    before = sorted(Path(cfg.data_dir, "phase1_0").glob("dataset_*"))
    with pytest.raises(PipelineError, match=message):
        phase1_0_generation.run(bad)
    assert sorted(Path(cfg.data_dir, "phase1_0").glob("dataset_*")) == before


def test_bad_layers_and_missing_model(phase1_run, tiny_model_dir, tmp_path):
    cfg, _ = phase1_run
    with pytest.raises(PipelineError, match="out of range"):
        phase1_0_generation.run(_cfg(cfg.data_dir, tiny_model_dir, layers=[0, 7]))
    with pytest.raises(PipelineError):
        phase1_0_generation.run(_cfg(cfg.data_dir, tmp_path / "no_such_model"))


def _cli(data_dir, model_dir, extra=()):
    return [
        sys.executable, str(REPO_ROOT / "run.py"), "phase", "1", "--data-dir", str(data_dir),
        "--mbpp-path", str(DEMO_PROBLEMS), "--model", str(model_dir), "--device", "cpu",
        "--start", "0", "--end", str(N_TASKS - 1), "--max-new-tokens", "12", "--batch-size", "2",
        "--workers", "1", "--checkpoint-every", "2", "--autosave-every", "4", *extra,
    ]


@pytest.mark.slow
def test_sigkill_then_rerun_equals_uninterrupted(phase1_run, tiny_model_dir, tmp_path):
    reference_cfg, reference_path = phase1_run
    data = tmp_path / "killed"
    phase0_difficulty.run(_cfg(data, tiny_model_dir))
    env = {**os.environ, "PVA_TORCH_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(_cli(data, tiny_model_dir), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ck_root = data / "phase1_0" / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if ck_root.exists() and any(p.name.startswith(("chunk_", "autosave_")) for p in ck_root.rglob("*.parquet")):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before a checkpoint could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not list((data / "phase1_0").glob("dataset_*.parquet"))

    rerun = subprocess.run(_cli(data, tiny_model_dir), env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "resuming:" in rerun.stderr  # finished tasks were not redone
    resumed = int(rerun.stderr.split("resuming:")[1].split()[0])
    # Usually mid-run; on a fast machine the tiny model can checkpoint every task before the kill lands, which is
    # a crash before the outputs were written: the rerun must then generate nothing and still write them.
    assert 2 <= resumed <= N_TASKS

    got = pd.read_parquet(next((data / "phase1_0").glob("dataset_*.parquet")))
    want = pd.read_parquet(reference_path)
    cols = ["task_id", "generated_text", "extracted_code", "passed", "outcome", "n_generated_tokens"]
    pd.testing.assert_frame_equal(got[cols], want[cols])
    ref_acts = Path(reference_cfg.data_dir) / "phase1_0" / "activations"
    for row in want.itertuples():
        label = "correct" if row.passed else "incorrect"
        for layer in (0, 1):
            a = np.load(activation_path(data / "phase1_0" / "activations", row.task_id, layer, label))["activation"]
            b = np.load(activation_path(ref_acts, row.task_id, layer, label))["activation"]
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_slices_merge_and_other_settings_are_archived(tiny_model_dir, tmp_path):
    """Slices and archive: a second slice gives a dataset with both; other settings move the earlier run aside whole."""
    import dataclasses
    import json

    from common.datadir import PHASE1_DATASET, metadata_path_of

    cfg = _cfg(tmp_path, tiny_model_dir, start=0, end=2, max_new_tokens=4)
    phase0_difficulty.run(cfg)
    first = phase1_0_generation.run(cfg)
    second = phase1_0_generation.run(dataclasses.replace(cfg, start=3, end=4))
    assert first.is_file() and second != first  # the earlier dataset is kept under its own name
    both = pd.read_parquet(second)
    ids = sorted(pd.read_parquet(first)["task_id"])
    assert len(both) == 5 and sorted(both["task_id"])[:3] == ids
    pd.testing.assert_frame_equal(both[both["task_id"].isin(ids)].reset_index(drop=True), pd.read_parquet(first))
    record = json.loads(metadata_path_of(second).read_text())["run"]
    assert record["slices"] == [[0, 4]] and PHASE1_DATASET.newest(tmp_path) == second

    third = phase1_0_generation.run(dataclasses.replace(cfg, max_new_tokens=5))
    kept = tmp_path / "phase1_0" / "archive" / record["run_id"]
    assert sorted(p.name for p in kept.glob("dataset_*.parquet")) == sorted([first.name, second.name])
    assert len(list((kept / "activations").rglob("*_layer_0.npz"))) == 5
    assert len(pd.read_parquet(third)) == 3
    assert sorted(p.name for p in (tmp_path / "phase1_0").glob("dataset_*.parquet")) == [third.name]
