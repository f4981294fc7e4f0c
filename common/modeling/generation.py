"""Generation with activation capture: the engine every phase uses, and the static batches it replaced.

The engine (:func:`generate_batches`, docs/generation.md) keeps ``batch_size``
rows in flight over one KV cache. A row that finishes (EOS, a stop sequence
ending in generated text, or ``max_new_tokens``) leaves at once and the next
waiting sequences take its place, so no pass computes a row past its end and
the batch stays full until the queue is empty:

- the cache is left padded with an attention mask; every row's tokens are
  contiguous and end in the last column, position ids come from the mask
  (``cumsum - 1``), so every token has the rotary position it has unbatched;
- joining sequences are prefilled together in a pass of their own (each
  distinct prompt once, samples share its cache rows), then padded on the left
  to the batch's width and concatenated to it, unless the batch would then be
  mostly padding (``MAX_DECODE_PADDING``: an outlier prompt decodes with the
  rows near its length, the others wait); leaving rows are dropped with
  ``index_select`` and columns that are padding in every remaining row are cut;
- ``LastTokenCapture`` records resid_post of each requested layer at the last
  column of each prefill pass: the last prompt token, once per prompt;
- decode steps feed one token per row, so steering hooks see prefill passes
  (sequence length > 1) and decode steps (length 1) exactly as under ``generate``.

Reproducibility: greedy decoding does not depend on the batch (rule 5; float
tolerance, tested against ``generate``). A sampled sequence draws from its own
``torch.Generator`` seeded with ``sample_seed(prompt seed, sample index)``, so
its sample does not depend on its neighbours, on when it joined, or on whether
the run was resumed (only a last-bit change in the logits could move a draw
that sits on a boundary).

The static path (:func:`generate_static_batches`) is what every phase did
before: fixed batches, longest prompt first, each one ``model.generate`` call
that runs until its longest row ends, finished rows padded. No phase uses it;
it is the reference the engine is tested and benchmarked against
(``bench/phase1_throughput.py``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import transformers

from common.errors import PipelineError
from common.modeling.capture import LastTokenCapture
from common.modeling.models import text_sizes
from common.prompts import STOP_SEQUENCES
from common.seeding import derive_seed

logger = logging.getLogger(__name__)

# Characters of the prompt's end that stop sequences may start in (a stop sequence
# such as "\nassert" begins with the newline that ends the prompt). A match must end
# inside the generated text, so the prompt's own asserts never stop anything.
_PROMPT_TAIL_CHARS = 32


@dataclass
class GenerationConfig:
    """How to generate. ``batch_size`` counts sequences (rows) in flight at once, samples included."""

    max_new_tokens: int = 512
    batch_size: int = 8
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    samples_per_prompt: int = 1
    # Forces at least this many new tokens (EOS and stop sequences are ignored before it);
    # benchmarks with random weights use it so that every row runs to max_new_tokens.
    min_new_tokens: int = 0
    stop_sequences: tuple[str, ...] = STOP_SEQUENCES

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if self.samples_per_prompt < 1:
            raise ValueError("samples_per_prompt must be at least 1")
        if self.samples_per_prompt > 1 and self.temperature == 0:
            raise ValueError("several samples per prompt need temperature > 0 (greedy samples are identical)")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        self.stop_sequences = tuple(self.stop_sequences)

    @property
    def prompts_per_batch(self) -> int:
        return max(1, self.batch_size // self.samples_per_prompt)


@dataclass
class GenerationResult:
    """One generated sequence.

    ``index`` is the prompt's position in the list given to ``generate_batches``.
    ``activations`` maps layer -> float32 vector (d_model,) at the last prompt
    token; the samples of one prompt share the same arrays (captured once per
    prompt). ``gen_time_s`` is the sequence's amortised cost: each pass's wall
    time divided over the rows it computed, summed over the passes it was in.
    ``stop_reason`` is ``eos``, ``stop_sequence`` or ``max_new_tokens``.
    ``generated_token_ids`` are the ``n_generated_tokens`` new token ids (EOS included).
    """

    index: int
    prompt: str
    generated_text: str
    n_generated_tokens: int
    activations: dict[int, np.ndarray]
    gen_time_s: float
    sample_index: int = 0
    stop_reason: str = "max_new_tokens"
    generated_token_ids: list[int] = field(default_factory=list)
    # Mean log-probability of the generated tokens under the model (greedy runs only; None when sampled).
    mean_logprob: float | None = None
    # The prompt's length in tokens, without padding (a confound every predictor is compared with).
    n_prompt_tokens: int = 0


class _RowStopper(transformers.StoppingCriteria):
    """Marks rows finished at EOS or at a stop sequence, and remembers when each row finished.

    Why our own rather than ``stop_strings``: we need the step at which each row
    finished (the number of generated tokens, which padding would otherwise hide
    when the pad id is also a plausible token), and a rule that a stop sequence
    must end in the generated text, not in the prompt.
    """

    def __init__(
        self,
        tokenizer: transformers.PreTrainedTokenizerBase,
        prompt_len: int,
        prompt_tails: list[str],
        stop_sequences: tuple[str, ...],
        eos_ids: set[int],
        min_new_tokens: int,
    ) -> None:
        self.tokenizer = tokenizer
        self.prompt_len = prompt_len
        self.prompt_tails = prompt_tails
        self.stop_sequences = stop_sequences
        self.eos_ids = eos_ids
        self.min_new_tokens = min_new_tokens
        # Every token decodes to at least one byte, so this many tokens hold the longest stop sequence.
        self.window = max((len(s) for s in stop_sequences), default=0) + 2
        self.n_rows = len(prompt_tails)
        self.lengths: list[int | None] = [None] * self.n_rows
        self.reasons: list[str] = ["max_new_tokens"] * self.n_rows

    def _finish(self, row: int, n_generated: int, reason: str) -> None:
        self.lengths[row] = n_generated
        self.reasons[row] = reason

    def _hit_stop_sequence(self, row: int, tokens: list[int], window_start: int) -> bool:
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        tail = self.prompt_tails[row] if window_start == self.prompt_len else ""
        text = tail + text
        for stop in self.stop_sequences:
            # The match must end after the prompt tail, i.e. in generated text.
            if text.find(stop, max(0, len(tail) - len(stop) + 1)) != -1:
                return True
        return False

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        n_generated = input_ids.shape[1] - self.prompt_len
        window_start = max(self.prompt_len, input_ids.shape[1] - self.window)
        rows = input_ids[:, window_start:].tolist()  # one device->host copy per step
        done = [False] * self.n_rows
        for row, tokens in enumerate(rows):
            if self.lengths[row] is not None:
                done[row] = True
                continue
            if n_generated < self.min_new_tokens:
                continue
            if tokens and tokens[-1] in self.eos_ids:
                self._finish(row, n_generated, "eos")
            elif self.stop_sequences and self._hit_stop_sequence(row, tokens, window_start):
                self._finish(row, n_generated, "stop_sequence")
            done[row] = self.lengths[row] is not None
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class _TokenLogProbs(transformers.LogitsProcessor):
    """Records each chosen token's log-probability while generating, at no extra forward pass.

    Why a logits processor: it sees the logits of every step before the token
    is chosen, and the chosen token in the next step's ``input_ids``, so only
    one step's log-softmax (batch x vocabulary) is held at a time; keeping all
    logits of a 512-token batch of a 256k-vocabulary model would take tens of
    GB. Used for greedy decoding only: sampling warps the logits first
    (temperature, top-p), and then they are no longer the model's own.
    """

    def __init__(self) -> None:
        self.previous: torch.Tensor | None = None
        self.steps: list[torch.Tensor] = []

    def _take(self, chosen: torch.Tensor) -> None:
        if self.previous is not None:
            self.steps.append(self.previous.gather(1, chosen[:, None])[:, 0])

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.previous is not None:
            self._take(input_ids[:, -1])
        self.previous = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def per_row(self, final_ids: torch.Tensor) -> list[list[float]]:
        """Each row's token log-probabilities, in order; call once after ``generate``."""
        self._take(final_ids[:, -1])
        self.previous = None
        if not self.steps:
            return [[] for _ in range(final_ids.shape[0])]
        return torch.stack(self.steps, dim=1).cpu().tolist()


