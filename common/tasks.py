"""Task slices and run identities shared by the generating phases and the launcher."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from common.errors import PipelineError


def slice_bounds(n_tasks: int, start: int | None, end: int | None) -> tuple[int, int]:
    """Inclusive positions ``start..end`` in the task order, checked against ``n_tasks``."""
    if n_tasks < 1:
        raise PipelineError("there are no tasks to run")
    lo = 0 if start is None else start
    hi = n_tasks - 1 if end is None else end
    if lo < 0 or hi < 0:
        raise PipelineError(f"--start/--end must be >= 0, got {lo}..{hi}")
    if lo > hi:
        raise PipelineError(f"--start {lo} is after --end {hi}")
    if hi >= n_tasks:
        raise PipelineError(f"--end {hi} is out of range: there are {n_tasks} tasks (positions 0..{n_tasks - 1})")
    return lo, hi


def contiguous_slices(start: int, end: int, parts: int) -> list[tuple[int, int]]:
    """Split ``start..end`` (inclusive) into at most ``parts`` contiguous, nearly equal slices."""
    n = end - start + 1
    parts = max(1, min(parts, n))
    base, extra = divmod(n, parts)
    slices, lo = [], start
    for i in range(parts):
        size = base + (1 if i < extra else 0)
        slices.append((lo, lo + size - 1))
        lo += size
    return slices


def model_slug(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", model.strip("/"))[-60:]


def run_key(parts: dict[str, Any]) -> str:
    """A short stable hash of what makes two runs "the same command" (for resume folders)."""
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]
