"""Generate, execute and checkpoint: the loop that every generating phase shares.

Why one loop: continuous generation, overlap of generation with CPU test
execution, and resume after a kill are subtle, and must behave the same in
Phase 1.0, Phase 1.2, Phase 3 (steering, controls, prompting) and the
HumanEval runs.

How it runs: every (job, sample) sequence not yet checkpointed goes into one
queue for ``generate_batches`` (rows leave the batch when they finish and
waiting sequences take their place); each finished sequence is handed to an
executor worker at once, and its record is checkpointed when its verdict is in.

How resume stays exact: a sequence's result does not depend on the batch it
ran in. Greedy decoding is batch-independent (rule 5, tested), and a sampled
sequence draws from its own generator, seeded from ``(seed, job key, sample
index)`` (``job_seed`` and ``common.modeling.generation.sample_seed``), never from a
batch number. So a rerun generates only the sequences without a record, and
they come out as they would have in a run that was never killed.
"""

from __future__ import annotations

import concurrent.futures
import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import transformers
from tqdm import tqdm

from common.datadir import RecordCheckpointer
from common.modeling.generation import GenerationConfig, GenerationResult, generate_batches
from common.sandbox.executor import ExecutionResult, Executor
from common.sandbox.labelling import submit_generation
from common.seeding import derive_seed

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
    # (``common.sandbox.labelling.submit_generation``): called with (executor, generated text), returns
    # (the program recorded as extracted_code, future verdict). HumanEval's is the official harness's.
    judge: Callable[[Executor, str], tuple[str, concurrent.futures.Future[ExecutionResult]]] | None = None


def record_key(job_key: str, sample_index: int) -> str:
    return f"{job_key}#{sample_index}"


# Called once per finished sequence, after its program ran and before its record is
# checkpointed: the place to write activation files, so a checkpointed record always
# has its files on disk.
OnRecord = Callable[[Job, GenerationResult, ExecutionResult, dict[str, Any]], None]


def job_seed(seed: int, job_key: str) -> int:
    """A job's seed: the run's seed and the job's key (crc32 of its text), so it is the same in every rerun and slice."""
    return derive_seed(seed, zlib.crc32(job_key.encode("utf-8")))


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
    todo = [j for j in jobs if any(record_key(j.key, s) not in done for s in range(k))]
    wanted = [(i, s) for i, j in enumerate(todo) for s in range(k) if record_key(j.key, s) not in done]
    total = len(wanted)
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
        if wanted:
            finished = generate_batches(
                model, tokenizer, [j.prompt for j in todo], layers, gen_cfg,
                prompt_seeds=[job_seed(gen_cfg.seed, j.key) for j in todo], wanted=wanted,
            )
            for results in finished:
                for result in results:
                    job = todo[result.index]
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
