"""Confidence baselines known before generation: what they read, and how the reviewer section uses them.

The first-token numbers are checked against the generation engine's own
first step (a one-token greedy generation's log-probability) and against an
unpadded forward pass; the reviewer section is checked on planted data where
the answer is known by construction.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.config import PipelineConfig
from common.modeling.generation import GenerationConfig, generate_batches
from phase3_validation import confounds, prompt_confidence
from phase3_validation.inputs import load_inputs
from phase3_validation.probes import evaluate_probes
from phase3_validation.prompt_confidence import (
    PromptConfidence,
    answer_token_ids,
    next_token_log_probs,
    self_assessment_prompt,
)
from phase3_validation.statistical import validate_latents
from tests.phase3_validation.test_confounds import _build

PROMPTS = [
    "Write a function to add two numbers.\nYour code should pass these tests:\n\nassert add(1, 2) == 3\n\n```python\n",
    "Reverse a string.\n```python\n",
    "Write a function that returns the largest element of a list of integers, or None when the list is empty.\n",
]


def test_first_token_log_prob_is_the_engines_first_greedy_step(tiny_model):
    """In one left-padded batch, as generation pads it: the same number as a one-token greedy generation."""
    model, tokenizer = tiny_model
    log_probs = next_token_log_probs(model, tokenizer, PROMPTS, batch_size=3)
    results = [r for batch in generate_batches(model, tokenizer, PROMPTS, [], GenerationConfig(max_new_tokens=1, batch_size=3))
               for r in batch]
    engine = {r.index: r.mean_logprob for r in results}
    for i in range(len(PROMPTS)):
        assert log_probs[i].max() == pytest.approx(engine[i], abs=1e-4)


def test_prompts_are_batched_longest_first_and_returned_in_order(tiny_model):
    """Each pass holds prompts no longer than the previous pass's shortest, so one long prompt pads no short ones."""
    model, tokenizer = tiny_model
    lengths: list[list[int]] = []
    handle = model.register_forward_pre_hook(
        lambda _m, _a, kw: lengths.append(kw["attention_mask"].sum(dim=1).tolist()), with_kwargs=True)
    try:
        batched = next_token_log_probs(model, tokenizer, PROMPTS, batch_size=2)
    finally:
        handle.remove()
    assert sorted(n for batch in lengths for n in batch) == sorted(len(ids) for ids in tokenizer(PROMPTS)["input_ids"])
    assert all(max(later) <= min(earlier) for earlier, later in zip(lengths, lengths[1:]))
    assert len({len(ids) for ids in tokenizer(PROMPTS)["input_ids"]}) > 1  # the order was not trivial
    for i, prompt in enumerate(PROMPTS):
        np.testing.assert_allclose(batched[i], next_token_log_probs(model, tokenizer, [prompt], 1)[0], atol=1e-4)


def test_padding_changes_nothing_and_entropy_is_the_distributions(tiny_model):
    model, tokenizer = tiny_model
    batched = next_token_log_probs(model, tokenizer, PROMPTS, batch_size=3)
    for i, prompt in enumerate(PROMPTS):
        alone = next_token_log_probs(model, tokenizer, [prompt], batch_size=1)[0]
        np.testing.assert_allclose(batched[i], alone, atol=1e-4)
        with torch.inference_mode():
            logits = model(**tokenizer([prompt], return_tensors="pt")).logits[0, -1].float()
        entropy = torch.distributions.Categorical(logits=logits).entropy().item()
        assert prompt_confidence._first_token(batched[i:i + 1])[1][0] == pytest.approx(entropy, abs=1e-4)


def test_self_assessment_is_p_yes_over_yes_and_no(tiny_model):
    model, tokenizer = tiny_model
    yes, no = answer_token_ids(tokenizer)
    assert yes and no and not set(yes) & set(no)
    row = type("Row", (), {"text": "Add two numbers.", "test_list": ["assert add(1, 2) == 3"]})()
    question = self_assessment_prompt(row, "plain", tokenizer)
    assert question.startswith("Add two numbers.\nYour code should pass these tests:\n\nassert add(1, 2) == 3\n\n")
    assert question.endswith(prompt_confidence.SELF_ASSESSMENT_QUESTION + "\nAnswer:") and "```" not in question
    log_probs = next_token_log_probs(model, tokenizer, [question], 1)
    p = np.exp(log_probs[0].astype(np.float64))
    expected = p[yes].sum() / (p[yes].sum() + p[no].sum())
    assert prompt_confidence._p_yes(log_probs, yes, no)[0] == pytest.approx(expected)
    assert 0.0 < expected < 1.0


def test_compute_reads_every_split_from_phase1_prompts(tiny_model, tmp_path):
    model, tokenizer = tiny_model
    data, _ = _build(tmp_path)
    inputs = load_inputs(PipelineConfig(data_dir=str(data), bootstrap=50))
    result = prompt_confidence.compute(model, tokenizer, inputs, batch_size=16)
    assert set(result.scores) == {"first_token_logprob", "first_token_entropy", "self_assessment"}
    for by_split in result.scores.values():
        assert set(by_split) == {"sae", "hyperparams", "validation"}
        assert len(by_split["validation"]) == len(inputs.validation.baseline) == 40
        assert np.isfinite(by_split["validation"]).all()
    first = next_token_log_probs(model, tokenizer, [str(inputs.validation.baseline["prompt"].iloc[0])], 1)[0].max()
    assert result.scores["first_token_logprob"]["validation"][0] == pytest.approx(first, abs=1e-4)
    assert result.info["self_assessment_template"].endswith("Answer Yes or No.\nAnswer:")
    assert set(result.info["yes_no_mass_mean"]) == {"sae", "hyperparams", "validation"}
    assert all(0 < m <= 1 for m in result.info["yes_no_mass_mean"].values())
    assert result.info["self_assessment_example"].startswith(str(inputs.validation.tasks["text"].iloc[0]).strip())


