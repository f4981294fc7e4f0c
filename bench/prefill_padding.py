"""Benchmark: the engine's prefill grouping against one prefill pass for all joining rows.

Why: the engine pads the prompts it prefills together to the longest of them,
and attention's memory grows with the square of that length. MBPP has one
prompt of 3,716 SmolLM2 tokens among prompts of about 100; longest first, it
joins the first batch with the next 7 longest. Both ways run here, each in
its own process (so each has its own resident-set peak), on the same prompts,
model and settings, greedy, capturing every layer as Phase 1 does:

- one pass: every joining row in one prefill pass (the engine before grouping);
- grouped: ``common.modeling.generation.prefill_groups``, passes at most a quarter padding.

It prints each way's peak RSS and wall time, whether the generated texts are
equal, and the ratios. Imports only torch, transformers and pandas.

Run from the repository root, as a module:
    python3 -m bench.prefill_padding --model DIR --mbpp-path FILE [--n-prompts 8] [--max-new-tokens 256]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench.ways import peak_rss_mb, ratio_line, run_ways

WAYS = ("one-pass", "grouped")


def longest_prompts(mbpp_path: Path, tokenizer, n: int) -> list[str]:
    """The ``n`` longest Phase 1 prompts of the MBPP file (the first batch the engine admits)."""
    from common.benchmarks.mbpp import load_mbpp
    from common.prompts import build_prompt

    problems = load_mbpp(str(mbpp_path))
    prompts = [build_prompt(row["text"], row["test_list"]) for row in problems.to_dict("records")]
    return sorted(prompts, key=lambda p: -len(tokenizer(p)["input_ids"]))[:n]


def run_one(way: str, model_dir: Path, mbpp_path: Path, n: int, max_new_tokens: int) -> dict:
    """Generate in this process, one way; return its peak RSS (VmHWM), wall time and texts."""
    import torch

    import common.modeling.generation as generation
    from common.modeling.models import load_model_and_tokenizer

    torch.set_num_threads(1)
    if way == "one-pass":
        generation.prefill_groups = lambda rows, max_padding=1.0: [rows]
    model, tokenizer = load_model_and_tokenizer(str(model_dir), torch.device("cpu"), torch.float32)
    prompts = longest_prompts(mbpp_path, tokenizer, n)
    cfg = generation.GenerationConfig(max_new_tokens=max_new_tokens, batch_size=n)
    t0 = time.perf_counter()
    results = {r.index: r for batch in generation.generate_batches(model, tokenizer, prompts, None, cfg) for r in batch}
    wall = time.perf_counter() - t0
    return {"way": way, "peak_mb": peak_rss_mb(), "wall_s": wall,
            "prompt_tokens": sorted((r.n_prompt_tokens for r in results.values()), reverse=True),
            "texts": [results[i].generated_text for i in range(len(prompts))]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a local model folder (e.g. the converted SmolLM2)")
    parser.add_argument("--mbpp-path", type=Path, required=True)
    parser.add_argument("--n-prompts", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--way", choices=WAYS, help=argparse.SUPPRESS)  # the child process's side
    args = parser.parse_args(argv)
    if args.way:
        print(json.dumps(run_one(args.way, args.model, args.mbpp_path, args.n_prompts, args.max_new_tokens)))
        return 0
    out = run_ways("bench.prefill_padding", WAYS)
    for way in WAYS:
        print(f"{way:9s}: peak RSS {out[way]['peak_mb']:.0f} MB, {out[way]['wall_s']:.1f} s "
              f"(prompt tokens {out[way]['prompt_tokens']})", flush=True)
    equal = sum(a == b for a, b in zip(out["one-pass"]["texts"], out["grouped"]["texts"]))
    print(f"texts equal: {equal}/{len(out['grouped']['texts'])}")
    print(ratio_line(out["one-pass"], out["grouped"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
