"""One run of a phase per data directory at a time.

Why: two runs of one phase writing into the same folder would interleave
checkpoints, activation files and tables, and the second would replace what
the first just wrote. The lock is ``fcntl.flock`` on a ``.lock`` file in the
phase folder: the kernel releases it when the process ends, however it ends
(SIGKILL included), so a killed run never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from common.errors import PipelineError

LOCK_NAME = ".lock"


@contextlib.contextmanager
def exclusive(folder: str | Path, what: str) -> Iterator[Path]:
    """Hold the lock of ``folder`` for the block; refuse in one line if another process holds it."""
    path = Path(folder) / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise PipelineError(
                f"{what} is already running on {path.parent} ({holder}); wait for it to finish"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        yield path
    finally:
        handle.close()  # closing the descriptor releases the lock


def holder_of(lock_file: str | Path) -> str | None:
    """Who holds the lock in ``lock_file`` (its recorded pid), or None when nobody does; creates nothing.

    Why a shared, non-blocking probe: it fails exactly when a phase holds the
    exclusive lock, and it is released at once, so a dry run of ``clean_data.py``
    can report a running phase without taking or creating any lock.
    """
    try:
        handle = open(lock_file, encoding="utf-8")
    except FileNotFoundError:
        return None
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return handle.read().strip() or "another process"
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    return None


@contextlib.contextmanager
def exclusive_all(folders: list[Path], what: str) -> Iterator[list[Path]]:
    """Hold the lock of every folder in ``folders`` (existing ones only) for the block, or refuse in one line.

    Used by ``clean_data.py``: while it holds every phase's lock, no phase can
    start on the folders it is deleting, and it never deletes under a running one.
    """
    with contextlib.ExitStack() as stack:
        held = []
        for folder in folders:
            if folder.is_dir():
                try:
                    held.append(stack.enter_context(exclusive(folder, what)))
                except PipelineError:
                    holder = holder_of(folder / LOCK_NAME) or "another process"
                    raise PipelineError(
                        f"a run holds the lock on {folder} ({holder}); wait for it to finish"
                    ) from None
        yield held
