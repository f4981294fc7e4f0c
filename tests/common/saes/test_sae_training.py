"""``run.py train-saes`` on the tiny local Gemma-2: SAE Lens folders that --sae-path reads, with FVU and L0 per layer."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("sae_lens")

from common.datadir import read_json
from common.errors import PipelineError
from common.saes.loading import SAESource, fraction_of_variance_unexplained, load_sae
from common.saes.training import REPORT_FILENAME, read_corpus_file
from tests.helpers import DEMO_PROBLEMS, REPO_ROOT, interrupt_run_py

GENERAL = REPO_ROOT / "demo" / "general_text.txt"


def test_trainer_writes_one_sae_lens_folder_per_layer(tiny_model, tmp_path):
    """The quick tier: a few SAE Lens training steps per layer, folders and report as --sae-path expects."""
    from common.saes.training import SAETrainingConfig, train_saes

    model, tokenizer = tiny_model
    texts = read_corpus_file(GENERAL) + read_corpus_file(DEMO_PROBLEMS)
    cfg = SAETrainingConfig(d_sae=48, training_tokens=2048, corpus_tokens=3000, batch_size=256)
    folders = train_saes(model, tokenizer, texts, [1, 0], tmp_path, cfg, model_name="tiny")
    assert sorted(folders) == [0, 1]
    report = read_json(tmp_path / REPORT_FILENAME)
    assert 3000 <= report["n_train_tokens"] + report["n_heldout_tokens"] < 3000 + 512
    for layer in (0, 1):
        sae = load_sae(SAESource(local_path=str(tmp_path)), layer)
        assert sae.cfg.metadata.hook_name == f"blocks.{layer}.hook_resid_post"
        assert (int(sae.cfg.d_in), int(sae.cfg.d_sae)) == (model.config.hidden_size, 48)
        assert report["layers"][str(layer)]["heldout_fvu"] is not None


def test_first_token_is_left_out_even_without_a_bos(tiny_model):
    """The SAE never trains on a text's first token, whatever it is.

    Why: SmolLM2's tokenizer adds no BOS, so the old rule (drop ``<bos>``
    only) kept every text's first token, an attention sink whose residual
    norm is many times the others'; those few outliers dominated the
    held-out variance and made the held-out FVU look far better than the
    SAE's fit of ordinary tokens. Token ids without any BOS reproduce that.
    """
    import torch

    from common.saes.training import collect_resid_post, tokenize_texts

    model, tokenizer = tiny_model
    ids = [i for i in tokenizer("def add(a, b): return a + b")["input_ids"] if i != tokenizer.bos_token_id]
    other = [i for i in tokenizer("assert add(1, 2) == 3")["input_ids"] if i != tokenizer.bos_token_id]
    assert len(ids) > 3 and len(other) > 3
    acts, owner = collect_resid_post(model, tokenizer, [ids, other], [0])
    kept_all, owner_all = collect_resid_post(model, tokenizer, [ids, other], [0], skip_first_token=False)
    with torch.no_grad():  # hidden_states[1] is layer 0's output (the last layer's entry would be final-normed)
        hidden = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[1][0]
    torch.testing.assert_close(acts[0][: len(ids) - 1], hidden[1:])
    torch.testing.assert_close(kept_all[0][: len(ids)], hidden)
    assert owner.tolist() == [0] * (len(ids) - 1) + [1] * (len(other) - 1)
    assert owner_all.tolist() == [0] * len(ids) + [1] * len(other)
    # The corpus budget counts the tokens that are trained on: a one-token text contributes none and is left out.
    texts = ["def add(a, b): return a + b", "assert add(1, 2) == 3"]
    first_len = len(tokenizer(texts[0])["input_ids"])
    assert len(tokenize_texts(tokenizer, texts, 512, first_len - 1)) == 1
    assert len(tokenize_texts(tokenizer, texts, 512, first_len)) == 2
    with pytest.raises(PipelineError, match="no text with a token"):
        tokenize_texts(tokenizer, texts, 1, None)  # truncated to one token each: nothing left to train on


def _position_counter(seen: list[int]):
    """A forward pre-hook that appends the number of (row, column) positions each pass computes."""
    def hook(_module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        seen.append(hidden.shape[0] * hidden.shape[1])

    return hook


def test_corpus_pass_batches_by_length_and_keeps_text_order(tiny_model):
    """Texts are batched longest first (little padding) but returned in text order, equal to each text run alone."""
    import torch

    from common.saes.training import collect_resid_post

    model, tokenizer = tiny_model
    texts = ["x = 1", "def add(a, b):\n    return a + b\n" * 6, "y", "assert add(1, 2) == 3", "z = [i for i in range(9)]" * 3]
    encoded = [tokenizer(t)["input_ids"] for t in texts]
    positions: dict[bool, int] = {}
    results = {}
    for sort in (False, True):
        seen: list[int] = []
        handle = model.get_decoder().layers[0].register_forward_pre_hook(_position_counter(seen), with_kwargs=True)
        try:
            results[sort] = collect_resid_post(model, tokenizer, encoded, [0, 1], batch_size=2, sort_by_length=sort)
        finally:
            handle.remove()
        positions[sort] = sum(seen)
    assert positions[True] < positions[False]  # sorted batches compute fewer padded positions
    (unsorted, owner_u), (sorted_, owner_s) = results[False], results[True]
    assert owner_s.tolist() == owner_u.tolist() == [i for i, ids in enumerate(encoded) for _ in ids[1:]]
    for layer in (0, 1):
        torch.testing.assert_close(sorted_[layer], unsorted[layer], atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # each text alone: the reference for its rows
        for i, ids in enumerate(encoded):
            alone = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[1][0][1:]
            torch.testing.assert_close(sorted_[0][owner_s == i], alone, atol=1e-5, rtol=1e-5)


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(REPO_ROOT / "run.py"), *args], capture_output=True, text=True,
                          timeout=300, env=env)


@pytest.mark.slow
def test_train_saes_writes_folders_that_sae_path_reads(tiny_model_dir, tiny_model, tmp_path):
    out = tmp_path / "saes"
    result = _run("train-saes", "--model", str(tiny_model_dir), "--output", str(out), "--layers", "0,1",
                  "--corpus", f"{GENERAL},{DEMO_PROBLEMS}", "--width", "96", "--tokens", "100000", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    report = read_json(out / REPORT_FILENAME)
    assert report["git_commit"] is not None and report["config"]["train_width"] == 96
    assert report["n_train_tokens"] > 0 and report["n_heldout_tokens"] > 0
    model, tokenizer = tiny_model
    for layer in (0, 1):
        entry = report["layers"][str(layer)]
        assert entry["hook_name"] == f"blocks.{layer}.hook_resid_post" and entry["d_sae"] == 96
        assert 0.0 < entry["heldout_fvu"] < 1.0 and 0.0 < entry["heldout_l0"] < 96
        assert f"layer {layer}: d_sae 96, held-out FVU" in result.stdout
        sae = load_sae(SAESource(local_path=str(out)), layer)  # checks the hook name, as Phase 2 does
        assert int(sae.cfg.d_sae) == 96
    # The SAE fits the layer it was trained on better than a random direction-preserving baseline: FVU < 1
    # on fresh text it never saw (the MBPP prompts of the bundled problems, read as prompts alone).
    from common.saes.training import collect_resid_post

    prompts = [t.split("\n")[0] for t in read_corpus_file(DEMO_PROBLEMS)[:8]]
    acts, _ = collect_resid_post(model, tokenizer, prompts, [1])
    sae = load_sae(SAESource(local_path=str(out)), 1)
    assert fraction_of_variance_unexplained(sae, np.asarray(acts[1])) < 1.0

    again = _run("train-saes", "--model", str(tiny_model_dir), "--output", str(out), "--corpus", str(GENERAL))
    assert again.returncode == 2 and "already holds trained SAEs" in again.stderr


@pytest.mark.slow
def test_train_saes_bad_input_is_one_line(tiny_model_dir, tmp_path):
    offline = _run("train-saes", "--model", str(tiny_model_dir), "--output", str(tmp_path / "a"), "--device", "cpu")
    assert offline.returncode == 2
    assert offline.stderr.count("\n") == 1 and "no --corpus given" in offline.stderr and "--corpus FILE" in offline.stderr
    bad_layer = _run("train-saes", "--model", str(tiny_model_dir), "--output", str(tmp_path / "b"), "--layers", "5",
                     "--corpus", str(GENERAL), "--device", "cpu")
    assert bad_layer.returncode == 2 and "out of range" in bad_layer.stderr
    assert not (tmp_path / "b" / REPORT_FILENAME).exists()
    no_output = _run("train-saes", "--model", str(tiny_model_dir), "--corpus", str(GENERAL))
    assert no_output.returncode == 2 and "--output" in no_output.stderr


def test_an_interrupted_training_keeps_finished_layers_and_trains_only_the_rest(tiny_model, tmp_path):
    """A run killed after layer 0 was saved: the rerun keeps layer 0 as it is and trains layer 1 as a fresh run would."""
    import shutil

    from common.saes.training import LAYER_DONE, SAETrainingConfig, train_saes

    model, tokenizer = tiny_model
    texts = read_corpus_file(GENERAL) + read_corpus_file(DEMO_PROBLEMS)
    cfg = SAETrainingConfig(d_sae=48, training_tokens=1024, corpus_tokens=3000, batch_size=256)
    whole = tmp_path / "whole"
    train_saes(model, tokenizer, texts, [0, 1], whole, cfg, model_name="tiny")
    weights = {layer: (whole / f"layer_{layer}" / "sae_weights.safetensors").read_bytes() for layer in (0, 1)}

    cut = tmp_path / "cut"
    shutil.copytree(whole, cut)
    shutil.rmtree(cut / "layer_1")  # killed while layer 1 trained: no report, layer 0 whole with its marker
    (cut / REPORT_FILENAME).unlink()
    kept = (cut / "layer_0" / "sae_weights.safetensors").stat().st_mtime_ns
    train_saes(model, tokenizer, texts, [0, 1], cut, cfg, model_name="tiny")
    assert (cut / "layer_0" / "sae_weights.safetensors").stat().st_mtime_ns == kept  # not written again
    assert (cut / "layer_1" / "sae_weights.safetensors").read_bytes() == weights[1]  # seeded per layer: identical
    assert read_json(cut / REPORT_FILENAME)["layers"]["0"]["heldout_fvu"] == read_json(whole / REPORT_FILENAME)["layers"]["0"]["heldout_fvu"]

    # Other settings: the kept layer is not reused.
    other = SAETrainingConfig(d_sae=40, training_tokens=1024, corpus_tokens=3000, batch_size=256)
    (cut / REPORT_FILENAME).unlink()
    train_saes(model, tokenizer, texts, [0], cut, other, model_name="tiny")
    assert load_sae(SAESource(local_path=str(cut)), 0).cfg.d_sae == 40
    assert read_json(cut / "layer_0" / LAYER_DONE)["key"] != read_json(whole / "layer_0" / LAYER_DONE)["key"]


@pytest.mark.slow
def test_train_saes_after_ctrl_c_resumes_as_it_says(tiny_model_dir, tmp_path):
    """SIGINT while layer 1 trains: exit 130 and a line saying the rerun trains only the rest; the rerun keeps layer 0."""
    out = tmp_path / "saes"
    args = ["train-saes", "--model", str(tiny_model_dir), "--output", str(out), "--layers", "0,1",
            "--corpus", f"{GENERAL},{DEMO_PROBLEMS}", "--width", "64", "--tokens", "400000", "--device", "cpu"]
    code, stderr = interrupt_run_py(args, "SAE layer 0: held-out FVU", tmp_path / "stderr.txt",
                                    {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}, limit_s=600)
    assert code == 130, stderr
    # A line of its own, or after tqdm's bar (interrupted mid-line; it is drawn once more as it is closed).
    message = "interrupted: layers already saved are kept; rerunning the same command (same --output) trains only the rest"
    assert [line for line in stderr.splitlines() if line.endswith(message)], stderr
    assert (out / "layer_0" / "training_done.json").is_file() and not (out / REPORT_FILENAME).exists()
    again = _run(*args)
    assert again.returncode == 0, again.stderr
    assert "SAE layer 0: trained by an earlier, interrupted run with these settings; kept" in again.stderr
    assert "SAE layer 1: trained by an earlier" not in again.stderr
