import pytest

from common.errors import PipelineError
from common.paths import find_newest, phase_dir, resolve_input, timestamp


def test_newest_is_by_timestamp_in_name_not_mtime(tmp_path):
    folder = phase_dir(tmp_path, "0")
    old = folder / "difficulty_20200101_000000_000000.parquet"
    new = folder / "difficulty_20250101_000000_000000.parquet"
    new.write_text("new")
    old.write_text("old")  # written last: newest mtime, oldest name
    (folder / "difficulty_notimestamp.parquet").write_text("x")
    assert find_newest(tmp_path, "0", "difficulty_*.parquet") == new
    (folder / "difficulty_20250101_000000_000000_metadata.json").write_text("{}")
    assert find_newest(tmp_path, "0", "difficulty_*") == new


def test_missing_output_names_the_command(tmp_path):
    with pytest.raises(PipelineError, match=r"run `python3 run.py phase 0`"):
        find_newest(tmp_path, "0", "difficulty_*.parquet")


def test_explicit_input_must_exist(tmp_path):
    with pytest.raises(PipelineError, match="does not exist"):
        resolve_input(str(tmp_path / "nope.parquet"), tmp_path, "0", "*.parquet")
    real = tmp_path / "x.parquet"
    real.write_text("x")
    assert resolve_input(str(real), tmp_path, "0", "*.parquet") == real


def test_timestamps_sort_and_differ():
    a, b = timestamp(), timestamp()
    assert a <= b and len(a) == len("20261126_215300_000000")


def test_unknown_phase(tmp_path):
    with pytest.raises(PipelineError, match="unknown phase"):
        phase_dir(tmp_path, "7")
