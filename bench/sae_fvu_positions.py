"""Why a self-trained SAE's held-out FVU and Phase 2's FVU disagree (SmolLM2-135M).

Reads the corpus's resid_post once at every position, holds out whole texts
by the trainer's own rule, and trains two SAEs per layer with the trainer's
``train_one`` (SAE Lens): one on every token (what the trainer did for a
tokenizer without BOS, such as SmolLM2's) and one without each text's first
token (what it does now). Then measures, per layer and SAE:

- the mean residual norm at each text's first token (position 0) and at the
  other positions: a model without a BOS token still makes its first token an
  attention sink with a far larger norm;
- the SAE's FVU on the held-out texts with and without position 0;
- the FVU on last-prompt-token vectors of MBPP prompts (what Phase 2 reads),
  through Phase 2's own ``fraction_of_variance_unexplained``, and the same
  squared error relative to the held-out corpus tokens' variance (so the
  numerator is compared against one fixed scale).

Usage, from the repository root (CPU; SmolLM2-135M with the defaults: minutes, mostly the forward passes)::

    python3 -m bench.sae_fvu_positions MODEL_DIR MBPP_JSONL OUT_DIR [--layers 10,20] [--tasks 16] [--prompts 16]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from sae_lens import SAE

from common.benchmarks.mbpp import load_mbpp
from common.modeling.capture import LastTokenCapture
from common.modeling.models import load_model_and_tokenizer
from common.prompts import build_prompt
from common.saes.loading import fraction_of_variance_unexplained
from common.saes.training import (
    SAETrainingConfig,
    collect_resid_post,
    read_corpus_file,
    tokenize_texts,
    train_one,
)

REPO = Path(__file__).resolve().parents[1]


def squared_error(sae, x: np.ndarray) -> float:
    """Sum over rows of ||x - decode(encode(x))||^2 in float64."""
    with torch.no_grad():
        recon = sae.decode(sae.encode(torch.from_numpy(x).float())).double().numpy()
    return float(((x.astype(np.float64) - recon) ** 2).sum())


def total_variance(x: np.ndarray) -> float:
    return float(((x.astype(np.float64) - x.astype(np.float64).mean(0)) ** 2).sum())


def last_token_vectors(model, tokenizer, prompts: list[str], layers: list[int]) -> dict[int, np.ndarray]:
    """resid_post at the last prompt token, one prompt at a time (no padding), as Phase 1 captures it."""
    out: dict[int, list[np.ndarray]] = {layer: [] for layer in layers}
    with LastTokenCapture(model, layers) as cap, torch.no_grad():
        for prompt in prompts:
            cap.reset()
            enc = tokenizer(prompt, return_tensors="pt")
            model(**enc, use_cache=False)
            for layer, x in cap.activations().items():
                out[layer].append(x)
    return {layer: np.concatenate(v) for layer, v in out.items()}


def measure(sae, a: np.ndarray, first: np.ndarray, held: np.ndarray, last: np.ndarray) -> dict[str, float]:
    """Norms and FVUs of one layer's SAE on the held-out tokens (position 0 in or out) and on last-token vectors."""
    norms = np.linalg.norm(a, axis=1)
    h_all, h_rest, h_first = a[held], a[held & ~first], a[held & first]
    corpus_var_rest = total_variance(h_rest) / len(h_rest)
    return {
        "norm_position0_mean": float(norms[first].mean()),
        "norm_other_mean": float(norms[~first].mean()),
        "norm_last_prompt_token_mean": float(np.linalg.norm(last, axis=1).mean()),
        "heldout_fvu_all_positions": squared_error(sae, h_all) / total_variance(h_all),
        "heldout_fvu_without_position0": squared_error(sae, h_rest) / total_variance(h_rest),
        "heldout_position0_share_of_variance": 1 - total_variance(h_rest) / total_variance(h_all),
        "heldout_position0_mse": squared_error(sae, h_first) / len(h_first),
        "heldout_other_mse": squared_error(sae, h_rest) / len(h_rest),
        "last_token_fvu_phase2": fraction_of_variance_unexplained(sae, last),
        "last_token_mse": squared_error(sae, last) / len(last),
        "last_token_variance_per_vector": total_variance(last) / len(last),
        "corpus_variance_per_vector_without_position0": corpus_var_rest,
        "last_token_mse_over_corpus_variance": squared_error(sae, last) / len(last) / corpus_var_rest,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("mbpp")
    parser.add_argument("out_dir")
    parser.add_argument("--layers", default="10,20")
    parser.add_argument("--tasks", type=int, default=16, help="MBPP rows added to the corpus (the e2e test's slice)")
    parser.add_argument("--prompts", type=int, default=16, help="MBPP prompts whose last-token vectors are read")
    parser.add_argument("--tokens", type=int, default=20_000)
    args = parser.parse_args()
    layers = [int(v) for v in args.layers.split(",")]
    torch.manual_seed(0)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, tok = load_model_and_tokenizer(args.model_dir, torch.device("cpu"), torch.float32)

    lines = [line for line in Path(args.mbpp).read_text().splitlines() if line.strip()][: args.tasks]
    slice_path = out / "mbpp_slice.jsonl"
    slice_path.write_text("\n".join(lines) + "\n")
    texts = read_corpus_file(REPO / "demo" / "general_text.txt") + read_corpus_file(slice_path)
    problems = load_mbpp(args.mbpp).sort_values("task_id").head(args.prompts)
    prompts = [build_prompt(r.text, list(r.test_list)) for r in problems.itertuples()]
    last = last_token_vectors(model, tok, prompts, layers)

    # One collection with every position; the two trainings differ only in whether position 0 is a training row.
    cfg = SAETrainingConfig(training_tokens=args.tokens, batch_size=256)
    encoded = tokenize_texts(tok, texts, cfg.max_text_tokens, cfg.corpus_tokens, skip_first_token=False)
    acts, owner = collect_resid_post(model, tok, encoded, layers, cfg.forward_batch_size, skip_first_token=False)
    first_t = torch.ones_like(owner, dtype=torch.bool)
    first_t[1:] = owner[1:] != owner[:-1]  # position 0 of each text
    n_held = max(1, round(cfg.holdout_fraction * len(encoded)))  # the trainer's rule
    held_t = torch.isin(owner, torch.randperm(len(encoded), generator=torch.Generator().manual_seed(cfg.seed))[:n_held])
    first, held = first_t.numpy(), held_t.numpy()
    result: dict[str, object] = {
        "model": args.model_dir, "tasks_in_corpus": args.tasks, "prompts": len(prompts), "texts": len(encoded),
        "heldout_texts": n_held, "tokens": int(owner.numel()), "heldout_tokens": int(held.sum()),
    }
    for skip in (False, True):
        name = "skip_first_token" if skip else "keep_first_token"
        rows = ~held_t & ~first_t if skip else ~held_t
        per_layer = {}
        for layer in layers:
            folder = out / name / f"layer_{layer}"
            train_one(layer, acts[layer][rows], args.model_dir, dataclasses.replace(cfg, skip_first_token=skip)) \
                .save_inference_model(folder)
            sae = SAE.load_from_disk(folder, device="cpu", dtype="float32")
            per_layer[str(layer)] = measure(sae, acts[layer].numpy(), first, held, last[layer])
        result[name] = per_layer
    (out / "fvu_positions.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
