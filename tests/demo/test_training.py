"""The demo's trained model and SAEs: real artifacts with both classes and layer-true SAEs.

Why: `run.py demo` promises that every phase has something to find: a model
that solves some problems and fails others at temperature 0 (measured by
running the code, not by trusting the report), and one SAE per layer that
fits its own layer's residual stream better than a neighbouring layer's
(so a layer mix-up would show). The "test" size is trained once per session
(``demo_trained`` in tests/demo/conftest.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

from common.datadir import read_json
from common.prompts import build_prompt, extract_code
from common.sandbox.executor import Executor, ExecutorConfig
from demo.sae_training import REPORT_FILENAME as SAE_REPORT_FILENAME
from demo.sae_training import (
    DemoSAEConfig,
    collect_resid_post,
    demo_sae_texts,
    hook_name,
    sae_fvu_and_l0,
    train_demo_saes,
)
from demo.training import DemoModelConfig, TrainingReport, choose_seen, train_demo_model


@pytest.fixture()
def problems(demo_problems):
    return demo_problems


@pytest.fixture()
def trained(demo_trained):
    """(report, model_dir, sae_folders, sae_dir) of the session's test-size demo model (tests/demo/conftest.py)."""
    return demo_trained.report, demo_trained.model_dir, demo_trained.sae_folders, demo_trained.sae_dir


def _load(model_dir: Path):
    # local_files_only: the folder must load with no network at all.
    tok = transformers.AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, local_files_only=True, attn_implementation="eager"
    )
    model.eval()
    return model, tok


def test_folder_loads_offline_as_gemma2(trained):
    _report, model_dir, _folders, _ = trained
    model, tok = _load(model_dir)
    assert isinstance(model, transformers.Gemma2ForCausalLM)
    assert tok.padding_side == "left"
    assert tok("x")["input_ids"][0] == tok.bos_token_id
    assert TrainingReport.load(model_dir).solved == trained[0].solved


def test_both_classes_at_temperature_zero(trained):
    report = trained[0]
    assert len(report.solved) == 100
    assert report.stopped_by == "converged"
    assert 0.2 <= report.share_solved <= 0.8, report.share_solved
    assert report.share_solved_seen > report.share_solved_unseen
    assert set(report.seen_task_ids).isdisjoint(report.unseen_task_ids)
    # Trained on both formats, the same problems in HumanEval's format have both classes too.
    assert set(report.solved_humaneval) == set(report.solved)
    assert 0 < sum(report.solved_humaneval.values()) < len(report.solved_humaneval)
    assert report.share_solved_humaneval_seen > report.share_solved_humaneval_unseen


def test_report_verdicts_hold_when_rechecked_unbatched(trained, problems):
    """Regenerate two solved and two unsolved problems one by one with plain HF generate, and run them."""
    report, model_dir, _folders, _ = trained
    model, tok = _load(model_dir)
    solved = [t for t, ok in sorted(report.solved.items()) if ok][:2]
    failed = [t for t, ok in sorted(report.solved.items()) if not ok][:2]
    rows = problems.set_index("task_id")
    items = []
    for task_id in solved + failed:
        row = rows.loc[task_id]
        enc = tok(build_prompt(row.text, list(row.test_list)), return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=128, do_sample=False, pad_token_id=tok.pad_token_id)
        code = extract_code(tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True))
        assert code == report.extracted_code[task_id]
        items.append({"task_id": task_id, "code": code, "test_setup_code": row.test_setup_code,
                      "tests": list(row.test_list)})
    with Executor(ExecutorConfig(workers=2, timeout_s=5.0)) as ex:
        results = ex.run_many(items, progress=False)
    assert [r.passed for r in results] == [True, True, False, False]


