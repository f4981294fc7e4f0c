import json

import pandas as pd
import pytest

from common.benchmarks.mbpp import load_mbpp
from common.errors import PipelineError
from tests.helpers import REAL_MBPP, requires_real_mbpp


def _row(task_id, **over):
    row = {
        "task_id": task_id,
        "text": "Write a function to add one.",
        "code": "def add_one(x):\r\n\treturn x + 1",
        "test_list": ["assert add_one(1) == 2", "assert add_one(2) == 3", "assert add_one(0) == 1"],
        "test_setup_code": "",
        "challenge_test_list": [],
    }
    row.update(over)
    return row


def _write(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_local_jsonl_is_sorted_and_typed(tmp_path):
    df = load_mbpp(_write(tmp_path / "m.jsonl", [_row(5), _row(2)]))
    assert df["task_id"].tolist() == [2, 5]
    assert list(df["test_list"][0]) == _row(2)["test_list"]


def test_parquet_with_same_columns(tmp_path):
    path = tmp_path / "m.parquet"
    pd.DataFrame([_row(1), _row(3)]).to_parquet(path)
    assert load_mbpp(path)["task_id"].tolist() == [1, 3]


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"test_list": "assert x"}, "line 2: field 'test_list'"),
        ({"test_list": ["print(1)"]}, "line 2: field 'test_list' has a test not starting with 'assert'"),
        ({"task_id": "seven"}, "line 2: field 'task_id' must be an integer"),
        ({"text": ""}, "line 2: field 'text' is empty"),
        ({"code": None}, "line 2: field 'code' must be a string"),
    ],
)
def test_bad_rows_name_line_and_field(tmp_path, bad, message):
    path = _write(tmp_path / "m.jsonl", [_row(1), {**_row(2), **bad}])
    with pytest.raises(PipelineError, match=message):
        load_mbpp(path)


def test_missing_field_invalid_json_and_duplicates(tmp_path):
    row = _row(1)
    del row["test_setup_code"]
    with pytest.raises(PipelineError, match="line 1: missing field 'test_setup_code'"):
        load_mbpp(_write(tmp_path / "a.jsonl", [row]))
    (tmp_path / "b.jsonl").write_text('{"task_id": 1,\n')
    with pytest.raises(PipelineError, match="line 1: not valid JSON"):
        load_mbpp(tmp_path / "b.jsonl")
    with pytest.raises(PipelineError, match="duplicate task_id 1"):
        load_mbpp(_write(tmp_path / "c.jsonl", [_row(1), _row(1)]))
    with pytest.raises(PipelineError, match="does not exist"):
        load_mbpp(tmp_path / "none.jsonl")


def test_hub_unreachable_gives_one_line_naming_the_flag(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-pva-cache")
    with pytest.raises(PipelineError, match="--mbpp-path") as info:
        load_mbpp(None)
    assert "\n" not in str(info.value)


@requires_real_mbpp
def test_real_mbpp_loads_all_974():
    df = load_mbpp(REAL_MBPP)
    assert len(df) == 974
    assert df["task_id"].tolist() == list(range(1, 975))
    assert all(len(t) == 3 for t in df["test_list"])
    assert (df["test_setup_code"] != "").sum() == 2
