"""What the two-way memory benchmarks share: each way in its own process, its peak RSS, and the ratio line.

Why a process per way: a resident-set peak (VmHWM) is the whole process's,
so two ways measured in one process would report the larger one twice.
Used by ``bench.prefill_padding``, ``bench.decode_padding`` and
``bench.forward_batches``; each runs its own module again with ``--way W``
and prints one JSON line, which :func:`run_ways` reads back.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path


def peak_rss_mb() -> float:
    """This process's resident-set peak so far, in MB (Linux's VmHWM)."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM"))
    return int(line.split()[1]) / 1024


def run_ways(module: str, ways: tuple[str, ...], extra: Callable[[str], list[str]] = lambda way: []) -> dict[str, dict]:
    """Run ``python -m module <this command's arguments> <extra(W)> --way W`` for each way W, in order; their JSON
    results."""
    out = {}
    for way in ways:
        child = subprocess.run([sys.executable, "-m", module, *sys.argv[1:], *extra(way), "--way", way],
                               check=True, capture_output=True, text=True)
        out[way] = json.loads(child.stdout.strip().splitlines()[-1])
    return out


def ratio_line(before: dict, after: dict) -> str:
    """The last line every two-way benchmark prints: peak and time, the old way over the new."""
    return f"peak ratio {before['peak_mb'] / after['peak_mb']:.2f} time ratio {before['wall_s'] / after['wall_s']:.2f}"