def test_humaneval_format_verdicts_hold_when_rechecked_unbatched(trained, problems):
    """The same check in HumanEval's format: plain HF generate from the view's prompt, program = prompt + completion."""
    from common.benchmarks.humaneval import check_tests
    from demo.humaneval_view import humaneval_row

    report, model_dir, _folders, _ = trained
    model, tok = _load(model_dir)
    solved = [t for t, ok in sorted(report.solved_humaneval.items()) if ok][:2]
    failed = [t for t, ok in sorted(report.solved_humaneval.items()) if not ok][:2]
    rows = problems.set_index("task_id", drop=False)
    items = []
    for task_id in solved + failed:
        view = humaneval_row(rows.loc[task_id].to_dict())
        enc = tok(view["prompt"], return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=128, do_sample=False, pad_token_id=tok.pad_token_id)
        completion = tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        items.append({"task_id": task_id, "code": extract_code(view["prompt"] + completion),
                      "test_setup_code": view["test"], "tests": check_tests(view)})
    with Executor(ExecutorConfig(workers=2, timeout_s=5.0)) as ex:
        results = ex.run_many(items, progress=False)
    assert [r.passed for r in results] == [True, True, False, False]


def test_same_seed_gives_identical_weights(problems, tmp_path):
    """Two trainings of a very small model: bitwise-identical weights and the same seen set."""
    small = problems.head(6)
    cfg = DemoModelConfig.for_size(
        "test", hidden_size=32, intermediate_size=64, num_attention_heads=1, head_dim=32,
        num_key_value_heads=1, vocab_size=300, max_steps=20, check_every=5, max_new_tokens=8, seen_fraction=0.5,
    )
    a = train_demo_model(small, tmp_path / "a", cfg)
    b = train_demo_model(small, tmp_path / "b", cfg)
    assert a.seen_task_ids == b.seen_task_ids
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    assert a.loss_curve == b.loss_curve


def test_same_seed_gives_identical_saes(trained, tmp_path):
    """Two short SAE trainings on the trained model's layer 0: bitwise-identical SAE weights."""
    model_dir = trained[1]
    texts = ["def f(x):\n    return x + 1\n", "Write a function to add two numbers.\n", "assert f(2) == 3\n"] * 4
    cfg = DemoSAEConfig.for_size("test", training_tokens=2048, batch_size=64, holdout_fraction=0.25)
    a = train_demo_saes(model_dir, texts, [0], tmp_path / "a", cfg)[0]
    b = train_demo_saes(model_dir, texts, [0], tmp_path / "b", cfg)[0]
    name = "sae_weights.safetensors"
    assert (a / name).read_bytes() == (b / name).read_bytes()


def test_solution_loss_equals_the_transformers_loss(problems):
    """The fast loss (solution positions only, softcap by hand) is the loss Gemma2ForCausalLM computes."""
    from demo.tiny_model import tiny_gemma2_config, train_tokenizer
    from demo.training import collate, encode_examples, solution_loss, tokenizer_corpus

    tok = train_tokenizer(tokenizer_corpus(problems.head(5)), vocab_size=300)
    torch.manual_seed(0)
    model = transformers.Gemma2ForCausalLM(tiny_gemma2_config(vocab_size=len(tok)))
    ids, mask, labels = collate(encode_examples(problems.head(5), tok), tok.pad_token_id)
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        torch.testing.assert_close(solution_loss(model, ids, mask, labels), expected)


def test_seen_choice_is_seeded():
    ids = list(range(1, 101))
    assert choose_seen(ids, 0.6, 0) == choose_seen(ids, 0.6, 0)
    assert choose_seen(ids, 0.6, 0) != choose_seen(ids, 0.6, 1)
    assert len(choose_seen(ids, 0.6, 0)) == 60
    with pytest.raises(ValueError):
        choose_seen(ids, 1.0, 0)


def test_saes_load_with_sae_lens_at_the_captured_site(trained):
    from sae_lens import SAE, JumpReLUSAE

    from common.saes.loading import SAESource, load_sae

    _report, model_dir, folders, sae_dir = trained
    model, _tok = _load(model_dir)
    assert sorted(folders) == list(range(model.config.num_hidden_layers))
    for layer, folder in folders.items():
        assert folder == sae_dir / f"layer_{layer}"
        sae = SAE.load_from_disk(folder)
        assert isinstance(sae, JumpReLUSAE)
        assert sae.cfg.metadata.hook_name == hook_name(layer) == f"blocks.{layer}.hook_resid_post"
        assert sae.cfg.d_in == model.config.hidden_size
        assert sae.cfg.d_sae == 4 * model.config.hidden_size
        load_sae(SAESource(local_path=str(sae_dir)), layer)  # the pipeline's own loader accepts it
    report = read_json(sae_dir / SAE_REPORT_FILENAME)
    for layer in folders:
        entry = report["layers"][str(layer)]
        assert entry["hook_name"] == hook_name(layer)
        assert 0 < entry["heldout_fvu"] < 0.5 and 0 < entry["heldout_l0"] < entry["d_sae"] / 2


