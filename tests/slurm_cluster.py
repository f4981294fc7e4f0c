"""A real single-node SLURM for the tests, started by ``.ci/start_slurm.sh`` (or skipped, with why)."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from tests.helpers import REPO_ROOT

START_SCRIPT = REPO_ROOT / ".ci" / "start_slurm.sh"
_state: dict[str, str | None] = {}


def slurm_or_skip() -> None:
    """Start (or find) the test cluster once per session; skip the calling test when it cannot be had."""
    if "why" not in _state:
        try:
            env = {**os.environ, "PVA_SLURM_NO_INSTALL": "1"}  # installing is .ci/run's job, not a test's
            out = subprocess.run(["bash", str(START_SCRIPT)], capture_output=True, text=True, timeout=300, env=env)
            _state["why"] = None if out.returncode == 0 else (out.stderr.strip().splitlines() or ["no reason given"])[-1]
        except (OSError, subprocess.TimeoutExpired) as exc:
            _state["why"] = f"{type(exc).__name__}: {exc}"
    if _state["why"]:
        pytest.skip(f"no SLURM cluster: {_state['why']}")


def squeue_state(job_id: str) -> str | None:
    out = subprocess.run(["squeue", "--noheader", "--array", "--states=all", "--format=%i|%T"],
                         capture_output=True, text=True, timeout=60).stdout
    for line in out.splitlines():
        jid, _, state = line.partition("|")
        if jid.strip() == job_id:
            return state.strip()
    return None


def wait_for(predicate, timeout: float, what: str, poll: float = 0.5):
    """Poll ``predicate`` until it returns something truthy; fail the test naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
