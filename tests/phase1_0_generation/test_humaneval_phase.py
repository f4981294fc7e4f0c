"""Phase 1.0 with --dataset humaneval on the tiny model: its own outputs, HumanEval's prompt, labels that re-run."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import phase1_0_generation
from common.activations import activation_path
from common.config import PipelineConfig
from common.errors import PipelineError
from common.executor import Executor, ExecutorConfig
from common.humaneval import completion_program, load_humaneval, program_pieces
from tests.helpers import REAL_HUMANEVAL, requires_real_humaneval

pytestmark = requires_real_humaneval


def _cfg(data_dir, model_dir, **over):
    base = dict(
        data_dir=str(data_dir), humaneval_path=str(REAL_HUMANEVAL), dataset="humaneval", model=str(model_dir),
        device="cpu", start=0, end=3, max_new_tokens=10, batch_size=2, workers=2,
    )
    base.update(over)
    return PipelineConfig(**base)


def test_humaneval_run_writes_beside_mbpp_and_labels_rerun(tiny_model_dir, tmp_path):
    cfg = _cfg(tmp_path, tiny_model_dir)
    path = phase1_0_generation.run(cfg)
    assert path.parent == tmp_path / "humaneval" / "phase1_0"
    assert not (tmp_path / "phase1_0").exists()  # MBPP's outputs are untouched
    df = pd.read_parquet(path)
    problems = load_humaneval(REAL_HUMANEVAL).set_index("task_id")
    assert list(df["task_id"]) == [0, 1, 2, 3]
    items = []
    for row in df.itertuples():
        problem = {**problems.loc[row.task_id].to_dict(), "task_id": row.task_id}
        assert row.prompt == problem["prompt"]  # the release's prompt, verbatim
        assert row.extracted_code == completion_program(problem, row.generated_text)
        assert f"def {problem['entry_point']}(" in row.extracted_code or row.outcome != "passed"
        items.append({**program_pieces(problem, ""), "code": row.extracted_code})  # re-run by hand
        for layer in (0, 1):
            label = "correct" if row.passed else "incorrect"
            vec = np.load(activation_path(Path(path.parent, "activations"), row.task_id, layer, label))["activation"]
            assert vec.shape == (64,)
    with Executor(ExecutorConfig(workers=2)) as executor:
        rerun = executor.run_many(items, progress=False)
    assert [r.passed for r in rerun] == list(df["passed"])
    assert [r.outcome for r in rerun] == list(df["outcome"])


def test_humaneval_refuses_an_mbpp_difficulty_input(tiny_model_dir, tmp_path):
    with pytest.raises(PipelineError, match="--dataset humaneval takes none"):
        phase1_0_generation.run(_cfg(tmp_path, tiny_model_dir, input=str(tmp_path / "x.parquet")))


def test_chat_is_refused_before_an_earlier_run_is_moved_aside(tiny_model_dir, tmp_path):
    """The refusal comes before prepare_outputs, which would archive a run whose settings (plain) differ."""
    import dataclasses

    cfg = _cfg(tmp_path, tiny_model_dir, end=0)
    path = phase1_0_generation.run(cfg)
    before = sorted(p.name for p in path.parent.iterdir())
    with pytest.raises(PipelineError, match="plain"):
        phase1_0_generation.run(dataclasses.replace(cfg, prompt_format="chat"))
    assert sorted(p.name for p in path.parent.iterdir()) == before and not (path.parent / "archive").exists()
