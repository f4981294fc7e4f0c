"""Atomic writes and resumable checkpoints.

Why: a phase may be killed at any moment (SIGKILL, a lost SSH session, an OOM),
and a half-written file must never be mistaken for a result. Every file is
written under a temporary name in the same folder, flushed, fsynced, then
renamed over the target (``os.replace`` is atomic on POSIX).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common.errors import PipelineError

logger = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"


def current_umask() -> int:
    """The process's umask, read without changing it where Linux allows (``/proc/self/status``).

    Why not only ``os.umask``: reading it that way sets it for a moment, and a
    file another thread creates in that moment would get the wrong mode.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def plain_write_mode(target: Path) -> int:
    """The mode ``open(target, "w")`` would leave: an existing file keeps its own, a new one gets 0666 less the umask.

    Why: ``tempfile.mkstemp`` creates 0600 whatever the umask, so every atomic
    write made shared data directories unreadable to colleagues and turned a
    0644 file into 0600 when it was rewritten.
    """
    try:
        st = target.stat()
    except OSError:
        return 0o666 & ~current_umask()
    return stat.S_IMODE(st.st_mode) if stat.S_ISREG(st.st_mode) else 0o666 & ~current_umask()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` on success.

    For libraries that insist on writing to a path themselves (pyarrow, savefig).
    On an exception the temporary file is removed and ``path`` is untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=target.suffix, dir=target.parent)
    try:
        # mkstemp makes 0600 whatever the umask; a shared data directory must get what a plain write gives.
        os.fchmod(fd, plain_write_mode(target))
    finally:
        os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def check_writable(path: str | Path, flag: str) -> Path:
    """Refuse in one line, before any work, an output that could not be written at the end.

    Why: ``label --output`` to a read-only place and ``check-humaneval --json
    DIR`` failed only after every program had run, naming a temporary file.
    The nearest existing folder on the way is probed by creating (and removing)
    a temporary file in it, which is what the atomic write will need; root's
    permission bypass and read-only mounts are thus judged as they really are.
    """
    target = Path(path)
    if target.is_dir():
        raise PipelineError(f"{flag} {target} is a directory; give a file name")
    folder = target.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise PipelineError(f"{flag} {target}: {folder} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=TMP_PREFIX, dir=folder)
    except OSError as exc:
        raise PipelineError(f"{flag} {target}: cannot write in {folder} ({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(probe)
    return target


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def json_safe(value: Any) -> Any:
    """A JSON-ready copy: numpy types to Python, NaN and +-inf to None (strict JSON has neither)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        return json_safe(value.item())
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def jsonl_objects(
    lines: Iterable[str], not_json: Callable[[int, str], str], not_object: Callable[[int], str]
) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for every non-blank line of a JSON-lines file, counted from 1.

    Strict: a line that is not JSON, or is JSON but not an object, stops the
    read with one line naming it, ``not_json(number, decoder message)`` or
    ``not_object(number)``; each caller words that for its file (MBPP,
    HumanEval, a generations table, a corpus). Blank lines are skipped.
    """
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PipelineError(not_json(number, exc.msg)) from exc
        if not isinstance(obj, dict):
            raise PipelineError(not_object(number))
        rows.append((number, obj))
    return rows


def write_parquet(df: pd.DataFrame, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)
    return Path(path)


def save_npz(path: str | Path, **arrays: Any) -> Path:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return atomic_write_bytes(path, buffer.getvalue())


def remove_stale_temporaries(folder: str | Path) -> int:
    """Delete ``.tmp-*`` leftovers of a process killed mid-write; returns how many."""
    count = 0
    for tmp in Path(folder).rglob(f"{TMP_PREFIX}*"):
        if tmp.is_file():
            tmp.unlink()
            count += 1
    return count


class RecordCheckpointer:
    """Resumable record store for long generation loops (docs/design.md section 7).

    Records (one dict per finished task or sample) are kept two ways:
    - a *checkpoint* every ``checkpoint_every`` records: the records since the
      previous checkpoint, as ``chunk_<seq>.parquet`` (cheap, small);
    - an *autosave* every ``autosave_every`` records: every record so far, as
      ``autosave_<count>.parquet``; the ``keep`` newest are kept and chunks
      that an autosave covers are deleted.
    ``load()`` takes the newest readable autosave and adds the readable chunks
    written after it, so a kill at any moment loses at most the records not yet
    checkpointed, and those are simply redone.
    """

    _CHUNK_RE = re.compile(r"chunk_(\d+)\.parquet$")
    _AUTOSAVE_RE = re.compile(r"autosave_(\d+)\.parquet$")

    def __init__(
        self,
        folder: str | Path,
        checkpoint_every: int = 50,
        autosave_every: int = 100,
        keep: int = 3,
    ) -> None:
        if checkpoint_every < 1 or autosave_every < 1 or keep < 1:
            raise ValueError("checkpoint_every, autosave_every and keep must be >= 1")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.folder)
        self.checkpoint_every = checkpoint_every
        self.autosave_every = autosave_every
        self.keep = keep
        self.records: list[dict[str, Any]] = []
        self._pending: list[dict[str, Any]] = []
        self._since_autosave = 0
        self._next_chunk = 0

    # -- loading ---------------------------------------------------------------
    def _sorted(self, regex: re.Pattern[str]) -> list[tuple[int, Path]]:
        found = []
        for path in self.folder.iterdir():
            match = regex.search(path.name)
            if match:
                found.append((int(match.group(1)), path))
        return sorted(found)

    @staticmethod
    def _read(path: Path) -> list[dict[str, Any]] | None:
        try:
            return pd.read_parquet(path).to_dict("records")
        except Exception as exc:  # a truncated or corrupt file is skipped, not fatal
            logger.warning("skipping unreadable checkpoint %s (%s)", path.name, exc)
            return None

    def load(self) -> list[dict[str, Any]]:
        """Restore the records of an earlier, interrupted run (empty when none)."""
        records: list[dict[str, Any]] = []
        base_chunk = -1
        for _, path in reversed(self._sorted(self._AUTOSAVE_RE)):
            loaded = self._read(path)
            if loaded is not None:
                records = loaded
                base_chunk = self._autosave_last_chunk(path)
                break
        chunks = self._sorted(self._CHUNK_RE)
        for seq, path in chunks:
            if seq <= base_chunk:
                continue
            loaded = self._read(path)
            if loaded is not None:
                records.extend(loaded)
        self._next_chunk = (chunks[-1][0] + 1) if chunks else base_chunk + 1
        self.records = records
        self._pending = []
        self._since_autosave = 0
        return list(records)

    def _autosave_last_chunk(self, path: Path) -> int:
        marker = path.with_suffix(".lastchunk")
        try:
            return int(marker.read_text())
        except (OSError, ValueError):
            return -1

    # -- saving ----------------------------------------------------------------
    def add(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        self._pending.append(record)
        self._since_autosave += 1
        if len(self._pending) >= self.checkpoint_every:
            self._write_chunk()
        if self._since_autosave >= self.autosave_every:
            self._autosave()

    def flush(self) -> None:
        """Checkpoint whatever is pending (call at the end of a run)."""
        if self._pending:
            self._write_chunk()

    def _write_chunk(self) -> None:
        path = self.folder / f"chunk_{self._next_chunk:06d}.parquet"
        write_parquet(pd.DataFrame(self._pending), path)
        self._next_chunk += 1
        self._pending = []

    def _autosave(self) -> None:
        self.flush()
        last_chunk = self._next_chunk - 1
        path = self.folder / f"autosave_{len(self.records):08d}.parquet"
        # The marker goes first: an autosave without its marker covers no chunk (-1),
        # so at worst records are read twice and de-duplicated by the caller's key.
        atomic_write_text(path.with_suffix(".lastchunk"), str(last_chunk))
        write_parquet(pd.DataFrame(self.records), path)
        self._since_autosave = 0
        autosaves = self._sorted(self._AUTOSAVE_RE)
        for _, old in autosaves[: -self.keep]:
            old.unlink(missing_ok=True)
            old.with_suffix(".lastchunk").unlink(missing_ok=True)
        for seq, chunk in self._sorted(self._CHUNK_RE):
            if seq <= last_chunk:
                chunk.unlink(missing_ok=True)

    def clear(self) -> None:
        """Remove every checkpoint file (after the final outputs are written)."""
        for path in self.folder.iterdir():
            if self._CHUNK_RE.search(path.name) or self._AUTOSAVE_RE.search(path.name) or path.suffix == ".lastchunk":
                path.unlink(missing_ok=True)
        if not any(self.folder.iterdir()):
            self.folder.rmdir()
