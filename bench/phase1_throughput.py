"""Benchmark: Phase 1 generation, static batches against the engine whose rows leave and join.

Why: the engine (``common.modeling.generation.generate_batches``) exists to stop paying
for rows that have finished. Every speed claim is a ratio measured side by side
in one run, on the same prompts, model, batch size and settings:

- static: ``generate_static_batches``, fixed batches sorted longest prompt
  first, each one ``model.generate`` call that runs until its longest row ends
  (what every phase did before the engine);
- engine: the same prompts through ``generate_batches``.

Both decode greedily with the real stop rules (EOS and the stop sequences) and
capture every layer at the last prompt token, as Phase 1 does. "Useful tokens"
are the tokens each sequence keeps (up to its stop); tokens per second is
useful tokens over wall time. The two ways alternate ``--repeats`` times and
each keeps its best time, so a burst of load from other processes on a shared
machine does not decide the ratio. Outputs are equal when every sequence has
the same token ids both ways (float32: a mismatch is a failure, exit 1; bf16
rounding depends on batch shape, so there it is reported only).

Models:
  --model DIR          a local model folder (e.g. SmolLM2 converted by common/modeling/gguf_convert.py),
                       loaded as Phase 1 loads it (attention chosen per architecture).
  --tiny               (default) a random tiny Gemma-2 built in a temp dir, tokenizer trained on the prompts.
  --gemma-2-2b-shapes  random weights with gemma-2-2b's exact config, built on the device in bf16;
                       with random weights rows rarely stop, so add --forced to time pure decoding
                       and compare with the memory-bandwidth bound printed at the end.

Imports nothing beyond torch, transformers, tokenizers and numpy (no
transformer_lens, sae_lens or datasets): the GPU machine has only those.

Run from the repository root, as a module:
    python3 -m bench.phase1_throughput --model DIR --mbpp-path FILE --n-prompts N --max-new-tokens T
    python3 -m bench.phase1_throughput                     # a tiny random Gemma 2, CPU
    python3 -m bench.phase1_throughput --gemma-2-2b-shapes --device cuda

The last line is ``ratio <x> outputs_equal <true|false>``.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import transformers

from common.benchmarks.mbpp import load_mbpp
from common.modeling.generation import (
    GenerationConfig,
    GenerationResult,
    auto_batch_size,
    generate_batches,
    generate_static_batches,
)
from common.modeling.models import load_model_and_tokenizer, resolve_device, text_sizes
from common.prompts import build_prompt
from demo.tiny_model import build_random_tiny_model, train_tokenizer

# Peak HBM bandwidth (GB/s) of the GPUs the study runs on, for the bound on decode speed.
BANDWIDTH_GBS = {"H200": 4800.0, "H100": 3350.0, "A100": 2039.0}

_WORDS = (
    "write a python function to find the sum of all elements in list given string number check whether "
    "two tuples maximum minimum element sorted array characters remove duplicate words count occurrences "
    "of each matrix path cost dictionary keys values return true if it is a prime"
).split()

Generate = Callable[..., Iterator[list[GenerationResult]]]


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
            f"assert {name}({rng.sample(range(100), rng.randint(1, 8))}, {rng.randint(0, 9)}) == {rng.randint(0, 999)}"
            for _ in range(3)
        ]
        prompts.append(build_prompt(" ".join(sentences), asserts))
    return prompts


def mbpp_prompts(path: Path, n: int) -> list[str]:
    """The first ``n`` MBPP problems as Phase 1's plain prompt (problem text and its asserts)."""
    rows = load_mbpp(path).head(n).to_dict("records")  # the pipeline's strict reader; the file is in task order
    return [build_prompt(row["text"], row["test_list"]) for row in rows]


def gemma_2_2b_config(n_layers: int) -> transformers.Gemma2Config:
    """gemma-2-2b's exact config (docs/design.md section 5); ``n_layers`` < 26 only for CPU smoke tests."""
    config = transformers.Gemma2Config(
        vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=n_layers,
        num_attention_heads=8, num_key_value_heads=4, head_dim=256, hidden_activation="gelu_pytorch_tanh",
        max_position_embeddings=8192, rms_norm_eps=1e-6, pad_token_id=0, eos_token_id=1, bos_token_id=2,
        tie_word_embeddings=True, rope_theta=10000.0, query_pre_attn_scalar=256, sliding_window=4096,
        final_logit_softcapping=30.0, attn_logit_softcapping=50.0,
    )
    config._attn_implementation = "eager"
    return config


