"""Offline, a command that needs the hub fails at once in one line naming what it wanted and the local flag.

Run three ways: with ``HF_HUB_OFFLINE=1`` (what CI sets), with the hub at an
address where nothing listens (the probe must find that out by itself), and
with the environment as it is (here the hub is unreachable; skipped where it
is reachable). The Hugging Face cache is an empty folder, so nothing cached
can answer for the hub.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from common.modeling import hub
from tests.helpers import REPO_ROOT


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when the block ends: connecting is refused


CASES = {
    "phase0_without_mbpp_path": (["phase", "0"], "cannot load MBPP", "--mbpp-path"),
    "check_humaneval_without_a_file": (["check-humaneval"], "cannot load HumanEval", "--humaneval-path"),
    "train_saes_hub_model": (["train-saes", "--model", "org/x", "--corpus", str(REPO_ROOT / "demo" / "general_text.txt")],
                             "cannot reach the Hugging Face hub to load 'org/x'", "local folder"),
    "train_saes_hub_corpus": (["train-saes", "--model", "org/x"], "pile-10k cannot be loaded from the hub", "--corpus"),
}


def _env(tmp_path, how: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_ENDPOINT")}
    env.update(HF_HOME=str(tmp_path / "hf_home"), PVA_DATA_DIR=str(tmp_path / "data"), OMP_NUM_THREADS="1")
    env.pop("PVA_MBPP_PATH", None)
    env.pop("PVA_HUMANEVAL_PATH", None)
    if how == "offline_set":
        env["HF_HUB_OFFLINE"] = "1"
    elif how == "hub_not_listening":
        env["HF_ENDPOINT"] = f"http://127.0.0.1:{_closed_port()}"
    return env


@pytest.mark.parametrize("how", ["offline_set", "hub_not_listening", "as_is"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_offline_is_one_line_naming_the_flag_with_no_retries(tmp_path, case, how):
    if how == "as_is" and hub.hub_reachable():
        pytest.skip("the hub is reachable from here")
    args, what, flag = CASES[case]
    out = subprocess.run(
        [sys.executable, str(REPO_ROOT / "run.py"), *args, *(["--output", str(tmp_path / "saes")] if args[0] == "train-saes" else [])],
        capture_output=True, text=True, timeout=300, env=_env(tmp_path, how), cwd=tmp_path, stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 2, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and what in errors[0] and flag in errors[0], out.stderr
    assert "Traceback" not in out.stderr
    assert not [line for line in out.stderr.splitlines() if "Retry" in line or "WARNING" in line], out.stderr
    assert len(out.stderr.strip().splitlines()) <= 3, out.stderr  # the error, and at most a log-file and a loading line


def test_probe_finds_a_listening_hub_and_a_closed_one(monkeypatch):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert hub.hub_address() == ("127.0.0.1", server.getsockname()[1])
        assert hub.hub_reachable() is True
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    assert hub.hub_reachable() is False


def test_going_offline_reaches_the_libraries_and_ends_with_the_command(monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(name, "0")  # not offline; the original value comes back after the test
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    with hub.offline_if_unreachable() as offline:
        assert offline is True
        assert os.environ["HF_HUB_OFFLINE"] == "1" and huggingface_hub.constants.is_offline_mode()
        assert datasets.config.HF_HUB_OFFLINE is True
    assert os.environ["HF_HUB_OFFLINE"] == "0" and not huggingface_hub.constants.is_offline_mode()
    assert datasets.config.HF_HUB_OFFLINE is False


def test_in_process_run_main_leaves_the_process_as_it_was(tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants

    from run import main

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("PVA_HUMANEVAL_PATH", raising=False)
    assert main(["check-humaneval"]) == 2
    assert "--humaneval-path" in capsys.readouterr().err
    assert "HF_HUB_OFFLINE" not in os.environ and huggingface_hub.constants.HF_HUB_OFFLINE is False
