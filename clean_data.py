#!/usr/bin/env python3
"""Reset the data directory: list what would go, ask, then delete.

    python3 clean_data.py            # lists, then asks for confirmation
    python3 clean_data.py --force    # no question
    python3 clean_data.py --dry-run  # lists only

Only the contents of the data directory are ever touched: each path is
resolved (symlinks followed) and must lie inside the resolved data directory;
a symlink inside it is removed as a link, never followed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path


def _size(path: Path) -> int:
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    return sum(f.lstat().st_size for f in path.rglob("*") if f.is_file() or f.is_symlink())


def entries_to_delete(data_dir: Path) -> list[Path]:
    """Top-level entries of the data directory (each checked to be inside it)."""
    root = data_dir.resolve()
    entries = []
    for entry in sorted(data_dir.iterdir()):
        parent = entry.parent.resolve()
        if parent != root:
            raise RuntimeError(f"refusing: {entry} is not inside {root}")
        entries.append(entry)
    return entries


def delete(entry: Path) -> None:
    if entry.is_symlink() or entry.is_file():
        entry.unlink()
    else:
        shutil.rmtree(entry)


def _human(n_bytes: int) -> str:
    n = float(n_bytes)
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.environ.get("PVA_DATA_DIR", "data"), help="data directory (default ./data, env PVA_DATA_DIR)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--force", action="store_true", help="delete without asking")
    mode.add_argument("--dry-run", action="store_true", help="only list what would be deleted")
    args = parser.parse_args(argv)

    data_dir = Path(args.data_dir)
    if not data_dir.exists():
        print(f"nothing to clean: {data_dir} does not exist")
        return 0
    if not data_dir.is_dir():
        print(f"error: {data_dir} is not a directory", file=sys.stderr)
        return 2
    entries = entries_to_delete(data_dir)
    if not entries:
        print(f"nothing to clean: {data_dir} is empty")
        return 0
    total = 0
    for entry in entries:
        size = _size(entry)
        total += size
        print(f"  {entry}  ({_human(size)})")
    print(f"{len(entries)} entries, {_human(total)} in {data_dir.resolve()}")
    if args.dry_run:
        print("dry run: nothing deleted")
        return 0
    if not args.force:
        try:
            answer = input("delete all of this? [y/N] ")
        except (EOFError, RuntimeError):  # stdin at its end or closed (a pipe, CI, <&-): never delete without a yes
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            print("aborted: nothing deleted")
            return 1
    for entry in entries:
        delete(entry)
    print(f"deleted {len(entries)} entries from {data_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
