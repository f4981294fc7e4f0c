"""Benchmark: Phase 1 generation, batched (``generate_batches``) against one problem at a time.

Why: docs/design.md section 5 says Phase 1 must not generate one problem at a time,
and every speed claim is a ratio against the naive way measured side by side
in one run on the same prompts. Both ways use the same model, prompts, greedy
decoding, forced length (``min_new_tokens = max_new_tokens``: random weights
would otherwise stop at random) and activation capture at every layer; the
naive way is ``generate_batches`` with one prompt per call, the batched way
sorts by length, left-pads and runs ``--batch-size`` prompts per call. On a
shared CPU the two ways alternate ``--repeats`` times and each keeps its best
time, so a burst of load from other processes does not decide the ratio. It also
checks that both give the same greedy tokens (rule 5): on float32 a mismatch
fails the run; on bf16 GPU it is reported (bf16 rounding differs between batch
shapes, so near-ties can flip).

Modes:
  --tiny               (default on CPU) a random tiny Gemma-2 (d_model 128,
                       4 layers, the docs/design.md section 6 demo size) built in a temp
                       dir, tokenizer trained on the prompts.
  --gemma-2-2b-shapes  random weights with gemma-2-2b's exact config, built
                       directly on the device in bf16 (cuda) to skip a slow CPU
                       init; the tokenizer is a small BPE trained on the prompts
                       (ids are valid gemma ids; text is meaningless anyway).

Imports nothing beyond torch, transformers, tokenizers and numpy (no
transformer_lens, sae_lens or datasets): the GPU machine has only those.

Run from the repository root, as a module:
    python3 -m bench.phase1_throughput                     # tiny, CPU
    python3 -m bench.phase1_throughput --gemma-2-2b-shapes --device cuda
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers

from common.generation import GenerationConfig, GenerationResult, auto_batch_size, generate_batches
from common.models import load_model_and_tokenizer, resolve_device
from common.prompts import build_prompt
from demo.tiny_model import build_random_tiny_model, train_tokenizer

N_MBPP_PROBLEMS = 974

_WORDS = (
    "write a python function to find the sum of all elements in list given string number check whether "
    "two tuples maximum minimum element sorted array characters remove duplicate words count occurrences "
    "of each matrix path cost dictionary keys values return true if it is a prime"
).split()


def log(message: str) -> None:
    print(message, flush=True)


def synthetic_prompts(n: int, seed: int) -> list[str]:
    """MBPP-like prompts of varying length (a 1-4 sentence problem, three asserts)."""
    rng = random.Random(seed)
    prompts = []
    for i in range(n):
        sentences = [
            " ".join(rng.choices(_WORDS, k=rng.randint(8, 30))).capitalize() + "." for _ in range(rng.randint(1, 4))
        ]
        name = f"func_{i}"
        asserts = [
            f"assert {name}({rng.sample(range(100), rng.randint(1, 8))}, {rng.randint(0, 9)})"
            f" == {rng.randint(0, 999)}"
            for _ in range(3)
        ]
        prompts.append(build_prompt(" ".join(sentences), asserts))
    return prompts


def mbpp_prompts(path: Path, n: int) -> list[str]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [build_prompt(row["text"], row["test_list"]) for row in rows[:n]]


def gemma_2_2b_config(n_layers: int) -> transformers.Gemma2Config:
    """gemma-2-2b's exact config (docs/design.md section 5); ``n_layers`` < 26 only for CPU smoke tests."""
    config = transformers.Gemma2Config(
        vocab_size=256000,
        hidden_size=2304,
        intermediate_size=9216,
        num_hidden_layers=n_layers,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=256,
        hidden_activation="gelu_pytorch_tanh",
        max_position_embeddings=8192,
        rms_norm_eps=1e-6,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        tie_word_embeddings=True,
        rope_theta=10000.0,
        query_pre_attn_scalar=256,
        sliding_window=4096,
        final_logit_softcapping=30.0,
        attn_logit_softcapping=50.0,
    )
    config._attn_implementation = "eager"
    return config


