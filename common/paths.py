"""Where every phase reads and writes: the data directory, phase folders, discovery.

Why discovery by timestamp in the *name* (not mtime): copying a data directory
(rsync, scp) changes mtimes but not names, and "the newest output of phase N"
must not change when a user moves their results between machines.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

from common.errors import PipelineError

PHASE_DIRS: dict[str, str] = {
    "0": "phase0",
    "0.1": "phase0_1",
    "1": "phase1_0",
    "1.2": "phase1_2",
    "2": "phase2",
    "3": "phase3",
}

# The command a user runs to produce each phase's outputs; named in "missing input" errors.
PHASE_COMMANDS: dict[str, str] = {
    "0": "python3 run.py phase 0",
    "0.1": "python3 run.py phase 0.1",
    "1": "python3 run.py phase 1 --model google/gemma-2-2b",
    "1.2": "python3 run.py phase 1.2 --model google/gemma-2-2b",
    "2": "python3 run.py phase 2 --split sae",
    "3": "python3 run.py phase 3",
}

TIMESTAMP_FORMAT = "%Y%m%d_%H%M%S_%f"
_TIMESTAMP_RE = re.compile(r"(\d{8}_\d{6}_\d{6})")


def timestamp(now: datetime | None = None) -> str:
    """A sortable timestamp with microseconds, so two runs in one second never collide."""
    return (now or datetime.now()).strftime(TIMESTAMP_FORMAT)


def phase_dir(data_dir: str | Path, phase: str, create: bool = True) -> Path:
    """The folder of one phase under the data directory."""
    if phase not in PHASE_DIRS:
        raise PipelineError(f"unknown phase {phase!r}; known: {', '.join(PHASE_DIRS)}")
    path = Path(data_dir) / PHASE_DIRS[phase]
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def name_timestamp(path: Path) -> str | None:
    match = _TIMESTAMP_RE.search(path.name)
    return match.group(1) if match else None


def find_newest(data_dir: str | Path, phase: str, pattern: str) -> Path:
    """The newest file matching ``pattern`` in a phase's folder, by the timestamp in its name.

    Raises a PipelineError naming the command that produces it when there is none.
    """
    folder = Path(data_dir) / PHASE_DIRS[phase]
    # A result's "<name>_metadata.json" shares its timestamp and would sort last: never an input.
    candidates = [
        p for p in folder.glob(pattern) if name_timestamp(p) is not None and not p.name.endswith("_metadata.json")
    ]
    if not candidates:
        raise PipelineError(
            f"no Phase {phase} output ({pattern}) in {folder}; run `{PHASE_COMMANDS[phase]}` "
            f"first or point --input at a file"
        )
    return max(candidates, key=lambda p: (name_timestamp(p), p.name))


def resolve_input(explicit: str | None, data_dir: str | Path, phase: str, pattern: str) -> Path:
    """``--input`` when given (must exist), otherwise the newest output of ``phase``."""
    if explicit:
        path = Path(explicit)
        if not path.exists():
            raise PipelineError(f"--input {explicit} does not exist")
        return path
    return find_newest(data_dir, phase, pattern)


def require_file(path: Path, phase: str) -> Path:
    """An output of an earlier phase with a fixed name; error naming the command if absent."""
    if not path.exists():
        raise PipelineError(
            f"missing {path}; run `{PHASE_COMMANDS[phase]}` first"
        )
    return path
