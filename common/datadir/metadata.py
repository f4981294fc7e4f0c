"""The ``*_metadata.json`` every phase writes beside its outputs.

Why: a number in a thesis must be traceable to the exact config, inputs
(by hash), code (git commit), package versions, model and SAE ids and seed
that produced it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common.config import PipelineConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
TRACKED_PACKAGES = (
    "torch", "transformers", "accelerate", "sae-lens", "transformer-lens", "datasets",
    "pandas", "pyarrow", "numpy", "scipy", "scikit-learn", "radon", "tokenizers",
)


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def describe_input(path: str | Path) -> dict[str, Any]:
    """Path and hash of an input; a folder is hashed over its sorted file names and sizes."""
    p = Path(path)
    if p.is_file():
        return {"path": str(p), "sha256": file_sha256(p), "bytes": p.stat().st_size}
    if p.is_dir():
        digest = hashlib.sha256()
        files = sorted(f for f in p.rglob("*") if f.is_file())
        for f in files:
            digest.update(f"{f.relative_to(p)}:{f.stat().st_size}\n".encode())
        return {"path": str(p), "listing_sha256": digest.hexdigest(), "files": len(files)}
    return {"path": str(p), "missing": True}


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    versions["python"] = platform.python_version()
    return versions


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=5,
    )
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


CLEAR_REFS = Path("/proc/self/clear_refs")
PROC_STATUS = Path("/proc/self/status")


def _reset_peak_rss() -> bool:
    """Start a fresh resident-set peak for this process (Linux: ``clear_refs`` 5 resets VmHWM); False where it cannot."""
    try:
        CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """The process's peak resident set in MB: VmHWM where /proc has it, else ``ru_maxrss`` (KB on Linux)."""
    try:
        for line in PROC_STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cuda_ready() -> Any:
    """torch, when this process has already imported it and started CUDA (never imports it: Phase 0 runs without)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch
    return None


class RunClock:
    """Wall time and peak memory of a phase, from construction to ``elapsed()`` / ``resources()``.

    Why a reset at the start: a process that runs several phases (the demo,
    the tests) would otherwise report the largest phase's peak for every later
    one. ``run.py`` and the sweep run each phase in its own process, where the
    peak is the phase's either way. torch's tensors live in the process's
    resident set, so the RSS peak counts them (tracemalloc would not).
    """

    def __init__(self) -> None:
        self.started_at = datetime.now(UTC).isoformat()
        self._t0 = time.perf_counter()
        self._peak_reset = _reset_peak_rss()
        torch = _cuda_ready()
        if torch is not None:
            torch.cuda.reset_peak_memory_stats()

    def elapsed(self) -> float:
        return time.perf_counter() - self._t0

    def resources(self) -> dict[str, Any]:
        """Wall time, this process's peak RSS, and the CUDA peak.

        No figure for child processes: Linux gives a forked child the parent's
        resident-set peak at the fork, so ``RUSAGE_CHILDREN`` reported this
        process's own peak again (5,837.2 MB both ways in a SmolLM2 Phase 1),
        not what the test programs used.
        """
        torch = _cuda_ready()
        return {
            "wall_time_s": round(self.elapsed(), 3),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "peak_rss_scope": "since the phase started" if self._peak_reset else "since the process started",
            "cuda_peak_allocated_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch is not None else None,
        }


def build_metadata(
    phase: str,
    cfg: PipelineConfig,
    clock: RunClock,
    inputs: Mapping[str, str | Path] | None = None,
    outputs: Mapping[str, str | Path] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "phase": phase,
        "config": cfg.to_dict(),
        "inputs": {k: describe_input(v) for k, v in (inputs or {}).items()},
        "outputs": {k: str(v) for k, v in (outputs or {}).items()},
        "seed": cfg.seed,
        "git_commit": git_commit(),
        "packages": package_versions(),
        "started_at": clock.started_at,
        **clock.resources(),
        **(extra or {}),
    }