def test_captured_site_is_decoder_layer_output(trained, problems):
    """resid_post(L) equals hidden_states[L + 1] for every layer but the last (whose entry is final-normed)."""
    model, tok = _load(trained[1])
    text = demo_sae_texts(problems.head(1))[0]
    n_layers = model.config.num_hidden_layers
    acts, owner = collect_resid_post(model, tok, [text], list(range(n_layers)))
    with torch.no_grad():
        hidden = model(**tok(text, return_tensors="pt"), output_hidden_states=True).hidden_states
    for layer in range(n_layers - 1):
        torch.testing.assert_close(acts[layer], hidden[layer + 1][0, 1:])  # position 0 (<bos>) is left out
    assert not torch.allclose(acts[n_layers - 1], hidden[n_layers][0, 1:])
    assert owner.tolist() == [0] * acts[0].shape[0]


def test_each_sae_fits_its_own_layer_better_than_its_neighbour(trained, problems):
    from sae_lens import SAE

    _report, model_dir, folders, _ = trained
    model, tok = _load(model_dir)
    layers = sorted(folders)
    acts, _owner = collect_resid_post(model, tok, demo_sae_texts(problems), layers)
    for layer in layers:
        sae = SAE.load_from_disk(folders[layer])
        own_fvu, own_l0 = sae_fvu_and_l0(sae, acts[layer])
        neighbour = layer + 1 if layer + 1 in folders else layer - 1
        other_fvu, _ = sae_fvu_and_l0(sae, acts[neighbour])
        assert own_fvu < 0.5, (layer, own_fvu)
        assert own_fvu < other_fvu, (layer, own_fvu, other_fvu)
        assert 0 < own_l0 < sae.cfg.d_sae / 2


def test_humaneval_format_targets_are_programs_phase1_passes(problems):
    """Each seen problem is also learnt in HumanEval's format; the target completion, judged as
    ``phase 1 --dataset humaneval`` judges a generation (extract_code(prompt + completion), then check(entry_point)),
    passes, and a format it was not asked for is not added."""
    from common.benchmarks.humaneval import check_tests
    from demo.humaneval_view import humaneval_row
    from demo.tiny_model import train_tokenizer
    from demo.training import encode_examples, formatted_texts, tokenizer_corpus

    rows = problems.head(12).to_dict("records")
    assert all(len(formatted_texts(r, False)) == 1 for r in rows)
    pairs = [formatted_texts(r, True) for r in rows]
    assert all(len(p) == 2 and p[0][0].startswith(r["text"].strip()) for p, r in zip(pairs, rows, strict=True))
    items = []
    for (_mbpp, (prompt, completion)), r in zip(pairs, rows, strict=True):
        view = humaneval_row(r)
        assert prompt == view["prompt"]  # exactly the prompt Phase 1 feeds in HumanEval's format
        items.append({"task_id": int(r["task_id"]), "code": extract_code(prompt + completion),
                      "test_setup_code": view["test"], "tests": check_tests(view)})
    wrong = [{**item, "code": extract_code(pairs[0][1][0] + "    return None\n")} for item in items[:1]]
    with Executor(ExecutorConfig(workers=2)) as executor:
        assert all(r.passed for r in executor.run_many(items, progress=False))
        assert not any(r.passed for r in executor.run_many(wrong, progress=False))
    head = problems.head(3)
    tok = train_tokenizer(tokenizer_corpus(head, True), vocab_size=400)
    examples = encode_examples(head, tok, True)
    assert len(examples) == 6 and len(encode_examples(head, tok, False)) == 3
    he_prompt, he_completion = formatted_texts(head.iloc[0].to_dict(), True)[1]
    assert examples[1] == (tok(he_prompt)["input_ids"], tok(he_completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
