"""Benchmark: the sandboxed executor against the naive way, side by side on MBPP.

Why: docs/design.md section 5 asks that every speed claim be a ratio against the
naive way, measured in one run on the same data. The naive way is what a
pipeline without a sandbox would do: one fresh ``python3`` subprocess per
program (solution, setup code, asserts as one script), the same number of
workers through a thread pool, no limits, "passed" meaning exit code 0.
The executor's time includes starting and closing its workers.

Run from the repository root:
    python3 -m bench.executor [--workers N] [--mbpp-path P] [--limit K] [--timeout-s S]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common.benchmarks.mbpp import load_mbpp
from common.sandbox.executor import Executor, ExecutorConfig, build_program

REPO_ROOT = Path(__file__).resolve().parents[1]

DEFAULT_MBPP = REPO_ROOT.parent / "shared" / "data" / "mbpp" / "mbpp.jsonl"


def run_naive(programs: list[str], workers: int, workdir: str, timeout_s: float) -> list[bool]:
    """One fresh interpreter per program, ``workers`` at a time, no limits; pass = exit code 0.

    All programs share one scratch working directory (so a program that writes
    files does not write into the repository); the timeout is only a safety net.
    """

    def one(program: str) -> bool:
        try:
            done = subprocess.run(
                [sys.executable, "-c", program],
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout_s,
            )
        except subprocess.TimeoutExpired:
            return False
        return done.returncode == 0

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, programs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=ExecutorConfig().workers)
    parser.add_argument("--mbpp-path", default=str(DEFAULT_MBPP))
    parser.add_argument("--limit", type=int, default=None, help="only the first K problems")
    # Task 123 alone needs ~8.5 s of CPU on a 2-core dev VM: the executor's 10 s default
    # can time it out under load, which would compare a timeout with a pass.
    parser.add_argument("--timeout-s", type=float, default=60.0, help="wall and CPU limit for both ways")
    args = parser.parse_args()

    problems = load_mbpp(args.mbpp_path)
    if args.limit is not None:
        problems = problems.head(args.limit)
    rows = problems.to_dict("records")
    programs = [build_program(r["code"], r["test_setup_code"], r["test_list"]) for r in rows]
    config = ExecutorConfig(workers=args.workers, timeout_s=args.timeout_s, cpu_time_s=args.timeout_s)
    print(f"{len(rows)} MBPP reference solutions, {args.workers} workers, python {sys.version.split()[0]}")

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pva_naive_") as workdir:
        naive = run_naive(programs, args.workers, workdir, args.timeout_s)
    naive_s = time.perf_counter() - start

    start = time.perf_counter()
    with Executor(config) as executor:
        results = executor.run_many(rows, progress=False)
    executor_s = time.perf_counter() - start

    n = len(rows)
    executor_passed = sum(r.passed for r in results)
    print(f"naive (fresh python3 per program, no limits): {naive_s:7.2f} s  {n / naive_s:7.1f} programs/s  "
          f"passed {sum(naive)}/{n}")
    print(f"executor (sandboxed, fork server):            {executor_s:7.2f} s  {n / executor_s:7.1f} programs/s  "
          f"passed {executor_passed}/{n}")
    print(f"ratio naive/executor: {naive_s / executor_s:.2f}x")
    slowest = max(results, key=lambda r: r.duration_s)
    print(f"(slowest program: task {slowest.task_id}, {slowest.duration_s:.1f} s on its own; "
          "no method finishes sooner than that)")
    failed = [r for r in results if not r.passed]
    for result in failed[:10]:
        print(f"  executor failed task {result.task_id}: {result.outcome}: {result.detail}")


if __name__ == "__main__":
    main()