def build_gemma_shapes(prompts: list[str], device: torch.device, dtype: torch.dtype, n_layers: int):
    """Random gemma-2-2b-shaped model created directly on the device in ``dtype``."""
    from common.modeling.models import attention_implementation

    tokenizer = train_tokenizer(prompts, vocab_size=2048)
    config = gemma_2_2b_config(n_layers)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    attention = attention_implementation(config, device, dtype)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attention)
    model.eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    n_params = sum(p.numel() for p in model.parameters())
    log(f"built random gemma-2-2b-shaped model ({n_params / 1e9:.2f}B params, {n_layers} layers, attention "
        f"{attention}) on {device} in {dtype} in {time.perf_counter() - t0:.1f} s")
    return model, tokenizer


def timed(generate: Generate, model, tokenizer, prompts: list[str], cfg: GenerationConfig, label: str):
    """Results (sorted by prompt), wall time and process CPU time of one way over all prompts, capturing every layer.

    CPU time is printed beside wall time because on a shared CPU other
    processes stretch the wall time of whichever way happens to run under load.
    """
    device = next(model.parameters()).device
    results: list[GenerationResult] = []
    t0, c0 = time.perf_counter(), time.process_time()
    for finished in generate(model, tokenizer, prompts, None, cfg):
        results.extend(finished)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    log(f"  [{label}] {len(results)} sequences, {sum(r.n_generated_tokens for r in results)} useful tokens, "
        f"{seconds:.1f} s wall, {cpu:.1f} s CPU")
    return sorted(results, key=lambda r: (r.index, r.sample_index)), seconds, cpu


