"""The generation engine: rows leave and join, outputs equal transformers' own ``generate``, seeds per sequence.

The reference is ``generate_static_batches`` (fixed batches, each one
``model.generate`` call): the engine must give the same greedy tokens, stop
reasons, log-probabilities and captured vectors while running no row past its end.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.modeling.generation import (
    MAX_DECODE_PADDING,
    MAX_PREFILL_PADDING,
    GenerationConfig,
    GenerationResult,
    _Row,
    generate_batches,
    generate_static_batches,
    padding_capped_batches,
    prefill_groups,
)
from common.prompts import build_prompt
from tests.common.modeling.test_generation import PROMPTS, _first_stop

MAX_NEW = 20


def _collect(generate, model, tokenizer, prompts, layers=None, **kwargs) -> list[GenerationResult]:
    extra = {k: kwargs.pop(k) for k in ("prompt_seeds", "wanted") if k in kwargs}
    cfg = GenerationConfig(**{"max_new_tokens": MAX_NEW, "stop_sequences": (), **kwargs})
    results = [r for batch in generate(model, tokenizer, prompts, layers, cfg, **extra) for r in batch]
    return sorted(results, key=lambda r: (r.index, r.sample_index))


def _stop_for(tokenizer, reference: list[GenerationResult]) -> str:
    """A 3-character stop string that ends one row early and no other; never the shortest prompt's row (alone in
    the last static batch of 2, where stopping early saves nothing), so the static batches pay for a stopped row."""
    lengths = [len(ids) for ids in tokenizer(PROMPTS)["input_ids"]]
    for target, ref in enumerate(reference):
        if lengths[target] == min(lengths):
            continue
        text = ref.generated_text
        for a in range(3, len(text) - 6):
            stop = text[a : a + 3]
            hits = [_first_stop(tokenizer, PROMPTS[i], r.generated_token_ids, stop) for i, r in enumerate(reference)]
            if hits[target] is not None and hits[target] < MAX_NEW - 4 and sum(h is not None for h in hits) == 1:
                return stop
    raise AssertionError("no stop string found")


class _PassRecorder:
    """Records (rows, columns) of every forward pass, from a pre-hook on the first decoder layer."""

    def __init__(self, model) -> None:
        self.shapes: list[tuple[int, int]] = []
        layer = model.get_decoder().layers[0]
        self.handle = layer.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, _module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        self.shapes.append((hidden.shape[0], hidden.shape[1]))

    def close(self) -> None:
        self.handle.remove()


def test_engine_equals_static_generate_with_rows_joining(tiny_model) -> None:
    """Batch 2 over 5 prompts with a stop string: tokens, reasons, log-probs and vectors equal generate's."""
    model, tokenizer = tiny_model
    unstopped = _collect(generate_static_batches, model, tokenizer, PROMPTS, batch_size=len(PROMPTS))
    stop = _stop_for(tokenizer, unstopped)
    static = _collect(generate_static_batches, model, tokenizer, PROMPTS, batch_size=2, stop_sequences=(stop,))
    engine = _collect(generate_batches, model, tokenizer, PROMPTS, batch_size=2, stop_sequences=(stop,))
    assert sorted({r.stop_reason for r in engine}) == ["max_new_tokens", "stop_sequence"]
    for s, e in zip(static, engine):
        assert (e.index, e.sample_index) == (s.index, s.sample_index)
        assert e.generated_token_ids == s.generated_token_ids
        assert (e.generated_text, e.stop_reason, e.n_prompt_tokens) == (s.generated_text, s.stop_reason, s.n_prompt_tokens)
        assert e.mean_logprob == pytest.approx(s.mean_logprob, abs=1e-5)
        assert sorted(e.activations) == sorted(s.activations) == [0, 1]
        for layer, vector in s.activations.items():
            np.testing.assert_allclose(e.activations[layer], vector, atol=1e-5, rtol=1e-5)