def test_a_rerun_reads_the_kept_baselines_back_without_a_forward_pass(tiny_model, tmp_path):
    """The second call returns the same arrays and info without running the model; another batch size (a different
    padding, so possibly other last bits) computes again; clear_cache deletes the files."""
    model, tokenizer = tiny_model
    data, _ = _build(tmp_path)
    inputs = load_inputs(PipelineConfig(data_dir=str(data), bootstrap=50))
    folder = tmp_path / "checkpoints"
    passes: list[int] = []
    handle = model.register_forward_pre_hook(lambda *_: passes.append(1))
    try:
        first = prompt_confidence.compute_cached(model, tokenizer, inputs, 16, folder, "tiny")
        n_first = len(passes)
        again = prompt_confidence.compute_cached(model, tokenizer, inputs, 16, folder, "tiny")
        assert n_first > 0 and len(passes) == n_first
        prompt_confidence.compute_cached(model, tokenizer, inputs, 8, folder, "tiny")
        assert len(passes) > n_first
    finally:
        handle.remove()
    assert again.info == first.info and set(again.scores) == set(first.scores)
    for name, by_split in first.scores.items():
        for split, values in by_split.items():
            np.testing.assert_array_equal(again.scores[name][split], values)
    assert len(list(folder.glob(prompt_confidence.CACHE_PREFIX + "*"))) == 4  # two keys, arrays and info each
    prompt_confidence.clear_cache(folder)
    assert not any(folder.iterdir())


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """The reviewer test's planted data, with before-generation baselines of known quality added."""
    data, _ = _build(tmp_path_factory.mktemp("prompt_time"))
    inputs = load_inputs(PipelineConfig(data_dir=str(data), bootstrap=100))
    rng = np.random.default_rng(1)
    planted = PromptConfidence(info={"self_assessment_version": "v", "self_assessment_format": "plain",
                                     "self_assessment_template": "Q?", "yes_tokens": ["Yes"], "no_tokens": ["No"],
                                     "note": None})
    for name in ("sae", "hyperparams", "validation"):
        split = getattr(inputs, name)
        y = split.correct.astype(float)
        planted.scores.setdefault("first_token_logprob", {})[name] = -1.0 + 0.5 * y + rng.normal(0, 0.3, len(y))
        planted.scores.setdefault("first_token_entropy", {})[name] = rng.normal(2.0, 0.5, len(y))  # noise
        planted.scores.setdefault("self_assessment", {})[name] = rng.uniform(0, 1, len(y))  # noise
    evaluations = validate_latents(inputs, top_n=1, n_bootstrap=100, seed=0)
    probes = evaluate_probes(inputs, 100, 0)
    return confounds.evaluate(inputs, probes, evaluations, 100, 0, planted)


def test_before_generation_baselines_are_predictors_with_their_timing(planted):
    preds = planted["predictors"]
    assert set(preds) == {"latent", "probe", "probe_length_residualised", "mean_logprob", "first_token_logprob",
                          "first_token_entropy", "self_assessment"}
    assert preds["mean_logprob"]["known"] == "after generation" and "[after generation]" in preds["mean_logprob"]["name"]
    for key in ("latent", "probe", "probe_length_residualised", "first_token_logprob", "first_token_entropy", "self_assessment"):
        assert preds[key]["known"] == "before generation" and "[before generation]" in preds[key]["name"]
    assert preds["first_token_logprob"]["auroc"]["auroc"] > 0.75  # the planted signal
    assert abs(preds["first_token_entropy"]["auroc"]["auroc"] - 0.5) < 0.25  # noise
    assert {"first_token_logprob", "self_assessment"} <= set(planted["coverage"]["curves"])


def test_the_compared_baseline_is_chosen_on_hyperparams_and_the_latent_is_compared_with_it(planted):
    assert planted["prompt_time_chosen"] == "first_token_logprob"
    aucs = planted["prompt_time"]["hyperparams_auroc"]
    assert max(aucs, key=aucs.get) == "first_token_logprob"
    beyond = planted["predictors"]["latent"]["beyond_prompt_confidence"]
    assert beyond["adds_information"] and beyond["auroc_with_predictor"] > beyond["auroc_confounds"]


def test_summary_says_when_each_predictor_is_known(planted):
    text = "\n".join(prompt_confidence.summary_lines(planted))
    assert "### When each predictor is known" in text
    assert "| mean log-probability of the model's own tokens (mean_logprob) | **no**: after generation |" in text
    assert "Self-assessment question" in text and "highest hyperparams AUROC" in text
    table = "\n".join(confounds.summary_lines(planted))
    assert "[before generation]" in table and "[after generation]" in table
    assert "Before-generation confidence baselines: not computed." in prompt_confidence.summary_lines(None)