def bandwidth_bound(model, device: torch.device, batch_size: int, context: int) -> str | None:
    """Tokens/s if every decode step only read the weights and a batch's KV cache at peak HBM bandwidth."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    gbs = next((v for k, v in BANDWIDTH_GBS.items() if k in name), None)
    if gbs is None:
        return None
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    sizes = text_sizes(model)
    kv = 2 * sizes.n_layers * sizes.n_key_value_heads * sizes.d_head * next(model.parameters()).element_size()
    step_bytes = weights + batch_size * context * kv
    steps = gbs * 1e9 / step_bytes
    return f"{steps * batch_size:.0f} tokens/s ({gbs:.0f} GB/s, {weights / 1e9:.2f} GB weights, batch {batch_size}, " \
           f"mean context {context})"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--model", type=Path, default=None, help="a local model folder")
    mode.add_argument("--tiny", action="store_true", help="random tiny Gemma-2 (default)")
    mode.add_argument("--gemma-2-2b-shapes", action="store_true", help="random weights, gemma-2-2b's exact shapes")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                        help="auto: float32 on CPU, bfloat16 on CUDA")
    parser.add_argument("--mbpp-path", type=Path, default=None, help="MBPP jsonl (default: synthetic prompts)")
    parser.add_argument("--n-prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=None, help="rows at once (default 8 on CPU, auto on GPU)")
    parser.add_argument("--engine-batch-size", type=int, default=None,
                        help="the engine's rows at once, if not --batch-size: other neighbours and shapes for the same "
                             "prompts, a batch-invariance check (compare outputs, not speed)")
    parser.add_argument("--forced", action="store_true", help="every row runs to --max-new-tokens (random weights)")
    parser.add_argument("--n-layers", type=int, default=26, help="gemma-2-2b-shapes only: fewer layers (CPU smoke test)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=None, help="alternations, best time kept (default 2 CPU, 1 GPU)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def load(args: argparse.Namespace, prompts: list[str], device: torch.device, dtype: torch.dtype, tmp: Path):
    if args.model is not None:
        return load_model_and_tokenizer(str(args.model), device, dtype)
    if args.gemma_2_2b_shapes:
        return build_gemma_shapes(prompts, device, dtype, args.n_layers)
    folder = build_random_tiny_model(
        tmp / "tiny", prompts, seed=args.seed, vocab_size=1024, hidden_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, intermediate_size=512, initializer_range=0.1,
    )
    return load_model_and_tokenizer(str(folder), device, dtype)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(
        args.dtype, torch.bfloat16 if device.type == "cuda" else torch.float32
    )
    prompts = mbpp_prompts(args.mbpp_path, args.n_prompts) if args.mbpp_path else synthetic_prompts(args.n_prompts, args.seed)
    source = str(args.model) if args.model else ("gemma-2-2b-shapes" if args.gemma_2_2b_shapes else "tiny random Gemma-2")
    log(f"model {source} on {device} ({dtype}), {len(prompts)} prompts ({'MBPP' if args.mbpp_path else 'synthetic'}), "
        f"max {args.max_new_tokens} new tokens{' (forced)' if args.forced else ''}; torch {torch.__version__}, "
        f"transformers {transformers.__version__}")
    if device.type == "cuda":
        log(f"GPU: {torch.cuda.get_device_name(device)}")
    with tempfile.TemporaryDirectory(prefix="pva_bench_") as tmp:
        model, tokenizer = load(args, prompts, device, dtype, Path(tmp))
        log(f"attention {model.config._attn_implementation}")
        lengths = [len(ids) for ids in tokenizer(prompts)["input_ids"]]
        log(f"prompt lengths (tokens): min {min(lengths)}, median {int(np.median(lengths))}, max {max(lengths)}")
        batch_size = args.batch_size or (auto_batch_size(model, device) if device.type == "cuda" else 8)
        forced = args.max_new_tokens if args.forced else 0
        cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=batch_size, min_new_tokens=forced)
        configs = {"static": cfg, "engine": dataclasses.replace(cfg, batch_size=args.engine_batch_size or batch_size)}
        log(f"batch size {batch_size} (engine {configs['engine'].batch_size}); warm-up")
        timed(generate_batches, model, tokenizer, prompts[:2], GenerationConfig(max_new_tokens=4, batch_size=2), "warm-up")
        repeats = args.repeats or (1 if device.type == "cuda" else 2)
        times: dict[str, list[float]] = {"static": [], "engine": []}
        cpu: dict[str, list[float]] = {"static": [], "engine": []}
        results: dict[str, list[GenerationResult]] = {}
        for rep in range(repeats):
            log(f"round {rep + 1}/{repeats}")
            for label, generate in (("static", generate_static_batches), ("engine", generate_batches)):
                results[label], seconds, cpu_seconds = timed(generate, model, tokenizer, prompts, configs[label], label)
                times[label].append(seconds)
                cpu[label].append(cpu_seconds)
        return report(model, device, dtype, (batch_size, configs["engine"].batch_size), lengths, times, cpu, results)


def report(model, device, dtype, batch_sizes: tuple[int, int], lengths: list[int], times, cpu, results) -> int:
    static, engine = results["static"], results["engine"]
    batch_size, engine_batch_size = batch_sizes
    useful = sum(r.n_generated_tokens for r in engine)
    static_tps = sum(r.n_generated_tokens for r in static) / min(times["static"])
    engine_tps = useful / min(times["engine"])
    equal = [s.generated_token_ids == e.generated_token_ids for s, e in zip(static, engine)]
    act_diff = max(
        (float(np.abs(s.activations[layer] - e.activations[layer]).max())
         for s, e in zip(static, engine) for layer in s.activations),
        default=0.0,
    )
    stops: dict[str, int] = {}
    for r in engine:
        stops[r.stop_reason] = stops.get(r.stop_reason, 0) + 1
    ratio = engine_tps / static_tps
    log("")
    log(f"wall per round (s): static {[round(t, 1) for t in times['static']]}, engine {[round(t, 1) for t in times['engine']]}")
    log(f"CPU per round (s): static {[round(t, 1) for t in cpu['static']]}, engine {[round(t, 1) for t in cpu['engine']]}; "
        f"ratio by best CPU time {min(cpu['static']) / min(cpu['engine']):.2f}")
    log(f"generated lengths: min {min(r.n_generated_tokens for r in engine)}, "
        f"median {int(np.median([r.n_generated_tokens for r in engine]))}, max {max(r.n_generated_tokens for r in engine)}; "
        f"stop reasons {stops}")
    log(f"static : {static_tps:.1f} useful tokens/s (batch size {batch_size}, fixed batches)")
    log(f"engine : {engine_tps:.1f} useful tokens/s (batch size {engine_batch_size}, rows leave and join)")
    log(f"outputs equal: {sum(equal)}/{len(equal)} sequences; max |activation diff| static vs engine {act_diff:.3g}")
    bound = bandwidth_bound(model, device, engine_batch_size, int(np.mean(lengths)) + max(r.n_generated_tokens for r in engine) // 2)
    if bound:
        log(f"bandwidth bound: {bound}; engine at {100 * engine_tps / float(bound.split()[0]):.1f}% of it")
    all_equal = all(equal)
    if not all_equal and dtype == torch.float32:
        log("FAIL: static and engine greedy outputs differ in float32")
    log(f"ratio {ratio:.2f} outputs_equal {'true' if all_equal else 'false'}")
    return 1 if (not all_equal and dtype == torch.float32) else 0


if __name__ == "__main__":
    sys.exit(main())