def test_no_row_runs_past_its_end_and_the_batch_stays_full(tiny_model) -> None:
    """Every decode pass computes exactly the rows still generating: total decode rows = useful tokens - one per
    sequence (its first token comes from the prefill), and while prompts wait every decode pass is full."""
    model, tokenizer = tiny_model
    unstopped = _collect(generate_static_batches, model, tokenizer, PROMPTS, batch_size=len(PROMPTS))
    stop = _stop_for(tokenizer, unstopped)
    recorder = _PassRecorder(model)
    try:
        engine = _collect(generate_batches, model, tokenizer, PROMPTS, [], batch_size=2, stop_sequences=(stop,))
    finally:
        recorder.close()
    decode_rows = [rows for rows, columns in recorder.shapes if columns == 1]
    prefills = [rows for rows, columns in recorder.shapes if columns > 1]
    useful = sum(r.n_generated_tokens for r in engine)
    assert sum(decode_rows) == useful - len(PROMPTS)
    assert sum(prefills) == len(PROMPTS)  # every prompt prefilled once, in the pass where it joined
    # Passes before the last prompt joined were full (the queue was not empty).
    last_join = max(i for i, (rows, columns) in enumerate(recorder.shapes) if columns > 1)
    assert all(rows == 2 for rows, columns in recorder.shapes[:last_join] if columns == 1)
    # The static batches paid for rows that had stopped: more decode rows than the engine.
    recorder = _PassRecorder(model)
    try:
        _collect(generate_static_batches, model, tokenizer, PROMPTS, [], batch_size=2, stop_sequences=(stop,))
    finally:
        recorder.close()
    assert sum(rows for rows, columns in recorder.shapes if columns == 1) > sum(decode_rows)


def test_sampled_sequences_do_not_depend_on_their_neighbours(tiny_model) -> None:
    """Each sample draws from its own generator (prompt seed, sample index): batch size, the other prompts and
    which sequences are asked for (a resumed run asks only for the missing ones) do not change it."""
    model, tokenizer = tiny_model
    kwargs = {"temperature": 1.0, "samples_per_prompt": 3, "seed": 5}
    seeds = [11, 22, 33, 44, 55]
    full = _collect(generate_batches, model, tokenizer, PROMPTS, [], batch_size=6, prompt_seeds=seeds, **kwargs)
    one_row = _collect(generate_batches, model, tokenizer, PROMPTS, [], batch_size=1, prompt_seeds=seeds, **kwargs)
    assert [r.generated_token_ids for r in one_row] == [r.generated_token_ids for r in full]
    missing = [(1, 2), (3, 0), (4, 1)]
    resumed = _collect(generate_batches, model, tokenizer, PROMPTS, [], batch_size=6, prompt_seeds=seeds,
                       wanted=missing, **kwargs)
    by_key = {(r.index, r.sample_index): r.generated_token_ids for r in full}
    assert [(r.index, r.sample_index) for r in resumed] == missing
    assert [r.generated_token_ids for r in resumed] == [by_key[k] for k in missing]
    # The prompt seed decides the samples; samples of one prompt differ from each other.
    reseeded = _collect(generate_batches, model, tokenizer, PROMPTS, [], batch_size=6,
                        prompt_seeds=[99, 22, 33, 44, 55], **kwargs)
    assert [r.generated_token_ids for r in reseeded[:3]] != [r.generated_token_ids for r in full[:3]]
    assert [r.generated_token_ids for r in reseeded[3:]] == [r.generated_token_ids for r in full[3:]]
    assert len({tuple(r.generated_token_ids) for r in full[:3]}) > 1


def test_samples_share_one_prefill_and_one_set_of_vectors(tiny_model) -> None:
    model, tokenizer = tiny_model
    recorder = _PassRecorder(model)
    try:
        results = _collect(generate_batches, model, tokenizer, PROMPTS[:2], [1], batch_size=6, temperature=0.8,
                           samples_per_prompt=3)
    finally:
        recorder.close()
    assert sum(rows for rows, columns in recorder.shapes if columns > 1) == 2  # each prompt once, not each sample
    assert results[0].activations is results[1].activations is results[2].activations
    assert results[0].activations is not results[3].activations


def test_steering_prompt_policy_sees_only_prefill_passes(tiny_model) -> None:
    """Joining rows are prefilled in passes of their own, so "prompt" steering never touches a decode step."""
    from common.modeling.steering import steer

    model, tokenizer = tiny_model
    d_model = model.config.hidden_size
    vector = torch.full((d_model,), 0.5)
    recorder = _PassRecorder(model)
    try:
        with steer(model, 0, vector, positions="prompt") as adder:
            steered = _collect(generate_batches, model, tokenizer, PROMPTS, [], batch_size=2)
    finally:
        recorder.close()
    prefills = [rows for rows, columns in recorder.shapes if columns > 1]
    assert adder.calls == len(prefills) and sum(prefills) == len(PROMPTS)
    plain = _collect(generate_batches, model, tokenizer, PROMPTS, [], batch_size=2)
    assert [r.generated_token_ids for r in steered] != [r.generated_token_ids for r in plain]
    with steer(model, 0, torch.zeros(d_model), positions="all"):
        zero = _collect(generate_batches, model, tokenizer, PROMPTS, [], batch_size=2)
    assert [r.generated_token_ids for r in zero] == [r.generated_token_ids for r in plain]


