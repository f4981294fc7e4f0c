"""Gated hub models (Gemma, Llama presets): one line naming the licence page and how to give a token, exit 2.

Offline: HF_HOME points at an empty folder and no token is set, as on a new
machine; the hub is never reached (the refusal comes before any download).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch
import transformers
from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

from common.errors import PipelineError
from common.modeling.models import check_gated_access, load_model_and_tokenizer
from tests.helpers import REPO_ROOT

GATED = "google/gemma-2-2b"  # the gemma-2-2b preset's hub id
TOKEN_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_HUB_CACHE", "HF_OIDC_RESOURCE")


def _no_token_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in TOKEN_VARS}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1")
    return env


@pytest.fixture
def empty_hub_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This process sees an empty HF cache and no token."""
    import huggingface_hub.constants as constants

    home = tmp_path / "hf_home"
    for name in TOKEN_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    return home


def _refusal(*args: str, tmp_path: Path, script: str = "run.py") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO_ROOT / script), *args], capture_output=True, text=True,
                          cwd=REPO_ROOT, env=_no_token_env(tmp_path), timeout=180)


@pytest.mark.parametrize("script,args", [
    ("run.py", ["phase", "1", "--model", "gemma-2-2b"]),
    ("run.py", ["phase", "1.2", "--model", "llama-3.1-8b", "--layers", "3"]),
    ("multi_gpu_launcher.py", ["--phase", "1", "--model", "gemma-2-2b-it", "--gpus", "1"]),
])
def test_gated_preset_without_token_is_one_line_and_writes_nothing(tmp_path, script, args):
    data = tmp_path / "data"
    out = _refusal(*args, "--data-dir", str(data), tmp_path=tmp_path, script=script)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()  # the log's INFO lines (the preset chosen) may come first
    line = lines[-1]
    assert [x for x in lines if "error" in x.lower()] == [line] and line.startswith("error: ") and "gated model" in line
    hub_id = {"gemma-2-2b": "google/gemma-2-2b", "llama-3.1-8b": "meta-llama/Llama-3.1-8B",
              "gemma-2-2b-it": "google/gemma-2-2b-it"}[args[args.index("--model") + 1]]
    assert f"https://huggingface.co/{hub_id} " in line and "hf auth login" in line and "HF_TOKEN" in line
    assert not data.exists()
    assert not (tmp_path / "hf_home").exists() or not any((tmp_path / "hf_home").rglob("*.json"))


def test_check_passes_with_a_token_a_cached_copy_or_a_model_not_known_gated(empty_hub_home, monkeypatch, tmp_path):
    with pytest.raises(PipelineError, match="not in the local Hugging Face cache, and no token"):
        check_gated_access(GATED)
    check_gated_access("someone/ungated-model")  # not a gated preset's id: the hub decides when it is loaded
    check_gated_access(str(tmp_path))  # a local folder
    # A copy in the cache, laid out as huggingface_hub writes it, is enough offline.
    repo = empty_hub_home / "hub" / "models--google--gemma-2-2b"
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    check_gated_access(GATED)
    with pytest.raises(PipelineError, match="google/gemma-2-9b"):
        check_gated_access("google/gemma-2-9b")
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    check_gated_access("google/gemma-2-9b")


def _hub_refusal(exc: Exception):
    def refuse(*_args, **_kwargs):
        raise exc
    return refuse


def _response(status: int) -> httpx.Response:
    url = f"https://huggingface.co/{GATED}/resolve/main/config.json"
    return httpx.Response(status, request=httpx.Request("GET", url))


@pytest.mark.parametrize("exc", [
    GatedRepoError(f"Access to model {GATED} is restricted.", response=_response(403)),
    RepositoryNotFoundError("401 Client Error: Repository Not Found", response=_response(401)),
])
def test_hub_refusal_at_load_time_is_one_line_with_the_licence_page(tiny_model_dir, monkeypatch, exc):
    """A refusal while loading the weights (the tokenizer and config came from elsewhere) becomes the same line."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_model_dir)
    config = transformers.AutoConfig.from_pretrained(tiny_model_dir)  # read first, to choose the attention kernel
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: tokenizer)
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", lambda *a, **k: config)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", _hub_refusal(exc))
    with pytest.raises(PipelineError) as err:
        load_model_and_tokenizer(GATED, torch.device("cpu"), torch.float32)
    message = str(err.value)
    assert "\n" not in message and "refused by the Hugging Face hub" in message
    assert f"https://huggingface.co/{GATED} " in message and "hf auth login" in message and "HF_TOKEN" in message


def test_repository_not_found_without_401_is_not_called_gated(monkeypatch):
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained",
                        _hub_refusal(RepositoryNotFoundError("404 Client Error", response=_response(404))))
    with pytest.raises(PipelineError) as err:
        load_model_and_tokenizer("someone/typo-model", torch.device("cpu"), torch.float32)
    assert "neither a local folder nor a model id" in str(err.value) and "licence" not in str(err.value)


def test_hub_refusal_at_the_config_read_is_the_same_line(tiny_model_dir, monkeypatch):
    """The config is read before the weights (to choose the attention kernel): a refusal there is the same line."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_model_dir)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: tokenizer)
    refusal = GatedRepoError(f"Access to model {GATED} is restricted.", response=_response(403))
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", _hub_refusal(refusal))
    with pytest.raises(PipelineError) as err:
        load_model_and_tokenizer(GATED, torch.device("cpu"), torch.float32)
    message = str(err.value)
    assert "\n" not in message and "refused by the Hugging Face hub" in message and "HF_TOKEN" in message