def build_gemma_shapes(prompts: list[str], device: torch.device, dtype: torch.dtype, n_layers: int):
    """Random gemma-2-2b-shaped model created directly on the device in ``dtype``."""
    tokenizer = train_tokenizer(prompts, vocab_size=2048)
    config = gemma_2_2b_config(n_layers)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="eager")
    model.eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    n_params = sum(p.numel() for p in model.parameters())
    log(f"built random gemma-2-2b-shaped model ({n_params / 1e9:.2f}B params, {n_layers} layers) "
        f"on {device} in {dtype} in {time.perf_counter() - t0:.1f} s")
    return model, tokenizer


def run(model, tokenizer, prompts: list[str], cfg: GenerationConfig, label: str) -> tuple[list[GenerationResult], float]:
    """Generate for ``prompts`` with ``cfg`` (capturing every layer), return results sorted by index and wall time."""
    results: list[GenerationResult] = []
    device = next(model.parameters()).device
    t0 = time.perf_counter()
    for batch in generate_batches(model, tokenizer, prompts, None, cfg):
        results.extend(batch)
        log(f"  [{label}] {len(results)}/{len(prompts)} prompts, {time.perf_counter() - t0:.1f} s")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return sorted(results, key=lambda r: r.index), time.perf_counter() - t0


