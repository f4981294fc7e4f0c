"""Benchmark: the engine's cap on a decode batch's padding against rows joining whatever the padding.

Why: every decode step attends over, and every join or leave copies, the
whole padded KV cache. MBPP has one prompt of 3,716 SmolLM2 tokens among
prompts of about 100; without a cap, the rows that join it are padded to its
width for as long as it generates. Both ways run here, each in its own process
(so each has its own resident-set peak), on the same prompts, model and
settings, greedy, as Phase 1 and Phase 3 generate:

- uncapped: ``common.modeling.generation.MAX_DECODE_PADDING`` set to 1 (any row joins);
- capped: the engine as it is (rows join while the batch is at most three quarters padding).

The prompts: MBPP's longest Phase 1 prompt and ``--n-prompts`` - 1 others
evenly spaced over the file (``bench.forward_batches.bench_prompts``). It
prints each way's peak RSS and wall time, whether the generated texts are
equal, and the ratios.

Run from the repository root, as a module:
    python3 -m bench.decode_padding --model DIR --mbpp-path FILE [--n-prompts 48] [--batch-size 24]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench.ways import peak_rss_mb, ratio_line, run_ways

WAYS = ("uncapped", "capped")


def run_one(way: str, model_dir: Path, mbpp_path: Path, n: int, batch_size: int, max_new_tokens: int) -> dict:
    """Generate in this process, one way; return its peak RSS (VmHWM), wall time and texts."""
    import torch

    import common.modeling.generation as generation
    from bench.forward_batches import bench_prompts
    from common.modeling.models import load_model_and_tokenizer

    torch.set_num_threads(1)
    if way == "uncapped":
        generation.MAX_DECODE_PADDING = 1.0
    model, tokenizer = load_model_and_tokenizer(str(model_dir), torch.device("cpu"), torch.float32)
    prompts = bench_prompts(mbpp_path, tokenizer, n)
    cfg = generation.GenerationConfig(max_new_tokens=max_new_tokens, batch_size=batch_size)
    t0 = time.perf_counter()
    results = {r.index: r for batch in generation.generate_batches(model, tokenizer, prompts, None, cfg) for r in batch}
    wall = time.perf_counter() - t0
    return {"way": way, "peak_mb": peak_rss_mb(), "wall_s": wall,
            "texts": [results[i].generated_text for i in range(len(prompts))],
            "generated": sorted(len(r.generated_token_ids) for r in results.values())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a local model folder (e.g. the converted SmolLM2)")
    parser.add_argument("--mbpp-path", type=Path, required=True)
    parser.add_argument("--n-prompts", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=24)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--way", choices=WAYS, help=argparse.SUPPRESS)  # the child process's side
    args = parser.parse_args(argv)
    if args.way:
        print(json.dumps(run_one(args.way, args.model, args.mbpp_path, args.n_prompts, args.batch_size,
                                 args.max_new_tokens)))
        return 0
    out = run_ways("bench.decode_padding", WAYS)
    for way in WAYS:
        lengths = out[way]["generated"]
        print(f"{way:8s}: peak RSS {out[way]['peak_mb']:.0f} MB, {out[way]['wall_s']:.1f} s "
              f"(generated tokens: median {lengths[len(lengths) // 2]}, max {lengths[-1]})", flush=True)
    equal = sum(a == b for a, b in zip(out["uncapped"]["texts"], out["capped"]["texts"]))
    print(f"texts equal: {equal}/{len(out['capped']['texts'])}")
    print(ratio_line(out["uncapped"], out["capped"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
