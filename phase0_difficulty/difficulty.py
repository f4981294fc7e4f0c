"""Phase 0: McCabe cyclomatic complexity of each reference solution, with radon.

Why: Phase 0.1 stratifies the splits by difficulty, so that the sae,
hyperparams and validation splits hold problems of the same mix of
difficulty, and a latent cannot look predictive only because one split is
easier than another.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from common.benchmarks.mbpp import load_mbpp, mbpp_source_description
from common.complexity import cyclomatic_complexity
from common.config import PipelineConfig
from common.datadir import DIFFICULTY, RunClock, build_metadata, metadata_path_of, timestamp, write_json
from common.errors import PipelineError

logger = logging.getLogger(__name__)


def compute_difficulty(problems: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for task_id, code in zip(problems["task_id"], problems["code"]):
        try:
            complexity = cyclomatic_complexity(code)
        except SyntaxError as exc:
            raise PipelineError(f"task {task_id}: reference solution does not parse ({exc.msg})")
        rows.append({"task_id": int(task_id), "cyclomatic_complexity": complexity})
    return pd.DataFrame(rows)


def run(cfg: PipelineConfig) -> Path:
    """Write ``data/phase0/difficulty_<ts>.parquet`` and its metadata; return the parquet path."""
    clock = RunClock()
    problems = load_mbpp(cfg.mbpp_path)
    difficulty = compute_difficulty(problems)
    stamp = timestamp()
    out_path = DIFFICULTY.path(cfg.data_dir, ts=stamp)
    DIFFICULTY.write(difficulty, out_path)
    counts = difficulty["cyclomatic_complexity"].value_counts().sort_index()
    meta = build_metadata(
        "0",
        cfg,
        clock,
        inputs={"mbpp": cfg.mbpp_path} if cfg.mbpp_path else {},
        outputs={"difficulty": out_path},
        extra={
            "mbpp_source": mbpp_source_description(cfg.mbpp_path),
            "n_tasks": len(difficulty),
            "complexity_counts": {int(k): int(v) for k, v in counts.items()},
            "measure": "radon ComplexityVisitor.total_complexity on CRLF-normalised code",
        },
    )
    write_json(metadata_path_of(out_path), meta)
    logger.info("phase 0: complexity of %d tasks -> %s", len(difficulty), out_path)
    return out_path
