"""Batched generation: rule 5 (batched == unbatched), per-row stopping, sampling, activations once per prompt."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.modeling.generation import GenerationConfig, GenerationResult, auto_batch_size, generate_batches
from common.modeling.models import load_model_and_tokenizer
from common.prompts import build_prompt

# Very different lengths (about 30 to 300 tokens), several past the 64-token sliding window.
PROMPTS = [
    build_prompt("Write a function to add two numbers.", ["assert add(1, 2) == 3"] * 3),
    build_prompt(
        "Write a python function to remove first and last occurrence of a given character. " * 6,
        ["assert remove_Occ('hello', 'l') == 'heo'", "assert remove_Occ('abcda', 'a') == 'bcd'"],
    ),
    build_prompt("Sort.", ["assert s([2, 1]) == [1, 2]"]),
    build_prompt(
        "Write a function to find the minimum cost path to reach (m, n) from (0, 0) for the given cost matrix. " * 3,
        ["assert min_cost([[1, 2, 3], [4, 8, 2], [1, 5, 3]], 2, 2) == 8"] * 3,
    ),
    build_prompt("Write a function to find the shared elements from the given two lists.", ["assert f(1) == 1"]),
]
MAX_NEW = 24


def _run(model, tokenizer, prompts, **cfg_kwargs) -> list[GenerationResult]:
    cfg = GenerationConfig(**{"max_new_tokens": MAX_NEW, "stop_sequences": (), **cfg_kwargs})
    results = [r for batch in generate_batches(model, tokenizer, prompts, None, cfg) for r in batch]
    return sorted(results, key=lambda r: (r.index, r.sample_index))


@pytest.fixture(scope="module")
def unstopped(tiny_model) -> list[GenerationResult]:
    """Greedy, one batch, no stop sequences: the reference the other tests compare to."""
    model, tokenizer = tiny_model
    return _run(model, tokenizer, PROMPTS, batch_size=len(PROMPTS))


def test_prompts_span_very_different_lengths(tiny_model) -> None:
    _, tokenizer = tiny_model
    lengths = [len(ids) for ids in tokenizer(PROMPTS)["input_ids"]]
    assert max(lengths) > 3 * min(lengths) and max(lengths) > 64


def test_batched_equals_unbatched(tiny_model, unstopped) -> None:
    """Rule 5: left padding changes neither activations (float tolerance) nor greedy token ids."""
    model, tokenizer = tiny_model
    assert len({r.generated_text for r in unstopped}) > 1, "outputs should differ between prompts"
    for prompt_index, prompt in enumerate(PROMPTS):
        (single,) = _run(model, tokenizer, [prompt], batch_size=1)
        batched = unstopped[prompt_index]
        assert batched.index == prompt_index and batched.prompt == prompt
        assert batched.generated_token_ids == single.generated_token_ids
        assert batched.generated_text == single.generated_text
        assert batched.n_generated_tokens == single.n_generated_tokens == MAX_NEW
        for layer, vector in single.activations.items():
            np.testing.assert_allclose(batched.activations[layer], vector, atol=1e-5, rtol=1e-5)


def test_batches_sorted_longest_first_and_yielded_one_by_one(tiny_model) -> None:
    model, tokenizer = tiny_model
    lengths = [len(ids) for ids in tokenizer(PROMPTS)["input_ids"]]
    cfg = GenerationConfig(max_new_tokens=2, batch_size=2, stop_sequences=())
    batches = list(generate_batches(model, tokenizer, PROMPTS, [0], cfg))
    assert [len(b) for b in batches] == [2, 2, 1]
    seen = [lengths[r.index] for b in batches for r in b]
    assert seen == sorted(lengths, reverse=True)
    assert sorted(r.index for b in batches for r in b) == list(range(len(PROMPTS)))
    assert all(list(r.activations) == [0] for b in batches for r in b)


def _first_stop(tokenizer, prompt: str, ids: list[int], stop: str) -> int | None:
    """Smallest n such that the stop string ends inside the first n generated tokens (brute force)."""
    tail = prompt[-32:]
    for n in range(1, len(ids) + 1):
        text = tail + tokenizer.decode(ids[:n], skip_special_tokens=True)
        if text.find(stop, max(0, len(tail) - len(stop) + 1)) != -1:
            return n
    return None


def test_stop_sequence_stops_one_row_while_others_continue(tiny_model, unstopped) -> None:
    model, tokenizer = tiny_model
    target = next(i for i, r in enumerate(unstopped) if len(set(r.generated_text)) > 1)
    text = unstopped[target].generated_text
    # A stop string from the middle of the target's output that no other row produces.
    stop = next(
        text[a : a + 3]
        for a in range(4, len(text) - 3)
        if all(_first_stop(tokenizer, PROMPTS[i], r.generated_token_ids, text[a : a + 3]) is None
               for i, r in enumerate(unstopped) if i != target)
    )
    expected_n = _first_stop(tokenizer, PROMPTS[target], unstopped[target].generated_token_ids, stop)
    assert expected_n is not None and expected_n < MAX_NEW
    results = _run(model, tokenizer, PROMPTS, batch_size=len(PROMPTS), stop_sequences=(stop,))
    for i, (r, ref) in enumerate(zip(results, unstopped)):
        if i == target:
            assert r.stop_reason == "stop_sequence"
            assert r.n_generated_tokens == expected_n
            assert r.generated_token_ids == ref.generated_token_ids[:expected_n]
            assert stop in r.generated_text
        else:
            assert r.stop_reason == "max_new_tokens"
            assert r.generated_token_ids == ref.generated_token_ids


def test_eos_stops_one_row_and_min_new_tokens_overrides(tiny_model, unstopped, monkeypatch) -> None:
    model, tokenizer = tiny_model
    others = {i: set(r.generated_token_ids) for i, r in enumerate(unstopped)}
    target, position, token = next(
        (i, p, t)
        for i, r in enumerate(unstopped)
        for p, t in enumerate(r.generated_token_ids)
        if p > 0 and p == r.generated_token_ids.index(t) and all(t not in ids for j, ids in others.items() if j != i)
    )
    monkeypatch.setattr(model.generation_config, "eos_token_id", [tokenizer.eos_token_id, token])
    results = _run(model, tokenizer, PROMPTS, batch_size=len(PROMPTS))
    for i, (r, ref) in enumerate(zip(results, unstopped)):
        if i == target:
            assert r.stop_reason == "eos"
            assert r.n_generated_tokens == position + 1
            assert r.generated_token_ids == ref.generated_token_ids[: position + 1]
        else:
            assert (r.stop_reason, r.n_generated_tokens) == ("max_new_tokens", MAX_NEW)
            assert r.generated_token_ids == ref.generated_token_ids
    forced = _run(model, tokenizer, PROMPTS, batch_size=len(PROMPTS), min_new_tokens=MAX_NEW)
    assert all(r.n_generated_tokens == MAX_NEW for r in forced)


def test_sampling_is_seeded_and_activations_are_captured_once_per_prompt(tiny_model, unstopped) -> None:
    model, tokenizer = tiny_model
    kwargs = {"batch_size": 6, "temperature": 1.0, "samples_per_prompt": 3, "seed": 1}
    first = _run(model, tokenizer, PROMPTS, **kwargs)
    again = _run(model, tokenizer, PROMPTS, **kwargs)
    other_seed = _run(model, tokenizer, PROMPTS, **{**kwargs, "seed": 2})
    assert len(first) == 3 * len(PROMPTS)
    assert [(r.index, r.sample_index) for r in first] == [(i, s) for i in range(len(PROMPTS)) for s in range(3)]
    assert [r.generated_token_ids for r in first] == [r.generated_token_ids for r in again]
    assert [r.generated_token_ids for r in first] != [r.generated_token_ids for r in other_seed]
    for r in first:
        greedy = unstopped[r.index]
        for layer, vector in greedy.activations.items():
            np.testing.assert_allclose(r.activations[layer], vector, atol=1e-5, rtol=1e-5)


def test_bf16_model_gives_float32_activations(tiny_model_dir) -> None:
    model, tokenizer = load_model_and_tokenizer(str(tiny_model_dir), torch.device("cpu"), torch.bfloat16)
    (result,) = _run(model, tokenizer, PROMPTS[:1], max_new_tokens=2)
    assert all(v.dtype == np.float32 for v in result.activations.values())


def test_config_validation_and_cpu_batch_size(tiny_model) -> None:
    with pytest.raises(ValueError):
        GenerationConfig(samples_per_prompt=2, temperature=0.0)
    with pytest.raises(ValueError):
        GenerationConfig(max_new_tokens=0)
    assert GenerationConfig(batch_size=8, samples_per_prompt=3, temperature=0.5).prompts_per_batch == 2
    assert auto_batch_size(tiny_model[0], torch.device("cpu")) == 8


def test_mean_logprob_equals_a_teacher_forced_forward_pass(tiny_model, unstopped):
    """The log-probabilities recorded while generating (batched, left padded) match one unpadded forward pass."""
    model, tokenizer = tiny_model
    for result in unstopped:
        prompt_ids = tokenizer(result.prompt, return_tensors="pt")["input_ids"]
        ids = torch.cat([prompt_ids, torch.tensor([result.generated_token_ids])], dim=1)
        with torch.no_grad():
            logprobs = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
        p = prompt_ids.shape[1]
        expected = logprobs[p - 1 : -1].gather(1, ids[0, p:, None])[:, 0].mean().item()
        assert result.mean_logprob == pytest.approx(expected, abs=1e-4)
        assert result.mean_logprob < 0


def test_sampled_runs_record_no_logprob(tiny_model):
    model, tokenizer = tiny_model
    results = _run(model, tokenizer, PROMPTS[:2], temperature=0.8, samples_per_prompt=2, batch_size=4)
    assert all(r.mean_logprob is None for r in results)


def test_prompt_token_counts_ignore_padding(tiny_model, unstopped):
    _, tokenizer = tiny_model
    for result in unstopped:
        assert result.n_prompt_tokens == len(tokenizer(result.prompt)["input_ids"])