def _eos_ids(model: transformers.PreTrainedModel, tokenizer: transformers.PreTrainedTokenizerBase) -> set[int]:
    ids: set[int] = set()
    eos = model.generation_config.eos_token_id
    if isinstance(eos, int):
        ids.add(eos)
    elif eos is not None:
        ids.update(int(i) for i in eos)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


def auto_batch_size(
    model: transformers.PreTrainedModel, device: torch.device, max_tokens_per_sequence: int = 1024
) -> int:
    """A batch size (rows in flight) that fits the free GPU memory; 8 on CPU.

    Why this estimate: during generation memory grows with the KV cache
    (2 x layers x kv heads x head_dim per token), plus the prefill's MLP
    activations and the logits. Half the free memory is budgeted, for
    fragmentation and the prefill peak. Capped at 128 rows.
    """
    if device.type != "cuda":
        return 8
    sizes = text_sizes(model)
    dtype_bytes = next(model.parameters()).element_size()
    kv_per_token = 2 * sizes.n_layers * sizes.n_key_value_heads * sizes.d_head * dtype_bytes
    prefill_per_token = (sizes.d_mlp * 3 + sizes.d_model * 4) * dtype_bytes
    per_sequence = (kv_per_token + prefill_per_token) * max_tokens_per_sequence + sizes.d_vocab * 4 * 3
    free_bytes, _total = torch.cuda.mem_get_info(device)
    size = int(0.5 * free_bytes // per_sequence)
    size = max(1, min(128, size))
    logger.info(
        "auto batch size %d (%.1f GiB free, ~%.0f MiB per sequence)", size, free_bytes / 2**30, per_sequence / 2**20
    )
    return size


def _check_tokenizer(tokenizer: transformers.PreTrainedTokenizerBase) -> None:
    """Batched generation reads the last prompt token from the last column: that needs left padding and a pad token."""
    if tokenizer.padding_side != "left":
        raise PipelineError("batched generation needs a left-padding tokenizer (tokenizer.padding_side = 'left')")
    if tokenizer.pad_token_id is None:
        raise PipelineError("the tokenizer has no pad token; load it with common.modeling.models.load_model_and_tokenizer")


def plan_batches(lengths: list[int], tiebreak: list, per_batch: int) -> list[list[int]]:
    """Positions grouped into fixed batches, longest prompt first (ties by ``tiebreak``).

    Why longest first: similar lengths share a batch, so left padding wastes
    little compute, and a batch that runs out of memory does so at once. Why
    fixed: the plan depends only on the prompts, so a resumed run rebuilds the
    same batches, with the same neighbours and the same seeds.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], tiebreak[i]))
    return [order[i : i + per_batch] for i in range(0, len(order), per_batch)]


def generate_static_batches(
    model: transformers.PreTrainedModel,
    tokenizer: transformers.PreTrainedTokenizerBase,
    prompts: list[str],
    layers: list[int] | None,
    cfg: GenerationConfig,
    first_batch_number: int = 0,
) -> Iterator[list[GenerationResult]]:
    """Generate for every prompt, batch by batch; yield each batch's results when it is done.

    ``layers``: the decoder layers whose resid_post is captured at the last
    prompt token (``None``: all layers; ``[]``: none). Results of a batch come
    in the batch's order (longest prompt first); ``GenerationResult.index``
    points back into ``prompts``. Sampled batch ``n`` (counting from
    ``first_batch_number``, which a caller feeding one planned batch at a time
    sets to that batch's number) draws from ``derive_seed(cfg.seed, n)``.
    """
    _check_tokenizer(tokenizer)
    if not prompts:
        return
    device = next(model.parameters()).device
    lengths = [len(ids) for ids in tokenizer(prompts)["input_ids"]]
    k = cfg.samples_per_prompt
    per_batch = cfg.prompts_per_batch
    eos_ids = _eos_ids(model, tokenizer)
    sampling = cfg.temperature > 0
    capture = LastTokenCapture(model, layers) if (layers is None or layers) else None
    logger.info(
        "generating %d prompt(s) x %d sample(s) in batches of %d prompt(s), max %d new tokens, %s",
        len(prompts), k, per_batch, cfg.max_new_tokens,
        f"sampling T={cfg.temperature} top_p={cfg.top_p}" if sampling else "greedy",
    )
    for batch_number, idx in enumerate(plan_batches(lengths, list(range(len(prompts))), per_batch), start=first_batch_number):
        batch_prompts = [prompts[i] for i in idx]
        enc = tokenizer(batch_prompts, return_tensors="pt", padding=True).to(device)
        prompt_len = enc["input_ids"].shape[1]
        prompt_tokens = enc["attention_mask"].sum(dim=1).tolist()
        stopper = _RowStopper(
            tokenizer,
            prompt_len,
            [prompts[i][-_PROMPT_TAIL_CHARS:] for i in idx for _ in range(k)],
            cfg.stop_sequences,
            eos_ids,
            cfg.min_new_tokens,
        )
        gen_kwargs: dict = {
            "max_new_tokens": cfg.max_new_tokens,
            "min_new_tokens": cfg.min_new_tokens or None,
            "do_sample": sampling,
            "num_return_sequences": k,
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": sorted(eos_ids) or None,
            "stopping_criteria": transformers.StoppingCriteriaList([stopper]),
        }
        logprobs = None if sampling else _TokenLogProbs()
        if logprobs is not None:
            gen_kwargs["logits_processor"] = transformers.LogitsProcessorList([logprobs])
        if sampling:
            gen_kwargs.update(temperature=cfg.temperature, top_p=cfg.top_p, top_k=None)
            torch.manual_seed(derive_seed(cfg.seed, batch_number))
        else:
            gen_kwargs.update(temperature=None, top_p=None, top_k=None)
        t0 = time.perf_counter()
        with torch.inference_mode():
            if capture is not None:
                with capture:
                    out = model.generate(enc["input_ids"], attention_mask=enc["attention_mask"], **gen_kwargs)
                acts = capture.activations()
            else:
                out = model.generate(enc["input_ids"], attention_mask=enc["attention_mask"], **gen_kwargs)
                acts = {}
        generated = out[:, prompt_len:].tolist()
        token_logprobs = logprobs.per_row(out) if logprobs is not None else None
        elapsed = time.perf_counter() - t0
        rows = len(idx) * k
        results: list[GenerationResult] = []
        for b, prompt_index in enumerate(idx):
            prompt_acts = {layer: a[b * k].copy() for layer, a in acts.items()}
            for s in range(k):
                row = b * k + s
                stopped_at = stopper.lengths[row]
                n = stopped_at if stopped_at is not None else len(generated[row])
                results.append(
                    GenerationResult(
                        index=prompt_index,
                        prompt=prompts[prompt_index],
                        generated_text=tokenizer.decode(generated[row][:n], skip_special_tokens=True),
                        n_generated_tokens=n,
                        activations=prompt_acts,
                        gen_time_s=elapsed / rows,
                        sample_index=s,
                        stop_reason=stopper.reasons[row],
                        generated_token_ids=generated[row][:n],
                        mean_logprob=float(np.mean(token_logprobs[row][:n])) if token_logprobs and n else None,
                        n_prompt_tokens=int(prompt_tokens[b]),
                    )
                )
        logger.info(
            "batch %d: %d sequence(s), prompt length %d, %d new tokens max, %.1f s",
            batch_number, rows, prompt_len, out.shape[1] - prompt_len, elapsed,
        )
        yield results


# ---------------------------------------------------------------------------
# The engine: rows leave and join (what every generating phase uses)
# ---------------------------------------------------------------------------


@dataclass
class _Row:
    """One sequence in flight: a prompt's sample, its tokens so far and its own random stream."""

    index: int
    sample_index: int
    prompt_ids: list[int]
    tail: str
    generator: torch.Generator | None
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    time_s: float = 0.0
    reason: str | None = None


class _RoomyLayer(transformers.DynamicLayer):
    """A full cache layer whose keys and values sit in a buffer with room to grow.

    Why: ``DynamicLayer.update`` concatenates, i.e. copies the whole cache of
    the layer at every decode step; here a step writes one column. ``keys`` and
    ``values`` are views of the filled part, so everything that reads them
    (attention, ``get_seq_length``, the mask sizes) sees a normal layer.
    ``replace`` is how ``_Slots`` installs rows it selected or merged.
    """

    HEADROOM = 64  # columns added beyond what is needed when the buffer grows
    keys: torch.Tensor | None
    values: torch.Tensor | None
    _keys: torch.Tensor
    _values: torch.Tensor

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        keys, values = self.keys, self.values
        if not self.is_initialized or keys is None or values is None:
            self.lazy_initialization(key_states, value_states)
            self.replace(key_states, value_states)
            return key_states, value_states
        n, add = keys.shape[-2], key_states.shape[-2]
        if n + add > self._keys.shape[-2]:
            self.replace(keys, values, extra=add)
        self._keys[:, :, n : n + add] = key_states
        self._values[:, :, n : n + add] = value_states
        self.keys, self.values = self._keys[:, :, : n + add], self._values[:, :, : n + add]
        return self.keys, self.values

    def replace(self, keys: torch.Tensor, values: torch.Tensor, extra: int = 0) -> None:
        """Hold exactly these keys and values, in a fresh buffer with room for ``extra`` + HEADROOM more columns."""
        n = keys.shape[-2]
        shape = (*keys.shape[:2], n + extra + self.HEADROOM, keys.shape[-1])
        self._keys, self._values = keys.new_empty(shape), values.new_empty(shape)
        self._keys[:, :, :n], self._values[:, :, :n] = keys, values
        self.keys, self.values = self._keys[:, :, :n], self._values[:, :, :n]


def _new_cache() -> transformers.DynamicCache:
    """A cache of full ``_RoomyLayer`` layers, created as the model first writes to each."""
    cache = transformers.DynamicCache()
    cache.layer_class_to_replicate = _RoomyLayer
    return cache


class _Slots:
    """The batch in flight: a left-padded KV cache, its attention mask and one ``_Row`` per cache row.

    Every row's tokens are contiguous and end in the last column, so a column's
    distance from the last one is the same token distance in every row (what a
    sliding window compares) and the next token of every row goes in one new
    column. The cache holds every layer in full (``_new_cache``, no config):
    sliding-window layers are masked, not trimmed, because a trimmed layer
    cannot be padded or merged row by row.
    """

    def __init__(self) -> None:
        self.rows: list[_Row] = []
        self.cache: transformers.DynamicCache | None = None
        self.mask: torch.Tensor | None = None  # (rows, columns), 1 on real tokens

    def __len__(self) -> int:
        return len(self.rows)

    def keep(self, positions: list[int]) -> None:
        """Keep only these rows (finished ones leave), then drop columns that are padding in every row left."""
        if len(positions) == len(self.rows):
            return
        self.rows = [self.rows[p] for p in positions]
        if not positions or self.cache is None or self.mask is None:
            self.rows, self.cache, self.mask = [], None, None
            return
        index = torch.tensor(positions, device=self.mask.device)
        self.mask = self.mask.index_select(0, index)
        first = int(self.mask.any(dim=0).nonzero()[0, 0])
        self.mask = self.mask[:, first:]
        for layer in self.cache.layers:
            layer.replace(layer.keys.index_select(0, index)[:, :, first:], layer.values.index_select(0, index)[:, :, first:])

    def join(self, rows: list[_Row], cache: transformers.DynamicCache, mask: torch.Tensor) -> None:
        """Add rows whose prompt was just prefilled; the shorter side is padded on the left to a common length."""
        if self.cache is None or self.mask is None:
            self.rows, self.cache, self.mask = list(rows), cache, mask
            return
        width = max(self.mask.shape[1], mask.shape[1])
        self.mask = torch.cat([_left_pad(self.mask, width), _left_pad(mask, width)])
        for mine, theirs in zip(self.cache.layers, cache.layers):
            mine.replace(
                torch.cat([_left_pad(mine.keys, width, dim=2), _left_pad(theirs.keys, width, dim=2)]),
                torch.cat([_left_pad(mine.values, width, dim=2), _left_pad(theirs.values, width, dim=2)]),
            )
        self.rows.extend(rows)


def _left_pad(t: torch.Tensor, width: int, dim: int = 1) -> torch.Tensor:
    """``t`` with zeros added in front along ``dim`` up to ``width`` (padding is masked, so zeros are never read)."""
    missing = width - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


@dataclass
class _Engine:
    """The decode loop over the cache: prefill joining prompts, step every row, let finished rows leave."""

    model: transformers.PreTrainedModel
    tokenizer: transformers.PreTrainedTokenizerBase
    cfg: GenerationConfig
    prompts: list[str]
    capture: LastTokenCapture | None
    eos_ids: set[int]
    device: torch.device
    activations: dict[int, dict[int, np.ndarray]] = field(default_factory=dict)
    n_prompt_tokens: dict[int, int] = field(default_factory=dict)
    # Sequences of each prompt not yet returned; a prompt's vectors are dropped after its last one.
    unreturned: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.window = max((len(s) for s in self.cfg.stop_sequences), default=0) + 2
        self.sampling = self.cfg.temperature > 0
        self.warpers = transformers.LogitsProcessorList(
            [transformers.TemperatureLogitsWarper(self.cfg.temperature), transformers.TopPLogitsWarper(self.cfg.top_p)]
            if self.sampling
            else []
        )
        self.eos_tensor = torch.tensor(sorted(self.eos_ids), dtype=torch.long, device=self.device)

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache) -> torch.Tensor:
        out = self.model(
            input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1, :].float()

    def prefill(self, rows: list[_Row]) -> tuple[transformers.DynamicCache, torch.Tensor, torch.Tensor]:
        """One forward pass over the joining rows' prompts (each distinct prompt once); its cache, mask, last logits.

        The capture hooks see only this pass, so the last column is every
        prompt's last token; samples of one prompt then share its cache rows.
        """
        unique = list(dict.fromkeys(r.index for r in rows))
        enc = self.tokenizer([self.prompts[i] for i in unique], return_tensors="pt", padding=True).to(self.device)
        mask = enc["attention_mask"]
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
        cache = _new_cache()
        if self.capture is not None:
            with self.capture:
                logits = self._forward(enc["input_ids"], mask, positions, cache)
            captured = self.capture.activations()
            for i, index in enumerate(unique):
                self.activations.setdefault(index, {layer: a[i].copy() for layer, a in captured.items()})
        else:
            logits = self._forward(enc["input_ids"], mask, positions, cache)
        for index, count in zip(unique, mask.sum(dim=1).tolist()):
            self.n_prompt_tokens[index] = int(count)
        if len(unique) != len(rows):
            where = torch.tensor([unique.index(r.index) for r in rows], device=self.device)
            mask, logits = mask.index_select(0, where), logits.index_select(0, where)
            for layer in cache.layers:
                layer.replace(layer.keys.index_select(0, where), layer.values.index_select(0, where))
        return cache, mask, logits

    def step(self, slots: _Slots) -> torch.Tensor:
        """One decode step for every row in flight: feed each row's last token, return the next logits."""
        assert slots.mask is not None
        ids = torch.tensor([[r.tokens[-1]] for r in slots.rows], dtype=torch.long, device=self.device)
        positions = slots.mask.sum(dim=1, keepdim=True)
        slots.mask = torch.cat([slots.mask, slots.mask.new_ones((len(slots), 1))], dim=1)
        return self._forward(ids, slots.mask, positions, slots.cache)

    def choose(self, rows: list[_Row], logits: torch.Tensor) -> None:
        """Pick each row's next token (greedy, or from its own generator) and append it with its log-probability."""
        early = [len(r.tokens) < self.cfg.min_new_tokens for r in rows]
        if any(early) and len(self.eos_tensor):
            block = torch.tensor(early, device=self.device)[:, None] & torch.isin(
                torch.arange(logits.shape[1], device=self.device), self.eos_tensor
            )[None, :]
            logits = logits.masked_fill(block, float("-inf"))
        if not self.sampling:
            chosen = logits.argmax(dim=-1)
            logprobs = torch.log_softmax(logits, dim=-1).gather(1, chosen[:, None])[:, 0].tolist()
            for row, token, logprob in zip(rows, chosen.tolist(), logprobs):
                row.tokens.append(int(token))
                row.logprobs.append(float(logprob))
            return
        probs = torch.softmax(self.warpers(None, logits), dim=-1)
        for i, row in enumerate(rows):
            row.tokens.append(int(torch.multinomial(probs[i], 1, generator=row.generator)))

    def finished(self, row: _Row) -> bool:
        """Sets ``row.reason`` when the row just ended: EOS, a stop sequence ending in generated text, or the budget."""
        n = len(row.tokens)
        if n >= self.cfg.min_new_tokens:
            if row.tokens[-1] in self.eos_ids:
                row.reason = "eos"
            elif self.cfg.stop_sequences and self._hit_stop(row):
                row.reason = "stop_sequence"
        if row.reason is None and n >= self.cfg.max_new_tokens:
            row.reason = "max_new_tokens"
        return row.reason is not None

    def _hit_stop(self, row: _Row) -> bool:
        at_start = len(row.tokens) <= self.window
        tail = row.tail if at_start else ""
        text = tail + self.tokenizer.decode(row.tokens[-self.window :], skip_special_tokens=True)
        return any(text.find(stop, max(0, len(tail) - len(stop) + 1)) != -1 for stop in self.cfg.stop_sequences)

    def result(self, row: _Row) -> GenerationResult:
        self.unreturned[row.index] = self.unreturned.get(row.index, 1) - 1
        activations = self.activations.get(row.index, {})
        if self.unreturned[row.index] <= 0:
            self.activations.pop(row.index, None)
        return GenerationResult(
            index=row.index,
            prompt=self.prompts[row.index],
            generated_text=self.tokenizer.decode(row.tokens, skip_special_tokens=True),
            n_generated_tokens=len(row.tokens),
            activations=activations,
            gen_time_s=row.time_s,
            sample_index=row.sample_index,
            stop_reason=row.reason or "max_new_tokens",
            generated_token_ids=list(row.tokens),
            mean_logprob=float(np.mean(row.logprobs)) if row.logprobs else None,
            n_prompt_tokens=self.n_prompt_tokens.get(row.index, len(row.prompt_ids)),
        )


def sample_seed(prompt_seed: int, sample_index: int) -> int:
    """The seed of one sample's random stream: its prompt's seed and its sample number, nothing about its neighbours."""
    return derive_seed(prompt_seed, sample_index)


def generate_batches(
    model: transformers.PreTrainedModel,
    tokenizer: transformers.PreTrainedTokenizerBase,
    prompts: list[str],
    layers: list[int] | None,
    cfg: GenerationConfig,
    prompt_seeds: list[int] | None = None,
    wanted: list[tuple[int, int]] | None = None,
) -> Iterator[list[GenerationResult]]:
    """Generate with rows that leave and join; yield the results that finished at each step.

    ``cfg.batch_size`` rows run at once. A row finishes at EOS, a stop
    sequence (ending in generated text) or ``max_new_tokens``, and leaves at
    once; the next waiting sequences take the free rows (one prefill pass for
    all that join at that step), so the batch stays full until the queue is
    empty. Sequences wait longest prompt first (ties by position), so an
    out-of-memory error shows up at the start.

    ``layers``: decoder layers whose resid_post is captured at the last prompt
    token in the prefill pass (``None``: all; ``[]``: none); the samples of a
    prompt share its arrays. ``wanted``: the (prompt index, sample index)
    sequences to generate (default: every prompt x ``cfg.samples_per_prompt``).
    ``prompt_seeds``: each prompt's seed (default ``derive_seed(cfg.seed, index)``);
    a sampled sequence draws from its own generator seeded with
    ``sample_seed(prompt seed, sample index)``, so its sample does not depend
    on which sequences share the batch or when it joined.
    """
    _check_tokenizer(tokenizer)
    if not prompts:
        return
    device = next(model.parameters()).device
    seeds = prompt_seeds if prompt_seeds is not None else [derive_seed(cfg.seed, i) for i in range(len(prompts))]
    if wanted is None:
        wanted = [(i, s) for i in range(len(prompts)) for s in range(cfg.samples_per_prompt)]
    ids = tokenizer(prompts)["input_ids"]
    queue = [_new_row(i, s, ids[i], prompts[i], seeds[i], cfg, device) for i, s in wanted]
    queue.sort(key=lambda r: (-len(r.prompt_ids), r.index, r.sample_index))
    capture = LastTokenCapture(model, layers) if (layers is None or layers) else None
    engine = _Engine(model, tokenizer, cfg, prompts, capture, _eos_ids(model, tokenizer), device)
    for row in queue:
        engine.unreturned[row.index] = engine.unreturned.get(row.index, 0) + 1
    logger.info(
        "generating %d sequence(s) of %d prompt(s), %d rows at a time, max %d new tokens, %s",
        len(queue), len({i for i, _ in wanted}), cfg.batch_size, cfg.max_new_tokens,
        f"sampling T={cfg.temperature} top_p={cfg.top_p}" if engine.sampling else "greedy",
    )
    yield from _run_engine(engine, queue, cfg.batch_size)


def _new_row(index: int, sample: int, prompt_ids: list[int], prompt: str, seed: int, cfg: GenerationConfig,
             device: torch.device) -> _Row:
    generator = None
    if cfg.temperature > 0:
        generator = torch.Generator(device=device)
        generator.manual_seed(sample_seed(seed, sample))
    return _Row(index, sample, list(prompt_ids), prompt[-_PROMPT_TAIL_CHARS:], generator)


def _run_engine(engine: _Engine, queue: list[_Row], batch_size: int) -> Iterator[list[GenerationResult]]:
    """Admit waiting rows into free slots (one prefill), else step every row; yield rows as they finish."""
    slots = _Slots()
    waiting = list(reversed(queue))  # pop() takes the longest prompt first
    with torch.inference_mode():
        while waiting or len(slots):
            free = batch_size - len(slots)
            t0 = time.perf_counter()
            admitted = _admit(engine, slots, waiting, free, t0) if free > 0 and waiting else 0
            if admitted:
                stepped = range(len(slots) - admitted, len(slots))
            else:
                logits = engine.step(slots)
                engine.choose(slots.rows, logits)
                _charge(slots.rows, time.perf_counter() - t0)
                stepped = range(len(slots))
            ended = {p for p in stepped if engine.finished(slots.rows[p])}
            if ended:
                done = [slots.rows[p] for p in sorted(ended)]
                slots.keep([p for p in range(len(slots)) if p not in ended])
                yield [engine.result(row) for row in done]


def _admit(engine: _Engine, slots: _Slots, waiting: list[_Row], free: int, t0: float) -> int:
    """Prefill up to ``free`` waiting rows and join them to the batch; returns how many joined.

    A group joins only while the batch it makes stays at most
    ``MAX_DECODE_PADDING`` padding (an empty batch takes any group). Why: every
    decode step computes, and every join or leave copies, the whole padded
    cache; a 3,716-token MBPP prompt among prompts of about 100 would make 24
    rows attend over its width, and copy it at every join, for its whole
    generation (in the study that cost 7 of the 10 minutes of a validation pass).
    The rows that wait go back to the front of the queue and join once the
    long rows have left.
    """
    joining = [waiting.pop() for _ in range(min(free, len(waiting)))]
    admitted = 0
    groups = prefill_groups(joining)
    for number, group in enumerate(groups):
        if len(slots) and _decode_padding_share(slots, group) > MAX_DECODE_PADDING:
            waiting.extend(reversed([row for later in groups[number:] for row in later]))  # pop() takes the longest
            break
        cache, mask, logits = engine.prefill(group)
        engine.choose(group, logits)
        _charge(group, time.perf_counter() - t0)
        slots.join(group, cache, mask)
        admitted += len(group)
        t0 = time.perf_counter()
    return admitted


def _decode_padding_share(slots: _Slots, group: list[_Row]) -> float:
    """Share of the cache's positions that would be padding if ``group`` joined the batch now."""
    assert slots.mask is not None
    real = int(slots.mask.sum()) + sum(len(r.prompt_ids) for r in group)
    width = max(slots.mask.shape[1], *(len(r.prompt_ids) for r in group))
    return 1 - real / ((len(slots) + len(group)) * width)


MAX_PREFILL_PADDING = 0.25
# Joining rows wait while the batch would be more padding than this. Higher than the prefill cap because rows in
# flight differ in how much they have generated (up to the token budget), which is padding no admission rule avoids.
MAX_DECODE_PADDING = 0.75


def padding_capped_batches(lengths: Sequence[int], max_rows: int,
                           max_padding: float = MAX_PREFILL_PADDING) -> list[list[int]]:
    """Indices of ``lengths``, longest first (ties by index), in batches of at most ``max_rows`` in which at most
    ``max_padding`` of the positions are padding.

    For forward passes outside the engine (Phase 3's before-generation
    baselines, the steering norm): a batch is padded to its longest prompt, so
    MBPP's 3,716-token prompt among prompts of about 100 made one batch of 8
    cost minutes and gigabytes; here it runs with the few prompts near its length.
    """
    batches: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        last = batches[-1] if batches else []
        longest = lengths[last[0]] if last else 0
        share = 1 - (sum(lengths[j] for j in last) + lengths[i]) / ((len(last) + 1) * max(longest, 1)) if last else 0.0
        if last and len(last) < max(1, max_rows) and share <= max_padding:
            last.append(i)
        else:
            batches.append([i])
    return batches


def prefill_groups(rows: list[_Row], max_padding: float = MAX_PREFILL_PADDING) -> list[list[_Row]]:
    """The joining rows (longest prompt first) split into prefill passes in which at most ``max_padding`` of the
    positions computed are padding (a quarter by default).

    Why: one pass pads every prompt to its longest, and attention's memory
    grows with the square of that length. MBPP has one 3,716-token prompt
    among prompts of about 100: prefilled with 7 others it cost SmolLM2 a
    5.8 GB peak on the CPU, and at 128 rows on a GPU it would ask tens of GB
    for one pass. Rows of similar length still share one pass.
    """
    groups: list[list[_Row]] = []
    for row in rows:
        if groups and _padding_share(groups[-1] + [row]) <= max_padding:
            groups[-1].append(row)
        else:
            groups.append([row])
    return groups


def _padding_share(rows: list[_Row]) -> float:
    """Share of a prefill pass's positions that are padding (each distinct prompt is computed once)."""
    lengths = list({r.index: len(r.prompt_ids) for r in rows}.values())
    return 1 - sum(lengths) / (len(lengths) * max(lengths))


def _charge(rows: list[_Row], seconds: float) -> None:
    """Split a pass's wall time over the rows it served (their amortised cost)."""
    for row in rows:
        row.time_s += seconds / len(rows)
