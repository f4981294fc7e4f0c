"""Files that no phase wrote, dropped into every phase folder, change nothing a phase reads.

The strays are what users and tools leave there: a labelled copy of a table
(``run.py label`` used to write one beside its input), its metadata, a table
with a phase's exact name that no run lists, notes. Phase 2 must give the same
numbers with them as without, and a Phase 1 rerun must neither merge nor
archive them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("sae_lens")

import phase2_sae_analysis
from common.config import DEFAULT_MODEL
from common.datadir import PHASE1_DATASET, metadata_path_of
from phase1_0_generation.generation_phase import prepare_outputs
from tests.phase2_sae_analysis.test_analysis import (
    SAE_IDS,
    VAL_IDS,
    SaeSpec,
    alternating,
    cfg_for,
    default_plants,
    write_phase1,
    write_phase1_2,
    write_saes,
    write_split_tables,
)

LATER = "20990101_000000_000000"  # newer than every real output: a stray that sorted by name would win


def _drop_strays(data: Path) -> list[Path]:
    """A labelled copy (every label flipped) with its metadata in each phase folder, and more look-alikes."""
    dataset = PHASE1_DATASET.newest(data)
    flipped = pd.read_parquet(dataset).assign(passed=lambda t: ~t["passed"].astype(bool))
    temp_table = sorted((data / "phase1_2").glob("dataset_temp_*.parquet"))[0]
    strays: dict[str, object] = {
        f"phase0/difficulty_{LATER}_labelled.parquet": flipped[["task_id"]].assign(cyclomatic_complexity=99),
        "phase0_1/stray_mbpp.parquet": flipped[["task_id"]],
        f"phase1_0/dataset_{LATER}_labelled.parquet": flipped,
        f"phase1_0/dataset_{LATER}.parquet": flipped,  # an exact dataset name, but no run record lists it
        "phase1_2/dataset_temp_0_3_labelled.parquet": pd.read_parquet(temp_table).assign(passed=False),
        "phase1_2/my_samples.parquet": pd.read_parquet(temp_table).assign(passed=True),
        f"phase2/results_sae_{LATER}_labelled.json": {"split": "sae"},
    }
    written = []
    for name, content in strays.items():
        path = data / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, pd.DataFrame):
            content.to_parquet(path)
            meta = metadata_path_of(path)
            meta.write_text(json.dumps({"phase": "label", "n_rows": len(content)}))  # what label wrote: no model, no run
            written.append(meta)
        else:
            path.write_text(json.dumps(content))
        written.append(path)
    return written


def _numbers(path: Path) -> dict:
    res = json.loads(path.read_text())
    top = pd.read_parquet(res["top_latents_path"]).fillna(-1.0)  # general_freq is NaN without the filter; NaN != NaN
    return {
        "n": (res["n_tasks"], res["n_correct"], res["n_incorrect"]),
        "top": res["top_latents"], "null": res["permutation_null"]["null_max"],
        "tables": [Path(p).name for p in res["labels"]["source_tables"]],
        "top_parquet": top.to_dict("records"),
    }


def test_phase2_reads_the_same_with_strays_in_every_phase_folder(tmp_path):
    plants = default_plants()
    write_split_tables(tmp_path, SAE_IDS, VAL_IDS)
    write_phase1(tmp_path, alternating(SAE_IDS), plants)
    write_phase1_2(tmp_path, plants)
    saes = write_saes(tmp_path / "saes", SaeSpec(plants=plants))
    before = {split: _numbers(phase2_sae_analysis.run(cfg_for(tmp_path, saes, split=split))) for split in ("sae", "validation")}

    strays = _drop_strays(tmp_path)
    after = {split: _numbers(phase2_sae_analysis.run(cfg_for(tmp_path, saes, split=split))) for split in ("sae", "validation")}
    assert after == before
    assert all(p.exists() for p in strays)  # read by no one, touched by no one


def test_a_phase1_rerun_merges_with_its_run_and_leaves_strays_alone(tmp_path):
    write_split_tables(tmp_path, SAE_IDS)
    dataset = write_phase1(tmp_path, alternating(SAE_IDS), default_plants())
    strays = [p for p in _drop_strays_phase1(tmp_path, dataset)]
    earlier = prepare_outputs(str(tmp_path), {"model": DEFAULT_MODEL, "prompt_format": "plain"})
    assert earlier is not None and earlier[0] == dataset  # merged with the real run, nothing archived
    assert not (tmp_path / "phase1_0" / "archive").exists()
    assert all(p.exists() for p in strays)
    assert prepare_outputs(str(tmp_path), {"model": "another/model", "prompt_format": "plain"}) is None
    archived = sorted(p.name for p in (tmp_path / "phase1_0" / "archive").rglob("*.parquet") if p.parent.name != "activations")
    assert archived == [dataset.name]  # other settings: the run moved aside, the strays stayed where they were
    assert all(p.exists() for p in strays)


def _drop_strays_phase1(data: Path, dataset: Path) -> list[Path]:
    labelled = dataset.with_name(f"dataset_{LATER}_labelled.parquet")
    shutil.copy(dataset, labelled)
    meta = metadata_path_of(labelled)
    meta.write_text(json.dumps({"phase": "label"}))
    return [labelled, meta]
