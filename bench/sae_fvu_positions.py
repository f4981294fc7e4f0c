"""Why a self-trained SAE's held-out FVU and Phase 2's FVU disagree (issue 12 item 5).

Trains one SAE per layer with ``common.sae_training.train_saes`` on a corpus,
then measures, per layer:

- the mean residual norm at each text's first token (position 0) and at the
  other positions: a model without a BOS token still makes its first token an
  attention sink with a far larger norm;
- the SAE's FVU on the held-out texts with and without position 0;
- the FVU on last-prompt-token vectors of MBPP prompts (what Phase 2 reads),
  through Phase 2's own ``fraction_of_variance_unexplained``, and the same
  squared error relative to the held-out corpus tokens' variance (so the
  numerator is compared against one fixed scale).

Usage (CPU, a few minutes for SmolLM2-135M)::

    python bench/sae_fvu_positions.py MODEL_DIR MBPP_JSONL OUT_DIR [--layers 10,20] [--tasks 16] [--prompts 64]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.capture import LastTokenCapture
from common.mbpp import load_mbpp
from common.models import load_model_and_tokenizer
from common.prompts import build_prompt
from common.sae_training import (
    REPORT_FILENAME,
    SAETrainingConfig,
    collect_resid_post,
    read_corpus_file,
    tokenize_texts,
    train_saes,
)
from common.saes import fraction_of_variance_unexplained

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


def measure(model, tok, texts, layers, sae_dir: Path, cfg: SAETrainingConfig, last: dict[int, np.ndarray]) -> dict:
    """Norms and FVUs of the SAEs in ``sae_dir`` on every held-out token, first tokens included."""
    from sae_lens import SAE

    report = json.loads((sae_dir / REPORT_FILENAME).read_text())
    encoded = tokenize_texts(tok, texts, cfg.max_text_tokens, cfg.corpus_tokens, cfg.skip_first_token)
    acts, owner = collect_resid_post(model, tok, encoded, layers, cfg.forward_batch_size, skip_first_token=False)
    first = torch.ones_like(owner, dtype=torch.bool)
    first[1:] = owner[1:] != owner[:-1]  # position 0 of each text
    held_texts = torch.randperm(len(encoded), generator=torch.Generator().manual_seed(cfg.seed))
    held = torch.isin(owner, held_texts[: report["n_heldout_texts"]])
    out: dict[str, object] = {"report_heldout_fvu": {k: v["heldout_fvu"] for k, v in report["layers"].items()},
                              "n_train_tokens": report["n_train_tokens"], "n_heldout_tokens": report["n_heldout_tokens"]}
    for layer in layers:
        sae = SAE.load_from_disk(sae_dir / f"layer_{layer}", device="cpu", dtype="float32")
        a = acts[layer].numpy()
        norms = np.linalg.norm(a, axis=1)
        h_all, h_rest, h_first = a[held.numpy()], a[(held & ~first).numpy()], a[(held & first).numpy()]
        corpus_var_rest = total_variance(h_rest) / len(h_rest)
        out[str(layer)] = {
            "norm_position0_mean": float(norms[first.numpy()].mean()),
            "norm_other_mean": float(norms[~first.numpy()].mean()),
            "norm_last_prompt_token_mean": float(np.linalg.norm(last[layer], axis=1).mean()),
            "heldout_fvu_all_positions": squared_error(sae, h_all) / total_variance(h_all),
            "heldout_fvu_without_position0": squared_error(sae, h_rest) / total_variance(h_rest),
            "heldout_position0_share_of_variance": 1 - total_variance(h_rest) / total_variance(h_all),
            "heldout_position0_mse": squared_error(sae, h_first) / len(h_first),
            "heldout_other_mse": squared_error(sae, h_rest) / len(h_rest),
            "last_token_fvu_phase2": fraction_of_variance_unexplained(sae, last[layer]),
            "last_token_mse": squared_error(sae, last[layer]) / len(last[layer]),
            "last_token_variance_per_vector": total_variance(last[layer]) / len(last[layer]),
            "corpus_variance_per_vector_without_position0": corpus_var_rest,
            "last_token_mse_over_corpus_variance": squared_error(sae, last[layer]) / len(last[layer]) / corpus_var_rest,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("mbpp")
    parser.add_argument("out_dir")
    parser.add_argument("--layers", default="10,20")
    parser.add_argument("--tasks", type=int, default=16, help="MBPP rows added to the corpus (the e2e test's slice)")
    parser.add_argument("--prompts", type=int, default=64, help="MBPP prompts whose last-token vectors are read")
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
    result: dict[str, object] = {"model": args.model_dir, "tasks_in_corpus": args.tasks, "prompts": len(prompts)}
    for skip in (False, True):
        cfg = SAETrainingConfig(training_tokens=args.tokens, batch_size=256, skip_first_token=skip)
        sae_dir = out / ("saes_skip_first" if skip else "saes_keep_first")
        train_saes(model, tok, texts, layers, sae_dir, cfg, model_name=args.model_dir)
        result["skip_first_token" if skip else "keep_first_token"] = measure(
            model, tok, texts, layers, sae_dir, cfg, last
        )
    (out / "fvu_positions.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
