import json

import numpy as np
import pandas as pd
import pytest

import phase0_1_splitting
import phase0_difficulty
from common.config import PipelineConfig
from common.errors import PipelineError
from phase0_1_splitting.splitting import SPLIT_NAMES, allocate, split_tasks
from tests.helpers import DEMO_PROBLEMS, REAL_MBPP, requires_real_mbpp


def _difficulty(n, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"task_id": np.arange(1, n + 1), "cyclomatic_complexity": rng.integers(1, 9, n)})


def test_allocate_is_within_one_and_sums():
    for n in range(0, 60):
        sizes = allocate(n, (0.5, 0.1, 0.4))
        assert sum(sizes) == n
        assert all(abs(s - n * f) < 1 for s, f in zip(sizes, (0.5, 0.1, 0.4)))


def test_split_is_deterministic_disjoint_and_stratified():
    diff = _difficulty(300)
    a = split_tasks(diff, (0.5, 0.1, 0.4), 4, seed=42)
    b = split_tasks(diff, (0.5, 0.1, 0.4), 4, seed=42)
    c = split_tasks(diff, (0.5, 0.1, 0.4), 4, seed=7)
    pd.testing.assert_frame_equal(a, b)
    assert not a["split"].equals(c["split"])
    assert a["task_id"].is_unique and len(a) == 300
    for _, group in a.groupby("stratum"):
        counts = group["split"].value_counts()
        for name, frac in zip(SPLIT_NAMES, (0.5, 0.1, 0.4)):
            assert abs(counts.get(name, 0) - frac * len(group)) < 1


def test_bad_fractions():
    with pytest.raises(PipelineError, match="sum to 1"):
        split_tasks(_difficulty(10), (0.5, 0.5, 0.4), 4, 0)


def test_phase01_needs_phase0(tmp_path):
    with pytest.raises(PipelineError, match=r"run `python3 run.py phase 0`"):
        phase0_1_splitting.run(PipelineConfig(data_dir=str(tmp_path), mbpp_path=str(REAL_MBPP)))
    assert not any((tmp_path / "phase0_1").glob("*.parquet"))


@requires_real_mbpp
def test_phase01_on_real_mbpp(tmp_path):
    cfg = PipelineConfig(data_dir=str(tmp_path), mbpp_path=str(REAL_MBPP))
    phase0_difficulty.run(cfg)
    out = phase0_1_splitting.run(cfg)
    parts = {name: pd.read_parquet(out / f"{name}_mbpp.parquet") for name in SPLIT_NAMES}
    ids = [set(p["task_id"]) for p in parts.values()]
    assert sum(len(s) for s in ids) == 974 and len(set.union(*ids)) == 974
    assert {len(p) for p in parts.values()} <= {487, 97, 390, 488, 96, 389, 391, 98}
    for p in parts.values():
        assert {"text", "code", "test_list", "cyclomatic_complexity", "stratum"} <= set(p.columns)
    meta = json.loads((out / "split_metadata.json").read_text())
    assert sum(meta["sizes"].values()) == 974 and meta["seed"] == 42
    for stratum in meta["strata"]:
        for name, frac in zip(SPLIT_NAMES, (0.5, 0.1, 0.4)):
            assert abs(stratum[name] - frac * stratum["n"]) < 1


def test_rerun_with_another_seed_keeps_the_earlier_splits(tmp_path):
    """Resume and archive: the same settings rewrite the same splits; another seed moves the earlier ones to archive/."""
    import dataclasses

    cfg = PipelineConfig(data_dir=str(tmp_path), mbpp_path=str(DEMO_PROBLEMS))
    phase0_difficulty.run(cfg)
    out = phase0_1_splitting.run(cfg)
    before = pd.read_parquet(out / "validation_mbpp.parquet")
    run_id = json.loads((out / "split_metadata.json").read_text())["run"]["run_id"]
    phase0_1_splitting.run(cfg)
    assert not (out / "archive").exists()
    phase0_1_splitting.run(dataclasses.replace(cfg, seed=7))
    kept = out / "archive" / run_id
    pd.testing.assert_frame_equal(pd.read_parquet(kept / "validation_mbpp.parquet"), before)
    assert json.loads((kept / "split_metadata.json").read_text())["seed"] == 42
    assert json.loads((out / "split_metadata.json").read_text())["seed"] == 7
    assert set(pd.read_parquet(out / "validation_mbpp.parquet")["task_id"]) != set(before["task_id"])
