"""Benchmark: SAE training's corpus pass, batches in text order against batches sorted by length.

Why: ``train-saes`` reads every layer's residual stream over its corpus
before any SAE trains, and on a CPU that pass is the longest step. A batch is
padded to its longest text, and every padded position is computed. Both ways
run here side by side, on the same texts (the corpus files' documents,
interleaved and truncated as ``train-saes`` reads them), model and batch
size; both return the same rows in the same order, which is checked.

- text order: batches of consecutive texts (the pass before sorting);
- sorted: ``collect_resid_post``'s default, longest text first.

Run from the repository root, as a module:
    python3 -m bench.sae_corpus_pass --model DIR --corpus FILE[,FILE] [--n-texts 256] [--layers 4,8]
"""

from __future__ import annotations

import argparse
import sys
import time
from itertools import zip_longest
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    import torch

    from cli.train_saes import read_corpus_file
    from common.modeling.models import load_model_and_tokenizer
    from common.saes.training import collect_resid_post, tokenize_texts

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a local model folder")
    parser.add_argument("--corpus", required=True, help="corpus files, comma-separated (as train-saes --corpus)")
    parser.add_argument("--n-texts", type=int, default=256)
    parser.add_argument("--layers", default="4,8")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per forward pass (train-saes' default)")
    parser.add_argument("--max-text-tokens", type=int, default=512)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model, tokenizer = load_model_and_tokenizer(str(args.model), torch.device("cpu"), torch.float32)
    per_file = [read_corpus_file(path) for path in args.corpus.split(",")]
    texts = [t for group in zip_longest(*per_file) for t in group if t][: args.n_texts]
    encoded = tokenize_texts(tokenizer, texts, args.max_text_tokens, None)
    layers = [int(x) for x in args.layers.split(",")]
    lengths = [len(ids) for ids in encoded]
    print(f"{len(encoded)} texts, {sum(lengths)} tokens ({min(lengths)} to {max(lengths)} per text), "
          f"batch {args.batch_size}, layers {layers}", flush=True)
    out, seconds = {}, {}
    for label, sort in (("text order", False), ("sorted", True)):
        t0 = time.perf_counter()
        out[label] = collect_resid_post(model, tokenizer, encoded, layers, args.batch_size, True, sort_by_length=sort)
        seconds[label] = time.perf_counter() - t0
        print(f"{label:10s}: {seconds[label]:.1f} s", flush=True)
    (plain, owner_plain), (fast, owner_fast) = out["text order"], out["sorted"]
    same_rows = bool(torch.equal(owner_plain, owner_fast))
    diff = max(float((plain[layer] - fast[layer]).abs().max()) for layer in layers)
    print(f"same rows in the same order: {same_rows}; largest |difference| {diff:.3g}")
    print(f"ratio {seconds['text order'] / seconds['sorted']:.2f}")
    return 0 if same_rows else 1


if __name__ == "__main__":
    sys.exit(main())
