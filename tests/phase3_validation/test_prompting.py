"""The prompting baseline on a tiny random Gemma-2: real generation, real execution, resume."""

from __future__ import annotations

import pandas as pd
import torch

from common.modeling.generation import GenerationConfig
from common.prompts import build_prompt
from common.sandbox.executor import Executor, ExecutorConfig
from phase3_validation.inputs import SplitTasks
from phase3_validation.prompting import INSTRUCTION, instructed_prompt, prompted_generation, summary_lines
from phase3_validation.steering_eval import SteeringContext, steered_generation


def _split(tmp_path) -> SplitTasks:
    rows = [{"task_id": t, "text": f"Write a function that returns {t}.", "test_list": [f"assert f() == {t}"],
             "test_setup_code": ""} for t in (11, 12, 13, 14)]
    tasks = pd.DataFrame(rows)
    baseline = pd.DataFrame({"task_id": tasks["task_id"], "passed": [True, False, True, False],
                             "prompt": [build_prompt(r["text"], r["test_list"]) for r in rows],
                             "extracted_code": "", "generated_text": ""})
    return SplitTasks(name="validation", table_path=tmp_path / "validation_mbpp.parquet", tasks=tasks, baseline=baseline)


def _ctx(tiny_model, tmp_path, executor) -> SteeringContext:
    model, tokenizer = tiny_model
    return SteeringContext(model=model, tokenizer=tokenizer, executor=executor,
                           gen_cfg=GenerationConfig(max_new_tokens=12, batch_size=2, temperature=0.0, seed=0),
                           hook_point="resid_post", positions="all", model_id="tiny", checkpoint_root=tmp_path / "ckpt",
                           checkpoint_every=1, autosave_every=2)


def test_instruction_comes_first_and_the_cue_stays_last():
    prompt = build_prompt("Write f.", ["assert f() == 1"])
    text = instructed_prompt(prompt)
    assert text.startswith(INSTRUCTION + "\n\n") and text.endswith(prompt) and text.endswith("```python\n")


def test_prompted_run_changes_the_context_and_resumes_from_its_checkpoint(tiny_model, tmp_path):
    split = _split(tmp_path)
    with Executor(ExecutorConfig(workers=1, timeout_s=10)) as executor:
        ctx = _ctx(tiny_model, tmp_path, executor)
        unsteered = steered_generation(ctx, split, 0, torch.zeros(tiny_model[0].config.hidden_size), "alpha0")
        first = prompted_generation(ctx, split)
        assert first.records["task_id"].tolist() == split.task_ids and first.n_resumed == 0
        # The instruction is real context: a greedy model continues differently after it.
        assert (first.records["generated_text"] != unsteered.records["generated_text"]).any()
        again = prompted_generation(_ctx(tiny_model, tmp_path, executor), split)
        assert again.n_resumed == len(split)  # nothing regenerated
        assert again.records["generated_text"].tolist() == first.records["generated_text"].tolist()
        other = prompted_generation(ctx, split, instruction="Think first.")
        assert other.checkpoint != first.checkpoint and other.n_resumed == 0  # the instruction keys the checkpoint


def test_summary_lines_show_the_instruction_and_rates():
    rates = {"n_corrected": 2, "n_initially_incorrect": 5, "correction_rate": 0.4, "correction_ci_lo": 0.05,
             "correction_ci_hi": 0.85, "n_corrupted": 1, "n_initially_correct": 5, "corruption_rate": 0.2,
             "corruption_ci_lo": 0.005, "corruption_ci_hi": 0.716, "net_correction": 0.2, "mcnemar_p": 1.0, "n_tasks": 10}
    text = "\n".join(summary_lines({"instruction": INSTRUCTION, "placement": "first", "rates": rates,
                                    "programs_changed_vs_alpha0": 3}, {}))
    assert INSTRUCTION in text and "| prompting baseline | 2/5 = 0.400" in text and "3 of 10" in text
    assert "Not run." in "\n".join(summary_lines(None, {}))
