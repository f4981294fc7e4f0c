import pandas as pd
import pytest

from common.config import PipelineConfig
from phase0_difficulty import run
from phase0_difficulty.difficulty import cyclomatic_complexity
from tests.helpers import DEMO_PROBLEMS, REAL_MBPP, requires_real_mbpp


def test_complexity_counts_branches_and_handles_crlf_and_tabs():
    assert cyclomatic_complexity("def f(x):\r\n\treturn x") == 1
    branchy = "def f(x):\r\n\tif x > 0:\r\n\t\treturn 1\r\n\tfor i in range(x):\r\n\t\tx += i\r\n\treturn x"
    assert cyclomatic_complexity(branchy) == 3
    two = "def f(x):\n    if x:\n        return g(x)\n    return 0\ndef g(y):\n    return y"
    # radon's total: decision points of the whole program plus one (one `if` -> 2)
    assert cyclomatic_complexity(two) == 2


def test_phase0_writes_parquet_and_metadata(tmp_path):
    out = run(PipelineConfig(data_dir=str(tmp_path), mbpp_path=str(DEMO_PROBLEMS)))
    df = pd.read_parquet(out)
    assert list(df.columns) == ["task_id", "cyclomatic_complexity"]
    assert df["cyclomatic_complexity"].min() >= 1
    meta = list(out.parent.glob("difficulty_*_metadata.json"))
    assert len(meta) == 1 and str(DEMO_PROBLEMS) in meta[0].read_text()


@requires_real_mbpp
@pytest.mark.slow
def test_phase0_on_real_mbpp(tmp_path):
    df = pd.read_parquet(run(PipelineConfig(data_dir=str(tmp_path), mbpp_path=str(REAL_MBPP))))
    assert len(df) == 974 and df["task_id"].is_unique
