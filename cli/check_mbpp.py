"""``run.py check-mbpp`` and ``check-humaneval``: every reference solution through the Phase 1 executor.

Why: if a reference solution fails in our sandbox, the sandbox (or the test
order) is wrong, and every "incorrect" label it gives the model is suspect.
All 974 MBPP references must pass. Any MBPP-format file works, so users can
check their own programs the same way.
"""

from __future__ import annotations

import collections
import logging
from pathlib import Path

from common.benchmarks.humaneval import canonical_items, load_humaneval
from common.benchmarks.mbpp import load_mbpp
from common.config import PipelineConfig
from common.datadir import write_json
from common.sandbox.executor import Executor, executor_config_for

logger = logging.getLogger(__name__)


def check_mbpp_cli(cfg: PipelineConfig, json_path: str | None = None) -> int:
    """Print ``passed N/M`` and the outcome counts; exit 0 only when every program passes."""
    problems = load_mbpp(cfg.mbpp_path)
    return run_and_report(cfg, problems.to_dict("records"), json_path)


def check_humaneval_cli(cfg: PipelineConfig, json_path: str | None = None) -> int:
    """``run.py check-humaneval``: every canonical solution must pass in the sandbox."""
    return run_and_report(cfg, canonical_items(load_humaneval(cfg.humaneval_path)), json_path)


def run_and_report(cfg: PipelineConfig, items: list[dict], json_path: str | None) -> int:
    """Run executor items, print ``passed N/M``, the outcome counts and every failure; 0 only if all pass."""
    with Executor(executor_config_for(cfg)) as executor:
        results = executor.run_many(items, progress=True)
    n_passed = sum(r.passed for r in results)
    counts = collections.Counter(r.outcome for r in results)
    print(f"passed {n_passed}/{len(results)}")
    for outcome, count in counts.most_common():
        print(f"  {outcome}: {count}")
    for r in results:
        if not r.passed:
            print(f"  task {r.task_id}: {r.outcome}: {r.detail}")
    if json_path:
        write_json(Path(json_path), [r.to_dict() for r in results])
        print(f"results written to {json_path}")
    return 0 if n_passed == len(results) else 1
