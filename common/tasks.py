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


def tasks_in_range(
    all_ids: list[int], own_ids: list[int], start: int | None, end: int | None, what: str
) -> tuple[int, int, list[int]]:
    """The tasks of a phase selected by ``--start/--end``, the same way in every phase.

    Why one rule: ``--start 0 --end 99`` must mean the same problems whichever
    phase it is given to. Positions count in the whole task list (every MBPP
    task, sorted by task_id, 0-based, inclusive); a phase runs the tasks of its
    own set (``what``: all tasks for Phase 1, the validation split for Phase
    1.2) that lie in that range. Returns the checked bounds and the task ids.
    """
    ordered = sorted(int(t) for t in all_ids)
    lo, hi = slice_bounds(len(ordered), start, end)
    window = set(ordered[lo : hi + 1])
    chosen = [int(t) for t in sorted(own_ids) if int(t) in window]
    if not chosen:
        raise PipelineError(
            f"no task of {what} lies in positions {lo}..{hi} of the {len(ordered)} tasks "
            "(--start/--end count positions among all tasks, sorted by task_id)"
        )
    return lo, hi, chosen


def position_slices(all_ids: list[int], chosen: list[int], parts: int) -> list[tuple[int, int]]:
    """Split ``chosen`` into at most ``parts`` nearly equal groups, each as its ``--start/--end`` positions.

    Each range runs from the position of a group's first task to that of its
    last, so the ranges never overlap and each holds exactly its group of
    ``chosen`` (the launcher's workers get balanced work even when the phase's
    own tasks are spread over the whole list, as the validation split is).
    """
    position = {t: i for i, t in enumerate(sorted(int(t) for t in all_ids))}
    groups = contiguous_slices(0, len(chosen) - 1, parts)
    return [(position[chosen[a]], position[chosen[b]]) for a, b in groups]
