"""Generate, execute and checkpoint: the loop that Phases 1.0, 1.2 and 3 share.

Why one loop: batching, overlap of GPU generation with CPU test execution, and
resume after a kill are subtle, and must behave the same in every phase that
generates code.

How resume stays exact: the batches are fixed *before* anything runs, from the
whole job list (sorted by prompt length), and each batch's sampling seed comes
from ``(seed, batch number)``. A rerun skips the batches whose records are all
checkpointed and regenerates the others whole, dropping the rows already
recorded. So a batch always has the same composition and seed, and a run that
was killed produces the same samples as one that never was.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import transformers
from tqdm import tqdm

from common.executor import ExecutionResult, Executor
from common.generation import GenerationConfig, GenerationResult, generate_batches, plan_batches
from common.labelling import submit_generation
from common.storage import RecordCheckpointer

logger = logging.getLogger(__name__)


@dataclass
class Job:
    """One prompt to generate for (``samples`` sequences), and the tests its programs must pass."""

    key: str
    task_id: int
    prompt: str
    test_setup_code: str
    tests: list[str]
    extra: dict[str, Any] = field(default_factory=dict)
    # How a generation of this job is labelled, when not by MBPP's extraction and asserts
    # (``common.labelling.submit_generation``): called with (executor, generated text), returns
    # (the program recorded as extracted_code, future verdict). HumanEval's is the official harness's.
    judge: Callable[[Executor, str], tuple[str, concurrent.futures.Future[ExecutionResult]]] | None = None


def record_key(job_key: str, sample_index: int) -> str:
    return f"{job_key}#{sample_index}"


# Called once per finished sequence, after its program ran and before its record is
# checkpointed: the place to write activation files, so a checkpointed record always
# has its files on disk.
OnRecord = Callable[[Job, GenerationResult, ExecutionResult, dict[str, Any]], None]


def plan_job_batches(tokenizer: transformers.PreTrainedTokenizerBase, jobs: list[Job], prompts_per_batch: int) -> list[list[Job]]:
    """Fixed batches over all jobs (``plan_batches``, ties by job key), so a rerun plans the same."""
    lengths = [len(ids) for ids in tokenizer([j.prompt for j in jobs])["input_ids"]] if jobs else []
    return [[jobs[i] for i in batch] for batch in plan_batches(lengths, [j.key for j in jobs], prompts_per_batch)]


def generate_and_execute(
    model: transformers.PreTrainedModel,
    tokenizer: transformers.PreTrainedTokenizerBase,
    jobs: list[Job],
    gen_cfg: GenerationConfig,
    layers: list[int] | None,
    executor: Executor,
    checkpointer: RecordCheckpointer,
    on_record: OnRecord | None = None,
    desc: str = "generating",
) -> list[dict[str, Any]]:
    """Run every job not yet checkpointed; return all records (old and new), keyed by ``key``.

    Each record holds the job's key and task id, its ``extra`` fields, the
    generation (text, extracted code, token count, stop reason, timing) and the
    verdict (passed, outcome, detail, execution time).
    """
    k = gen_cfg.samples_per_prompt
    done: dict[str, dict[str, Any]] = {r["key"]: r for r in checkpointer.load()}
    if done:
        logger.info("resuming: %d record(s) already checkpointed", len(done))
    batches = plan_job_batches(tokenizer, jobs, gen_cfg.prompts_per_batch)
    remaining = [
        (number, batch)
        for number, batch in enumerate(batches)
        if any(record_key(j.key, s) not in done for j in batch for s in range(k))
    ]
    total = sum(len(b) for _, b in remaining) * k
    pending: list[tuple[Job, GenerationResult, str, concurrent.futures.Future[ExecutionResult]]] = []

    def drain(block: bool) -> None:
        still = []
        for job, result, code, future in pending:
            if block or future.done():
                _finish(job, result, code, future.result())
            else:
                still.append((job, result, code, future))
        pending[:] = still

    def _finish(job: Job, result: GenerationResult, code: str, verdict: ExecutionResult) -> None:
        key = record_key(job.key, result.sample_index)
        record = {
            "key": key,
            "task_id": job.task_id,
            **job.extra,
            "sample_index": result.sample_index,
            "prompt": job.prompt,
            "generated_text": result.generated_text,
            "extracted_code": code,
            "passed": bool(verdict.passed),
            "outcome": verdict.outcome,
            "detail": verdict.detail,
            "n_generated_tokens": int(result.n_generated_tokens),
            "mean_logprob": result.mean_logprob,
            "n_prompt_tokens": int(result.n_prompt_tokens),
            "stop_reason": result.stop_reason,
            "gen_time_s": float(result.gen_time_s),
            "exec_time_s": float(verdict.duration_s),
        }
        if on_record is not None:
            on_record(job, result, verdict, record)
        checkpointer.add(record)
        done[key] = record
        bar.update(1)

    with tqdm(total=total, desc=desc, unit="seq") as bar:
        for number, batch in remaining:
            cfg = dataclasses.replace(gen_cfg, batch_size=len(batch) * k)
            prompts = [j.prompt for j in batch]
            for results in generate_batches(model, tokenizer, prompts, layers, cfg, first_batch_number=number):
                for result in results:
                    job = batch[result.index]
                    if record_key(job.key, result.sample_index) in done:
                        continue
                    if job.judge is not None:
                        code, future = job.judge(executor, result.generated_text)
                    else:
                        code, future = submit_generation(
                            executor, job.task_id, result.generated_text, job.test_setup_code, job.tests
                        )
                    pending.append((job, result, code, future))
            drain(block=False)
        drain(block=True)
    checkpointer.flush()
    return [done[record_key(j.key, s)] for j in jobs for s in range(k)]
