"""The artifact declarations: names, schema checks, run records, one run per Phase 1.2 folder, archives."""

from __future__ import annotations

import pandas as pd
import pytest

from common.datadir import write_parquet
from common.datadir.artifacts import (
    ALL,
    PHASE1_DATASET,
    PHASE2_RESULTS,
    TEMPERATURE_TABLE,
    RunRecord,
    archive,
    load_temperature_run,
    merge_slices,
    temperature_label,
)
from common.errors import PipelineError
from tests.artifact_builders import full_table, write_temperature_run


def _samples(ids: list[int], k: int = 2) -> pd.DataFrame:
    return pd.DataFrame([{"task_id": t, "sample_index": s, "passed": s == 0} for t in ids for s in range(k)])


def test_the_seed_layout_is_kept(tmp_path):
    assert PHASE1_DATASET.path(tmp_path, ts="20260101_000000_000000").relative_to(tmp_path).as_posix() == (
        "phase1_0/dataset_20260101_000000_000000.parquet"
    )
    assert TEMPERATURE_TABLE.path(tmp_path, temp=temperature_label(0.3)).name == "dataset_temp_0_3.parquet"
    assert temperature_label(1.0) == "1_0" and temperature_label(1.2) == "1_2"
    assert PHASE2_RESULTS.glob(split="sae") == "results_sae_*.json"
    keys = [a.key for a in ALL]
    assert len(keys) == len(set(keys))


def test_missing_column_is_one_line_naming_the_file(tmp_path):
    path = tmp_path / "dataset_20260101_000000_000000.parquet"
    write_parquet(pd.DataFrame({"task_id": [1], "prompt": ["p"]}), path)
    with pytest.raises(PipelineError) as err:
        PHASE1_DATASET.read_table(path, needed=("task_id", "passed"))
    message = str(err.value)
    assert str(path) in message and "missing passed" in message and "\n" not in message
    # a writer must give every declared column
    with pytest.raises(PipelineError, match="missing"):
        PHASE1_DATASET.write(pd.DataFrame({"task_id": [1]}), tmp_path / "x.parquet")
    assert not (tmp_path / "x.parquet").exists()


def test_run_record_round_trip_and_hash_check(tmp_path):
    write_parquet(pd.DataFrame({"a": [1]}), tmp_path / "t.parquet")
    record = RunRecord(run_id="r1", settings={"model": "m"}, slices=[[0, 3]])
    record.add_files(tmp_path, ["t.parquet"])
    again = RunRecord.from_dict(record.to_dict(), tmp_path / "meta.json")
    assert again == record
    again.verify(tmp_path, tmp_path / "meta.json")
    write_parquet(pd.DataFrame({"a": [2]}), tmp_path / "t.parquet")  # another run rewrote it
    with pytest.raises(PipelineError, match="rewritten after run r1"):
        again.verify(tmp_path, tmp_path / "meta.json")
    with pytest.raises(PipelineError, match="malformed run record"):
        RunRecord.from_dict({"run_id": "x"}, tmp_path / "meta.json")


def test_merge_slices():
    assert merge_slices([[8, 9], [0, 7]]) == [[0, 9]]
    assert merge_slices([[0, 3], [6, 7], [2, 4]]) == [[0, 4], [6, 7]]


def test_temperature_run_reads_only_its_tables(tmp_path):
    folder = write_temperature_run(tmp_path, {0.3: _samples([1, 2]), 0.6: _samples([1, 2])}, model="m")
    run = load_temperature_run(folder)
    assert run is not None and run.model == "m" and sorted(run.tables) == [0.3, 0.6]
    samples = run.samples(("task_id", "temperature", "passed"))
    assert len(samples) == 8 and sorted(samples["temperature"].unique()) == [0.3, 0.6]

    # a table of another run (another temperature) in the same folder: refused, naming it
    stray = folder / "dataset_temp_0_9.parquet"
    TEMPERATURE_TABLE.write(full_table(TEMPERATURE_TABLE, _samples([1]).assign(temperature=0.9)), stray)
    with pytest.raises(PipelineError, match=r"dataset_temp_0_9\.parquet is not part of the run.*two runs"):
        load_temperature_run(folder)
    stray.unlink()

    # tables with no metadata: which run they belong to is unknown
    (folder / "temperature_metadata.json").unlink()
    with pytest.raises(PipelineError, match="no temperature_metadata.json"):
        load_temperature_run(folder)
    assert load_temperature_run(tmp_path / "nothing") is None


def test_archive_moves_whole_and_never_overwrites(tmp_path):
    (tmp_path / "a.txt").write_text("one")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("two")
    dest = archive(tmp_path, ["a.txt", "sub", "absent"], "run1")
    assert dest == tmp_path / "archive" / "run1"
    assert (dest / "a.txt").read_text() == "one" and (dest / "sub" / "b.txt").read_text() == "two"
    assert not (tmp_path / "a.txt").exists()
    (tmp_path / "a.txt").write_text("three")
    second = archive(tmp_path, ["a.txt"], "run1")  # same stamp: a new folder, the first kept
    assert second != dest and (dest / "a.txt").read_text() == "one" and (second / "a.txt").read_text() == "three"
    assert archive(tmp_path, ["absent"]) is None
