"""Where every phase reads and writes: the data directory, phase folders, discovery.

Why discovery by timestamp in the *name* (not mtime): copying a data directory
(rsync, scp) changes mtimes but not names, and "the newest output of phase N"
must not change when a user moves their results between machines.
"""

from __future__ import annotations

import errno
import json
import re
from datetime import datetime
from pathlib import Path

from common.errors import PipelineError
from common.phases import PHASES

# Derived from the phase registry (common/phases.py): phase key -> its folder, and the command that fills it.
PHASE_DIRS: dict[str, str] = {p.key: p.folder for p in PHASES}
# The command a user runs to produce each phase's outputs; named in "missing input" errors.
PHASE_COMMANDS: dict[str, str] = {p.key: p.command for p in PHASES}

# The file that says "the pipeline writes here": written when the pipeline first
# writes into a data directory; clean_data.py refuses a directory without it.
DATA_DIR_MARKER = ".pva_sae_data_dir"

# `run.py label`'s default output folder inside a data directory: a folder no phase reads.
LABELS_DIR = "labels"

# Every top-level entry the pipeline itself creates in a data directory (clean_data.py
# removes these and nothing else): the phase folders, HumanEval's benchmark folder,
# the sweep's state and per-model data directories, the demo's cache, label outputs.
PIPELINE_ENTRIES: tuple[str, ...] = (*PHASE_DIRS.values(), "humaneval", "sweep", "study", "models", "demo", LABELS_DIR)

TIMESTAMP_FORMAT = "%Y%m%d_%H%M%S_%f"
_TIMESTAMP_RE = re.compile(r"(\d{8}_\d{6}_\d{6})")


def timestamp(now: datetime | None = None) -> str:
    """A sortable timestamp with microseconds, so two runs in one second never collide."""
    return (now or datetime.now()).strftime(TIMESTAMP_FORMAT)


def mark_data_dir(data_dir: str | Path) -> Path:
    """Create ``data_dir`` if needed and leave the marker that the pipeline writes there (once).

    Why: ``clean_data.py`` must be able to tell a data directory from any other
    folder (a checkout, a home directory); it deletes only inside marked ones.
    The marker is written with a plain ``open`` (so it follows the umask) and
    never rewritten, so its creation time is when the pipeline first wrote there.
    """
    folder = Path(data_dir)
    if folder.exists() and not folder.is_dir():  # mkdir would say "File exists", which misleads
        raise NotADirectoryError(errno.ENOTDIR, "Not a directory", str(folder))
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / DATA_DIR_MARKER
    if not marker.exists():
        note = {
            "what": "PVA-SAE data directory: clean_data.py may delete the pipeline's own entries here",
            "created": datetime.now().isoformat(timespec="seconds"),
            "pipeline_entries": list(PIPELINE_ENTRIES),
        }
        try:
            with open(marker, "x", encoding="utf-8") as handle:
                handle.write(json.dumps(note, indent=2) + "\n")
        except FileExistsError:  # another process marked it first
            pass
    return folder


def is_data_dir(folder: str | Path) -> bool:
    """Whether the pipeline has written into ``folder`` (it holds the marker as a regular file)."""
    marker = Path(folder) / DATA_DIR_MARKER
    return marker.is_file() and not marker.is_symlink()


def enclosing_data_dir(path: str | Path) -> Path | None:
    """The data directory ``path`` lies in: the nearest marked folder above it, or the folder above a phase folder.

    Why the second rule: a data directory written before the marker existed
    still has its phase folders, and a file inside one must be recognised.
    """
    here = Path(path).resolve()
    for folder in here.parents:
        if is_data_dir(folder):
            return folder
        if folder.name in PHASE_DIRS.values() and folder.parent != folder:
            return folder.parent
    return None


def pipeline_folder(data_dir: str | Path, name: str) -> Path:
    """A top-level pipeline folder (``sweep``, ``demo``, ``labels``...) of a data directory, created and marked."""
    if name not in PIPELINE_ENTRIES:
        raise ValueError(f"{name!r} is not declared in PIPELINE_ENTRIES")
    path = mark_data_dir(data_dir) / name
    path.mkdir(exist_ok=True)
    return path


def phase_dir(data_dir: str | Path, phase: str, create: bool = True) -> Path:
    """The folder of one phase under the data directory (creating it marks the data directory)."""
    if phase not in PHASE_DIRS:
        raise PipelineError(f"unknown phase {phase!r}; known: {', '.join(PHASE_DIRS)}")
    path = Path(data_dir) / PHASE_DIRS[phase]
    if create:
        mark_data_dir(data_dir)
        path.mkdir(exist_ok=True)
    return path


def name_timestamp(path: Path) -> str | None:
    match = _TIMESTAMP_RE.search(path.name)
    return match.group(1) if match else None


def require_file(path: Path, phase: str) -> Path:
    """An output of an earlier phase with a fixed name; error naming the command if absent."""
    if not path.exists():
        raise PipelineError(
            f"missing {path}; run `{PHASE_COMMANDS[phase]}` first"
        )
    return path
