#!/usr/bin/env python3
"""Reset a data directory: list what would go, ask, then delete the pipeline's own entries.

    python3 clean_data.py            # lists, then asks for confirmation
    python3 clean_data.py --force    # no question
    python3 clean_data.py --dry-run  # lists only

What is safe to delete, and why (docs/data-safety.md):
- Only a directory the pipeline has written into is touched: it holds the
  marker ``common.datadir.paths.DATA_DIR_MARKER``, written when the pipeline first
  writes there. Any other directory (a checkout, a home directory, ``/``) is
  refused in one line and nothing is read below it.
- Inside it, only the entries the pipeline creates
  (``common.datadir.paths.PIPELINE_ENTRIES``: the phase folders, ``humaneval``,
  ``sweep``, ``models``, ``demo``, ``labels``) are removed; every other entry
  is listed as kept and left alone. The marker stays.
- Every phase folder's lock (``common.datadir.locking``) is taken before anything is
  deleted; while any phase holds one, nothing is deleted.
- A symlink is removed as a link, never followed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from common.datadir import DATA_DIR_MARKER, LOCK_NAME, PIPELINE_ENTRIES, exclusive_all, holder_of, is_data_dir
from common.errors import PipelineError
from common.phases import PHASES


def _size(path: Path) -> int | None:
    """Bytes under ``path`` (links counted as links); None when part of it cannot be read."""
    try:
        if path.is_symlink() or path.is_file():
            return path.lstat().st_size
        return sum(f.lstat().st_size for f in path.rglob("*") if f.is_file() or f.is_symlink())
    except OSError:
        return None


def split_entries(data_dir: Path) -> tuple[list[Path], list[Path]]:
    """(the pipeline's own top-level entries, every other entry), each checked to lie directly inside ``data_dir``."""
    root = data_dir.resolve()
    own, foreign = [], []
    for entry in sorted(data_dir.iterdir()):
        if entry.parent.resolve() != root:
            raise PipelineError(f"refusing: {entry} is not inside {root}")
        if entry.name in PIPELINE_ENTRIES:
            own.append(entry)
        elif entry.name != DATA_DIR_MARKER:
            foreign.append(entry)
    return own, foreign


def _real_dirs(paths: list[Path]) -> list[Path]:
    return [p for p in paths if p.is_dir() and not p.is_symlink()]


def lock_folders(data_dir: Path, own: list[Path]) -> list[Path]:
    """Every folder whose lock a run may hold: each data directory's phase folders, and any folder with a lock file.

    The nested data directories are HumanEval's (``humaneval``) and the sweep's
    per-model ones (``models/<name>``); links (the sweep's shared phase folders)
    are not followed, their targets are locked where they live.
    """
    roots = [data_dir, data_dir / "humaneval", *_real_dirs(sorted((data_dir / "models").glob("*")))]
    folders = _real_dirs([root / name for root in _real_dirs(roots) for name in (p.folder for p in PHASES)])
    for entry in _real_dirs(own):
        folders.extend(lock.parent for lock in entry.rglob(LOCK_NAME) if not lock.is_symlink())
    unique: dict[Path, Path] = {}
    for folder in folders:
        unique.setdefault(folder.resolve(), folder)
    return list(unique.values())


def running(folders: list[Path]) -> str | None:
    """One line naming a held lock, or None when no run holds any."""
    for folder in folders:
        holder = holder_of(folder / LOCK_NAME)
        if holder is not None:
            return f"a run holds the lock on {folder} ({holder}); wait for it to finish"
    return None


def delete(entry: Path) -> None:
    if entry.is_symlink() or entry.is_file():
        entry.unlink()
    else:
        shutil.rmtree(entry)


def _human(n_bytes: int | None) -> str:
    if n_bytes is None:
        return "size unknown: not all readable"
    n = float(n_bytes)
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _confirmed() -> bool:
    try:
        answer = input("delete all of this? [y/N] ")
    except (EOFError, RuntimeError):  # stdin at its end or closed (a pipe, CI, <&-): never delete without a yes
        answer = ""
    return answer.strip().lower() in ("y", "yes")


def clean(data_dir: Path, force: bool, dry_run: bool) -> int:
    if not data_dir.exists():
        print(f"nothing to clean: {data_dir} does not exist")
        return 0
    if not data_dir.is_dir():
        raise PipelineError(f"{data_dir} is not a directory")
    if not is_data_dir(data_dir):
        raise PipelineError(
            f"refusing: {data_dir} is not a PVA-SAE data directory (no {DATA_DIR_MARKER}, which the pipeline "
            "writes when it first writes there); nothing deleted"
        )
    own, foreign = split_entries(data_dir)
    for entry in foreign:
        print(f"  kept (not written by the pipeline): {entry}")
    if not own:
        print(f"nothing to clean: {data_dir} holds no pipeline output")
        return 0
    folders = lock_folders(data_dir, own)
    busy = running(folders)
    if busy:
        raise PipelineError(f"refusing: {busy}; nothing deleted")
    sizes = [_size(entry) for entry in own]
    for entry, size in zip(own, sizes, strict=True):
        print(f"  {entry}  ({_human(size)})")
    total = None if None in sizes else sum(s for s in sizes if s is not None)
    print(f"{len(own)} entries, {_human(total)} in {data_dir.resolve()}" + (f"; {len(foreign)} other entries kept" if foreign else ""))
    if dry_run:
        print("dry run: nothing deleted")
        return 0
    if not force and not _confirmed():
        print("aborted: nothing deleted")
        return 1
    with exclusive_all(folders, "clean_data.py"):  # a phase started since the check is refused, or refuses us
        for entry in own:
            delete(entry)
    print(f"deleted {len(own)} entries from {data_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.environ.get("PVA_DATA_DIR", "data"), help="data directory (default ./data, env PVA_DATA_DIR)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--force", action="store_true", help="delete without asking")
    mode.add_argument("--dry-run", action="store_true", help="only list what would be deleted")
    args = parser.parse_args(argv)
    try:
        return clean(Path(args.data_dir), args.force, args.dry_run)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an unreadable folder, a file removed under us
        where = f": {exc.filename}" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}; stopped", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
