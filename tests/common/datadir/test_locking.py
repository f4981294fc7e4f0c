"""One run per phase folder: a second is refused in one line; a SIGKILLed holder leaves no stale lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from common.datadir import LOCK_NAME, exclusive
from common.errors import PipelineError
from tests.helpers import REPO_ROOT

HOLD = (
    "import sys, time; from common.datadir.locking import exclusive\n"
    "with exclusive(sys.argv[1], 'phase 0'):\n    print('held', flush=True); time.sleep(120)\n"
)


def _holder(folder):
    # python -c puts the working directory first on sys.path, so the repository root finds common/.
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_second_holder_refused_and_kill_releases(tmp_path):
    folder = tmp_path / "phase0"
    proc = _holder(folder)
    try:
        with pytest.raises(PipelineError, match=rf"phase 0 is already running on .*phase0 \(pid {proc.pid}\)"):
            with exclusive(folder, "phase 0"):
                pass
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with exclusive(folder, "phase 0") as path:  # the kernel released it with the process
            assert path == folder / LOCK_NAME
            assert path.read_text() == f"pid {os.getpid()}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_refuses_a_second_run_in_one_line(tmp_path):
    proc = _holder(tmp_path / "phase0")
    try:
        out = subprocess.run(
            [sys.executable, str(REPO_ROOT / "run.py"), "phase", "0", "--data-dir", str(tmp_path),
             "--mbpp-path", str(REPO_ROOT / "demo" / "problems.jsonl")],
            capture_output=True, text=True, timeout=120,
        )
    finally:
        proc.kill()
        proc.wait()
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"error: phase 0 is already running on {tmp_path / 'phase0'} (pid {proc.pid}); wait for it to finish"
    ]
    assert not list((tmp_path / "phase0").glob("difficulty_*"))
