"""generate_and_execute: a rerun generates only the sequences without a record, and they equal a full run's."""

from __future__ import annotations

import common.modeling.generation_loop as loop
from common.datadir import RecordCheckpointer
from common.modeling.generation import GenerationConfig
from common.modeling.generation_loop import Job, generate_and_execute, record_key
from common.sandbox.executor import Executor, ExecutorConfig
from tests.common.modeling.test_generation import PROMPTS

KEYS = ("generated_text", "n_generated_tokens", "stop_reason", "passed", "outcome")


def _jobs() -> list[Job]:
    return [Job(key=f"job{i}@T0.9", task_id=i, prompt=p, test_setup_code="", tests=["assert True"])
            for i, p in enumerate(PROMPTS)]


def _run(model, tokenizer, folder, executor, batch_size: int, counter: list | None = None, monkeypatch=None):
    cfg = GenerationConfig(max_new_tokens=12, batch_size=batch_size, temperature=0.9, samples_per_prompt=2, seed=3)
    if counter is not None:
        real = loop.generate_batches

        def counting(*args, **kwargs):
            for results in real(*args, **kwargs):
                counter.extend((r.index, r.sample_index) for r in results)
                yield results

        monkeypatch.setattr(loop, "generate_batches", counting)
    checkpointer = RecordCheckpointer(folder, checkpoint_every=1, autosave_every=1)
    return generate_and_execute(model, tokenizer, _jobs(), cfg, [], executor, checkpointer)


def test_rerun_generates_only_missing_sequences(tiny_model, tmp_path, monkeypatch) -> None:
    """The rerun even uses another batch size: a sequence's sample belongs to it, not to its batch."""
    model, tokenizer = tiny_model
    with Executor(ExecutorConfig(workers=1)) as executor:
        full = _run(model, tokenizer, tmp_path / "full", executor, 3)
        # A run killed after some records: keep job0#0, job1#0 and job1#1, job3#1 (a job half done included).
        kept = {record_key(f"job{i}@T0.9", s) for i, s in [(0, 0), (1, 0), (1, 1), (3, 1)]}
        partial = RecordCheckpointer(tmp_path / "resumed", checkpoint_every=1, autosave_every=1)
        for record in full:
            if record["key"] in kept:
                partial.add(record)
        partial.flush()
        generated: list = []
        resumed = _run(model, tokenizer, tmp_path / "resumed", executor, 4, generated, monkeypatch)
    assert len(generated) == 2 * len(PROMPTS) - len(kept)
    assert [r["key"] for r in resumed] == [r["key"] for r in full]
    for a, b in zip(resumed, full):
        assert {k: a[k] for k in KEYS} == {k: b[k] for k in KEYS}
    assert len({r["generated_text"] for r in full}) > len(PROMPTS)  # samples of a prompt differ
