"""Benchmark: Phase 3's forward passes in batches of similar length against fixed batches, longest first.

Why: Phase 3's before-generation baselines (and the steering norm) run one
forward pass per batch of prompts, and a batch is padded to its longest
prompt. MBPP has one prompt of 3,716 SmolLM2 tokens among prompts of about
100; in fixed batches taken longest first it pads the whole first batch.
Both ways run here, each in its own process (so each has its own
resident-set peak), on the same prompts, model and batch size, computing the
next-token log-probabilities after each prompt with
``phase3_validation.prompt_confidence.next_token_log_probs``:

- fixed: batches of ``--batch-size`` prompts, longest first (what Phase 3 did before);
- capped: ``common.modeling.generation.padding_capped_batches``, at most
  ``--batch-size`` prompts and at most a quarter padding per batch.

The prompts: MBPP's longest Phase 1 prompt and ``--n-prompts`` - 1 others
evenly spaced over the file (a split's mix of lengths). It prints each way's
peak RSS and wall time, the largest difference between the two ways'
log-probabilities and whether every prompt's most likely next token is the
same, and the ratios.

Run from the repository root, as a module:
    python3 -m bench.forward_batches --model DIR --mbpp-path FILE [--n-prompts 96] [--batch-size 24]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench.ways import peak_rss_mb, ratio_line, run_ways

WAYS = ("fixed", "capped")


def bench_prompts(mbpp_path: Path, tokenizer, n: int) -> list[str]:
    """MBPP's longest Phase 1 prompt and ``n - 1`` others evenly spaced over the file."""
    from common.benchmarks.mbpp import load_mbpp
    from common.prompts import build_prompt

    problems = load_mbpp(str(mbpp_path))
    prompts = [build_prompt(row["text"], row["test_list"]) for row in problems.to_dict("records")]
    longest = max(range(len(prompts)), key=lambda i: len(tokenizer(prompts[i])["input_ids"]))
    others = [i for i in range(len(prompts)) if i != longest]
    step = max(1, len(others) // max(1, n - 1))
    return [prompts[longest]] + [prompts[i] for i in others[::step][: n - 1]]


def run_one(way: str, model_dir: Path, mbpp_path: Path, n: int, batch_size: int, out: Path) -> dict:
    """Compute the log-probabilities in this process, one way; save them to ``out``; return peak RSS and time."""
    import numpy as np
    import torch

    from common.modeling.models import load_model_and_tokenizer
    from phase3_validation import prompt_confidence

    torch.set_num_threads(1)
    if way == "fixed":
        def fixed(lengths, max_rows, max_padding=None):
            order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
            return [order[i:i + max_rows] for i in range(0, len(order), max_rows)]
        prompt_confidence.padding_capped_batches = fixed
    model, tokenizer = load_model_and_tokenizer(str(model_dir), torch.device("cpu"), torch.float32)
    prompts = bench_prompts(mbpp_path, tokenizer, n)
    t0 = time.perf_counter()
    log_probs = prompt_confidence.next_token_log_probs(model, tokenizer, prompts, batch_size)
    wall = time.perf_counter() - t0
    np.save(out, log_probs)
    lengths = [len(ids) for ids in tokenizer(prompts)["input_ids"]]
    return {"way": way, "peak_mb": peak_rss_mb(), "wall_s": wall, "n_prompts": len(prompts),
            "longest": max(lengths), "median": sorted(lengths)[len(lengths) // 2]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a local model folder (e.g. the converted SmolLM2)")
    parser.add_argument("--mbpp-path", type=Path, required=True)
    parser.add_argument("--n-prompts", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=24)
    parser.add_argument("--way", choices=WAYS, help=argparse.SUPPRESS)  # the child process's side
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.way:
        print(json.dumps(run_one(args.way, args.model, args.mbpp_path, args.n_prompts, args.batch_size, args.out)))
        return 0
    import tempfile

    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        out = run_ways("bench.forward_batches", WAYS, lambda way: ["--out", str(Path(tmp) / f"{way}.npy")])
        arrays = {way: np.load(Path(tmp) / f"{way}.npy") for way in WAYS}
        for way in WAYS:
            print(f"{way:6s}: peak RSS {out[way]['peak_mb']:.0f} MB, {out[way]['wall_s']:.1f} s "
                  f"({out[way]['n_prompts']} prompts, longest {out[way]['longest']} tokens, median "
                  f"{out[way]['median']})", flush=True)
    diff = float(np.abs(arrays["fixed"] - arrays["capped"]).max())
    same = int((arrays["fixed"].argmax(axis=1) == arrays["capped"].argmax(axis=1)).sum())
    print(f"max |log-prob difference| {diff:.2e}; same most likely next token: {same}/{len(arrays['capped'])}")
    print(ratio_line(out["fixed"], out["capped"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
