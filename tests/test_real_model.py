"""Slow tier: Phases 0, 0.1 and 1 with a real pretrained model on real MBPP tasks.

Why: a tiny random model never writes what real models write (docstrings,
imports in try blocks, prose, half-finished second attempts), and it is a
Gemma-2; SmolLM2-135M-Instruct (from PyPI, converted from GGUF) is a trained
Llama. Kept to a few tasks and a short token budget: about a minute or two on
two cores.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import phase0_1_splitting
import phase0_difficulty
import phase1_0_generation
from common.config import PipelineConfig
from common.datadir import activation_path
from common.modeling.models import decoder_layers, load_model_and_tokenizer, num_layers
from common.sandbox.executor import build_program
from tests.helpers import REAL_MBPP, requires_real_mbpp

pytestmark = [pytest.mark.slow, requires_real_mbpp]

N_TASKS = 8
MAX_NEW_TOKENS = 96


@pytest.fixture(scope="module")
def phase1_run(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[PipelineConfig, pd.DataFrame]:
    cfg = PipelineConfig(
        data_dir=str(tmp_path_factory.mktemp("smollm2_run")), mbpp_path=str(REAL_MBPP), model=str(smollm2_dir),
        device="cpu", start=0, end=N_TASKS - 1, max_new_tokens=MAX_NEW_TOKENS, batch_size=N_TASKS, workers=2,
        timeout_s=10.0,
    )
    phase0_difficulty.run(cfg)
    split_dir = phase0_1_splitting.run(cfg)
    sizes = [len(pd.read_parquet(split_dir / f"{name}_mbpp.parquet")) for name in ("sae", "hyperparams", "validation")]
    assert sum(sizes) == 974 and min(sizes) > 0
    return cfg, pd.read_parquet(phase1_0_generation.run(cfg))


def test_model_is_the_real_llama(smollm2_dir: Path) -> None:
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 30 and config["hidden_size"] == 576


def test_capture_is_each_decoder_layers_output(phase1_run) -> None:
    """The saved vector of layer L is the output of Llama decoder layer L at the last prompt token."""
    cfg, df = phase1_run
    model, tokenizer = load_model_and_tokenizer(cfg.model, torch.device("cpu"), torch.float32)
    n = num_layers(model)
    row = df.iloc[0]
    outputs: dict[int, torch.Tensor] = {}

    def keep(layer: int):
        def hook(_module, _args, output):
            outputs[layer] = (output[0] if isinstance(output, tuple) else output)[0, -1].detach().clone()
        return hook

    handles = [layer.register_forward_hook(keep(i)) for i, layer in enumerate(decoder_layers(model))]
    try:
        with torch.no_grad():
            hidden = model(tokenizer(row.prompt, return_tensors="pt")["input_ids"], output_hidden_states=True).hidden_states
    finally:
        for handle in handles:
            handle.remove()
    label = "correct" if row.passed else "incorrect"
    acts = Path(cfg.data_dir) / "phase1_0" / "activations"
    for layer in range(n):
        saved = np.load(activation_path(acts, int(row.task_id), layer, label))["activation"]
        assert saved.shape == (576,) and saved.dtype == np.float32
        # Batched and left-padded in Phase 1, unpadded here: equal up to float noise.
        np.testing.assert_allclose(saved, outputs[layer].numpy(), atol=2e-3, rtol=2e-3)
        if layer < n - 1:
            np.testing.assert_allclose(saved, hidden[layer + 1][0, -1].numpy(), atol=2e-3, rtol=2e-3)
    # hidden_states[-1] has the final norm: it is not the last layer's output.
    assert not np.allclose(hidden[n][0, -1].numpy(), outputs[n - 1].numpy(), atol=1e-2)


def test_every_generation_with_a_def_gives_a_program(phase1_run) -> None:
    _, df = phase1_run
    assert len(df) == N_TASKS
    with_def = df[df["generated_text"].str.contains(r"\bdef ", regex=True)]
    assert len(with_def) > 0
    for row in with_def.itertuples():
        assert row.extracted_code.strip(), (row.task_id, row.generated_text)
        assert row.outcome != "no_code"


def test_labels_agree_with_running_the_program_by_hand(phase1_run, tmp_path: Path) -> None:
    """Each label is what plain ``python program.py`` says (exit 0 = every assert passed)."""
    cfg, df = phase1_run
    mbpp = {json.loads(line)["task_id"]: json.loads(line) for line in REAL_MBPP.read_text().splitlines() if line}
    for row in df.itertuples():
        problem = mbpp[int(row.task_id)]
        script = tmp_path / f"task_{row.task_id}.py"
        script.write_text(build_program(row.extracted_code, problem["test_setup_code"], problem["test_list"]))
        by_hand = subprocess.run([sys.executable, script.name], cwd=tmp_path, capture_output=True, timeout=30)
        assert (by_hand.returncode == 0) == bool(row.passed), (row.task_id, row.outcome, by_hand.stderr[-300:])
        # The raw generation up to its closing fence, run as the model wrote it (its own prints and
        # asserts included): if that passes the task's asserts, extraction must not have lost the pass.
        raw = row.generated_text.split("\n```", 1)[0]
        script.write_text(build_program(raw, problem["test_setup_code"], problem["test_list"]))
        as_written = subprocess.run([sys.executable, script.name], cwd=tmp_path, capture_output=True, timeout=30)
        if as_written.returncode == 0:
            assert row.passed, (row.task_id, row.outcome, row.generated_text)


def test_stopping_early_never_changes_the_program_on_real_generations(phase1_run) -> None:
    """Generate the same prompts with no stop sequence, then cut where generation would have stopped."""
    from common.modeling.generation import GenerationConfig, generate_batches
    from common.prompts import STOP_SEQUENCES, extract_code

    cfg, df = phase1_run
    model, tokenizer = load_model_and_tokenizer(cfg.model, torch.device("cpu"), torch.float32)
    gen_cfg = GenerationConfig(max_new_tokens=MAX_NEW_TOKENS, batch_size=N_TASKS, stop_sequences=())
    results = [r for batch in generate_batches(model, tokenizer, list(df["prompt"]), [], gen_cfg) for r in batch]
    stopped = 0
    for result in results:
        full = result.generated_text
        text = "\n" + full  # the prompt ends with a newline: a stop may start there
        ends = [text.find(s) + len(s) for s in STOP_SEQUENCES if s in text]
        if not ends:
            continue
        stopped += 1
        truncated = text[1 : min(ends)]
        assert extract_code(truncated) == extract_code(full), (result.index, full)
    assert stopped >= N_TASKS // 2  # real output runs into a stop sequence most of the time


def test_converted_folder_computes_what_the_gguf_model_computes(smollm2_dir: Path) -> None:
    """The saved folder is the GGUF model, not a re-initialised one: same logits on an MBPP prompt."""
    import transformers

    from common.modeling.gguf_convert import find_smollm2_gguf

    gguf = find_smollm2_gguf()
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    model, tokenizer = load_model_and_tokenizer(str(smollm2_dir), torch.device("cpu"), torch.float32)
    ids = tokenizer("def add(a, b):\n    return", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected, got = reference(ids).logits, model(ids).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert tokenizer.decode(got[0, -1].argmax()) == tokenizer.decode(expected[0, -1].argmax())
