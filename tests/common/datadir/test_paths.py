import pytest

from common.datadir import DIFFICULTY, phase_dir, timestamp
from common.errors import PipelineError


def test_newest_is_by_timestamp_in_name_not_mtime(tmp_path):
    folder = phase_dir(tmp_path, "0")
    old = folder / "difficulty_20200101_000000_000000.parquet"
    new = folder / "difficulty_20250101_000000_000000.parquet"
    new.write_text("new")
    old.write_text("old")  # written last: newest mtime, oldest name
    (folder / "difficulty_notimestamp.parquet").write_text("x")
    assert DIFFICULTY.newest(tmp_path) == new
    (folder / "difficulty_20260101_000000_000000_metadata.json").write_text("{}")
    assert DIFFICULTY.newest(tmp_path) == new


def test_missing_output_names_the_command(tmp_path):
    with pytest.raises(PipelineError, match=r"run `python3 run.py phase 0`"):
        DIFFICULTY.newest(tmp_path)


def test_explicit_input_must_exist(tmp_path):
    with pytest.raises(PipelineError, match="does not exist"):
        DIFFICULTY.resolve(str(tmp_path / "nope.parquet"), tmp_path)
    real = tmp_path / "x.parquet"
    real.write_text("x")
    assert DIFFICULTY.resolve(str(real), tmp_path) == real


def test_timestamps_sort_and_differ():
    a, b = timestamp(), timestamp()
    assert a <= b and len(a) == len("20261126_215300_000000")


def test_unknown_phase(tmp_path):
    with pytest.raises(PipelineError, match="unknown phase"):
        phase_dir(tmp_path, "7")