def naive(model, tokenizer, prompts: list[str], base: GenerationConfig) -> tuple[list[GenerationResult], float]:
    """One prompt per ``generate`` call: what Phase 1 must not do."""
    cfg = GenerationConfig(**{**base.__dict__, "batch_size": 1})
    results: list[GenerationResult] = []
    t0 = time.perf_counter()
    for i, prompt in enumerate(prompts):
        for batch in generate_batches(model, tokenizer, [prompt], None, cfg):
            for r in batch:
                r.index = i  # position in the benchmark's list, to pair with the batched result
                results.append(r)
        log(f"  [naive] {i + 1}/{len(prompts)} prompts, {time.perf_counter() - t0:.1f} s")
    return results, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--tiny", action="store_true", help="random tiny Gemma-2 (default)")
    mode.add_argument("--gemma-2-2b-shapes", action="store_true", help="random weights, gemma-2-2b's exact shapes")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--n-prompts", type=int, default=None,
        help="prompts for the batched way (default 64 tiny, 128 gemma)")
    parser.add_argument("--naive-n", type=int, default=None,
        help="prompts timed the naive way (default 16 on CPU, 8 on GPU)")
    parser.add_argument("--batch-size", type=int, default=None,
        help="sequences per generate call (default: 32 on CPU, auto on GPU)")
    parser.add_argument("--max-new-tokens", type=int, default=None,
        help="forced generation length (default 128 tiny, 512 gemma)")
    parser.add_argument("--mbpp-path", type=Path, default=None,
        help="build prompts from this MBPP jsonl instead of synthetic ones")
    parser.add_argument("--n-layers", type=int, default=26,
        help="gemma-2-2b-shapes only: fewer layers for a CPU smoke test")
    parser.add_argument("--threads", type=int, default=1,
        help="torch CPU threads (1: tiny matmuls gain nothing from more)")
    parser.add_argument("--repeats", type=int, default=None,
        help="alternate naive and batched this many times, keep each one's best time (default 3 on CPU, 1 on GPU)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    gemma = bool(args.gemma_2_2b_shapes)
    n_prompts = args.n_prompts or (128 if gemma else 64)
    max_new = args.max_new_tokens or (512 if gemma else 128)
    prompts = mbpp_prompts(args.mbpp_path, n_prompts) if args.mbpp_path else synthetic_prompts(n_prompts, args.seed)
    n_prompts = len(prompts)
    naive_n = min(n_prompts, args.naive_n or (8 if device.type == "cuda" else 16))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    log(f"mode {'gemma-2-2b-shapes' if gemma else 'tiny'} on {device} ({dtype}), {n_prompts} prompts "
        f"({'MBPP' if args.mbpp_path else 'synthetic'}), {max_new} new tokens each (forced), naive on {naive_n}")
    if device.type == "cuda":
        log(f"GPU: {torch.cuda.get_device_name(device)}; torch {torch.__version__}, transformers {transformers.__version__}")

    with tempfile.TemporaryDirectory(prefix="pva_bench_") as tmp:
        if gemma:
            model, tokenizer = build_gemma_shapes(prompts, device, dtype, args.n_layers)
        else:
            folder = build_random_tiny_model(
                Path(tmp) / "tiny", prompts, seed=args.seed, vocab_size=1024, hidden_size=128,
                num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                intermediate_size=512, initializer_range=0.1,
            )
            model, tokenizer = load_model_and_tokenizer(str(folder), device, dtype)
        lengths = [len(ids) for ids in tokenizer(prompts)["input_ids"]]
        log(f"prompt lengths (tokens): min {min(lengths)}, median {int(np.median(lengths))}, max {max(lengths)}")
        batch_size = args.batch_size or (auto_batch_size(model, device) if device.type == "cuda" else 32)
        batch_size = min(batch_size, n_prompts)
        base = GenerationConfig(max_new_tokens=max_new, batch_size=batch_size, min_new_tokens=max_new, stop_sequences=())

        log("warm-up (one short generation)")
        run(model, tokenizer, prompts[:2], GenerationConfig(max_new_tokens=4, batch_size=2, stop_sequences=()), "warm-up")

        # Alternating repeats, best time of each: a shared machine's load then hits both ways alike.
        repeats = args.repeats or (1 if device.type == "cuda" else 3)
        naive_times: list[float] = []
        batched_times: list[float] = []
        for rep in range(repeats):
            log(f"naive (round {rep + 1}/{repeats}): {naive_n} prompts, one per generate call")
            naive_results, seconds = naive(model, tokenizer, prompts[:naive_n], base)
            naive_times.append(seconds)
            log(f"batched (round {rep + 1}/{repeats}): {n_prompts} prompts, batch size {batch_size}, longest first")
            batched_results, seconds = run(model, tokenizer, prompts, base, "batched")
            batched_times.append(seconds)
        naive_s, batched_s = min(naive_times), min(batched_times)

    naive_tokens = sum(r.n_generated_tokens for r in naive_results)
    batched_tokens = sum(r.n_generated_tokens for r in batched_results)
    naive_tps = naive_tokens / naive_s
    batched_tps = batched_tokens / batched_s
    matches = sum(n.generated_token_ids == b.generated_token_ids for n, b in zip(naive_results, batched_results))
    act_diff = max(
        float(np.abs(n.activations[layer] - b.activations[layer]).max())
        for n, b in zip(naive_results, batched_results)
        for layer in n.activations
    )
    hours = lambda tps: N_MBPP_PROBLEMS * max_new / tps / 3600  # noqa: E731

    log("")
    log(f"times per round (s): naive {[round(t, 1) for t in naive_times]}, batched {[round(t, 1) for t in batched_times]}")
    log(f"naive   : {naive_tokens} tokens in {naive_s:.1f} s = {naive_tps:.1f} tokens/s")
    log(f"batched : {batched_tokens} tokens in {batched_s:.1f} s = {batched_tps:.1f} tokens/s (batch size {batch_size})")
    log(f"ratio   : {batched_tps / naive_tps:.1f}x (batched / naive tokens per second)")
    log(f"projected for {N_MBPP_PROBLEMS} problems x {max_new} tokens: naive {hours(naive_tps):.2f} h, "
        f"batched {hours(batched_tps):.2f} h (upper bound: real runs stop early)")
    log(f"greedy outputs identical: {matches}/{naive_n}; max |activation diff| naive vs batched: {act_diff:.3g}")
    if matches != naive_n and dtype == torch.float32:
        log("FAIL: batched and unbatched greedy outputs differ in float32 (rule 5)")
        return 1
    if matches != naive_n:
        log("note: bf16 rounding depends on batch shape; mismatches here are reported, not failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
