"""Phase 1.2 on a tiny random Gemma-2: one row per sample, activations once per task, seeded."""

from pathlib import Path

import pandas as pd
import pytest

import phase0_1_splitting
import phase0_difficulty
import phase1_2_temperature
from common.config import PipelineConfig
from common.errors import PipelineError
from phase1_2_temperature.temperature_phase import temperature_table_name
from tests.artifact_builders import validation_ids_in_positions
from tests.helpers import DEMO_PROBLEMS


def _cfg(data_dir, model_dir, **over):
    base = dict(
        data_dir=str(data_dir), mbpp_path=str(DEMO_PROBLEMS), model=str(model_dir), device="cpu",
        start=0, end=11, max_new_tokens=8, batch_size=6, workers=2, temperatures=[0.7, 1.2], samples_per_task=3,
    )
    base.update(over)
    return PipelineConfig(**base)


def test_table_names():
    assert temperature_table_name(0.3) == "dataset_temp_0_3.parquet"
    assert temperature_table_name(1.2) == "dataset_temp_1_2.parquet"
    assert temperature_table_name(1.0) == "dataset_temp_1_0.parquet"


def test_needs_phase01(tmp_path, tiny_model_dir):
    with pytest.raises(PipelineError, match=r"python3 run.py phase 0.1"):
        phase1_2_temperature.run(_cfg(tmp_path, tiny_model_dir))


def test_samples_activations_and_reproducibility(tmp_path, tiny_model_dir):
    runs = []
    for name in ("a", "b"):
        cfg = _cfg(tmp_path / name, tiny_model_dir)
        phase0_difficulty.run(cfg)
        phase0_1_splitting.run(cfg)
        runs.append((cfg, phase1_2_temperature.run(cfg)))
    (cfg, out), (_, out_b) = runs
    expected_ids = validation_ids_in_positions(Path(cfg.data_dir), 0, 11)
    assert len(expected_ids) == 4  # positions 0..11 of the 100 bundled problems hold 4 validation tasks
    for t in (0.7, 1.2):
        df = pd.read_parquet(out / temperature_table_name(t))
        assert len(df) == 4 * 3 and set(df["task_id"]) == expected_ids
        assert (df.groupby("task_id")["sample_index"].apply(sorted) == pd.Series([[0, 1, 2]] * 4, index=sorted(expected_ids))).all()
        assert (df["temperature"] == t).all()
        other = pd.read_parquet(out_b / temperature_table_name(t))
        pd.testing.assert_series_equal(df["generated_text"], other["generated_text"])  # seeded
    # samples of one prompt differ (it is sampling) ...
    df = pd.read_parquet(out / temperature_table_name(1.2))
    assert df.groupby("task_id")["generated_text"].nunique().max() > 1
    # ... and activations exist once per task and layer, not per sample
    files = sorted(p.name for p in (Path(cfg.data_dir) / "phase1_2" / "activations").iterdir())
    assert files == sorted(f"{tid}_layer_{l}.npz" for tid in expected_ids for l in (0, 1))


def test_bad_temperatures(tmp_path, tiny_model_dir):
    with pytest.raises(PipelineError, match="must be greater than 0"):
        phase1_2_temperature.run(_cfg(tmp_path, tiny_model_dir, temperatures=[0.0]))
    with pytest.raises(PipelineError, match="empty"):
        phase1_2_temperature.run(_cfg(tmp_path, tiny_model_dir, temperatures=[]))


@pytest.mark.slow
def test_sigkill_then_rerun_gives_the_same_samples(tmp_path, tiny_model_dir):
    """Sampling is seeded per fixed batch, so a resumed run draws exactly what an uninterrupted one drew."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.helpers import REPO_ROOT

    def prepare(name):
        cfg = _cfg(tmp_path / name, tiny_model_dir)
        phase0_difficulty.run(cfg)
        phase0_1_splitting.run(cfg)
        return tmp_path / name

    cli = lambda data: [  # noqa: E731
        sys.executable, str(REPO_ROOT / "run.py"), "phase", "1.2", "--data-dir", str(data), "--model", str(tiny_model_dir),
        "--mbpp-path", str(DEMO_PROBLEMS), "--device", "cpu", "--start", "0", "--end", "15", "--max-new-tokens", "10",
        "--batch-size", "4", "--workers", "1", "--temperatures", "0.9", "--samples-per-task", "2",
        "--checkpoint-every", "2", "--autosave-every", "4",
    ]
    env = {**os.environ, "PVA_TORCH_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    reference = prepare("reference")
    assert subprocess.run(cli(reference), env=env, capture_output=True, timeout=300).returncode == 0

    killed = prepare("killed")
    proc = subprocess.Popen(cli(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if any((killed / "phase1_2").rglob("chunk_*.parquet")) or any((killed / "phase1_2").rglob("autosave_*.parquet")):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before a checkpoint could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    rerun = subprocess.run(cli(killed), env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0 and "resuming:" in rerun.stderr
    got = pd.read_parquet(killed / "phase1_2" / "dataset_temp_0_9.parquet")
    want = pd.read_parquet(reference / "phase1_2" / "dataset_temp_0_9.parquet")
    cols = ["task_id", "sample_index", "generated_text", "passed", "outcome"]
    pd.testing.assert_frame_equal(got[cols], want[cols])


def test_slices_merge_into_one_run_and_other_settings_are_archived(tmp_path, tiny_model_dir):
    """Slices and archive: a second slice adds to the run's tables; a run with other temperatures sets the earlier one aside."""
    import dataclasses
    import json

    from common.datadir import load_temperature_run

    cfg = _cfg(tmp_path, tiny_model_dir, start=0, end=8, temperatures=[0.7], samples_per_task=2, batch_size=4)
    phase0_difficulty.run(cfg)
    phase0_1_splitting.run(cfg)
    first_ids = validation_ids_in_positions(tmp_path, 0, 8)
    second_ids = validation_ids_in_positions(tmp_path, 9, 11)
    assert first_ids and second_ids and not first_ids & second_ids
    folder = phase1_2_temperature.run(cfg)
    first = pd.read_parquet(folder / "dataset_temp_0_7.parquet")

    phase1_2_temperature.run(dataclasses.replace(cfg, start=9, end=11))
    merged = pd.read_parquet(folder / "dataset_temp_0_7.parquet")
    assert set(merged["task_id"]) == first_ids | second_ids and len(merged) == 2 * len(first_ids | second_ids)
    kept = merged[merged["task_id"].isin(first_ids)].reset_index(drop=True)
    pd.testing.assert_frame_equal(kept, first)  # the first slice's rows are untouched
    meta = json.loads((folder / "temperature_metadata.json").read_text())
    assert meta["run"]["slices"] == [[0, 11]]
    run_id = meta["run"]["run_id"]

    phase1_2_temperature.run(dataclasses.replace(cfg, temperatures=[1.1]))
    kept_dir = folder / "archive" / run_id
    pd.testing.assert_frame_equal(pd.read_parquet(kept_dir / "dataset_temp_0_7.parquet"), merged)
    assert (kept_dir / "temperature_metadata.json").is_file()
    assert len(list((kept_dir / "activations").glob("*_layer_0.npz"))) == len(first_ids | second_ids)
    assert load_temperature_run(kept_dir) is not None  # the archived run is still a readable run
    now = load_temperature_run(folder)
    assert now is not None and sorted(now.tables) == [1.1] and not (folder / "dataset_temp_0_7.parquet").exists()