def test_prefill_passes_are_at_most_a_quarter_padding(tiny_model) -> None:
    """All five prompts (30 to 300 tokens) join at once: they are split into prefill passes in which at most a quarter of
    the positions are padding, and the tokens and vectors still equal one fixed batch of all five."""
    model, tokenizer = tiny_model
    lengths = sorted((len(ids) for ids in tokenizer(PROMPTS)["input_ids"]), reverse=True)
    assert 1 - sum(lengths) / (len(lengths) * lengths[0]) > MAX_PREFILL_PADDING  # one pass would be over a quarter padding
    recorder = _PassRecorder(model)
    masks: list[torch.Tensor] = []
    handle = model.register_forward_pre_hook(
        lambda _m, _a, kw: masks.append(kw["attention_mask"]) if kw["input_ids"].shape[1] > 1 else None,
        with_kwargs=True,
    )
    try:
        engine = _collect(generate_batches, model, tokenizer, PROMPTS, batch_size=len(PROMPTS))
    finally:
        recorder.close()
        handle.remove()
    assert len(masks) > 1 and sum(m.shape[0] for m in masks) == len(PROMPTS)
    for mask in masks:
        assert 1 - mask.sum().item() / mask.numel() <= MAX_PREFILL_PADDING
    static = _collect(generate_static_batches, model, tokenizer, PROMPTS, batch_size=len(PROMPTS))
    for s, e in zip(static, engine):
        assert e.generated_token_ids == s.generated_token_ids
        for layer, vector in s.activations.items():
            np.testing.assert_allclose(e.activations[layer], vector, atol=1e-5, rtol=1e-5)


def test_prefill_groups_keep_similar_lengths_together() -> None:
    """Rows of one prompt share a pass; a long prompt among short ones goes alone; similar lengths share."""
    rows = [_Row(i, s, [0] * n, "", None) for i, s, n in [(0, 0, 400), (0, 1, 400), (1, 0, 100), (2, 0, 90),
                                                           (3, 0, 80), (4, 0, 20)]]
    groups = [[(r.index, r.sample_index) for r in g] for g in prefill_groups(rows)]
    assert groups == [[(0, 0), (0, 1)], [(1, 0), (2, 0), (3, 0)], [(4, 0)]]


def test_padding_capped_batches_keep_the_long_prompt_apart_and_cover_every_prompt_once() -> None:
    """MBPP's shape (one 3,716-token prompt among short ones): the long prompt goes alone, similar lengths share a
    batch up to the row limit, every index comes once, and no batch is more than a quarter padding."""
    lengths = [120, 3716, 110, 100, 118, 95, 30, 119]
    batches = padding_capped_batches(lengths, max_rows=3)
    assert batches == [[1], [0, 7, 4], [2, 3, 5], [6]]
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        share = 1 - sum(lengths[i] for i in batch) / (len(batch) * max(lengths[i] for i in batch))
        assert len(batch) <= 3 and share <= MAX_PREFILL_PADDING
    assert padding_capped_batches([], 8) == [] and padding_capped_batches([5, 5], 0) == [[0], [1]]


def test_an_outlier_prompt_decodes_without_the_short_rows_waiting_on_its_width(tiny_model) -> None:
    """MBPP's shape (one prompt ten times the others): rows join the long one only while the batch stays at most
    MAX_DECODE_PADDING padding, where one batch of all of them would be more; the others wait and join after it
    leaves; the tokens still equal one static batch of all the prompts."""
    model, tokenizer = tiny_model
    long_prompt = build_prompt("Write a function to add two numbers. " * 40, ["assert add(1, 2) == 3"] * 3)
    prompts = [long_prompt] + [PROMPTS[i] for i in (0, 2, 4)] * 3
    lengths = [len(ids) for ids in tokenizer(prompts)["input_ids"]]
    assert 1 - sum(lengths) / (len(lengths) * max(lengths)) > MAX_DECODE_PADDING  # one batch: mostly padding
    steps: list[tuple[int, float]] = []
    handle = model.register_forward_pre_hook(
        lambda _m, _a, kw: steps.append((kw["attention_mask"].shape[0],
                                         1 - kw["attention_mask"].sum().item() / kw["attention_mask"].numel()))
        if kw["input_ids"].shape[1] == 1 else None,
        with_kwargs=True,
    )
    try:
        engine = _collect(generate_batches, model, tokenizer, prompts, batch_size=len(prompts))
    finally:
        handle.remove()
    assert steps[0] == (1, 0.0)  # the long row decodes alone: any short group would make the batch mostly padding
    assert max(share for _, share in steps) <= MAX_DECODE_PADDING
    assert max(rows for rows, _ in steps) == len(prompts) - 1  # the short rows still decode together
    static = _collect(generate_static_batches, model, tokenizer, prompts, batch_size=len(prompts))
    assert [e.generated_token_ids for e in engine] == [s.generated_token_ids for s in static]
