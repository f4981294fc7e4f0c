"""``run.py train-saes``: SAEs for any causal LM, written as folders ``--sae-path`` reads.

Why a default corpus of general text *and* code: the study reads the residual
stream at the last token of code prompts, so an SAE that has only seen prose
would reconstruct those vectors poorly. The default interleaves pile-10k
documents (from the hub) with MBPP prompts followed by their reference code
(MBPP is unlabelled text to the SAE: no pass/fail label is used). Offline, a
local corpus is required: ``--corpus demo/general_text.txt,PATH/mbpp.jsonl``
(an MBPP jsonl row counts as prompt + code), or the files ``run.py
build-corpus`` writes from the installed Python sources and documentation.
Several files are interleaved document by document.
"""

from __future__ import annotations

import logging
from itertools import zip_longest
from pathlib import Path
from typing import Any

import torch

from common.config import PipelineConfig, check_option_limits
from common.corpora.files import HUB_CORPUS, hub_corpus_texts, load_hub_corpus
from common.datadir import RunClock, build_metadata, check_writable
from common.errors import PipelineError
from common.saes.training import REPORT_FILENAME, SAETrainingConfig, read_corpus_file, train_saes

logger = logging.getLogger(__name__)


# --tokens also caps how much of the corpus is read; below MIN_TRAIN_TOKENS (declared on the option) a corpus
# of short texts gives one or two texts, and nothing is left to hold out (10 tokens trained on 52, none held out).

def _hub_texts(n_docs: int) -> list[str]:
    rows = load_hub_corpus(lambda error: (
        f"no --corpus given and {HUB_CORPUS} cannot be loaded from the hub ({error}); offline, pass "
        "--corpus FILE[,FILE] (.txt or .jsonl; e.g. demo/general_text.txt and an MBPP jsonl for code)"
    ))
    return hub_corpus_texts(rows, range(min(n_docs, len(rows))))


def _mbpp_texts(mbpp_path: str | None) -> list[str]:
    from common.benchmarks.mbpp import load_mbpp
    from common.prompts import build_prompt

    problems = load_mbpp(mbpp_path)
    return [build_prompt(r.text, list(r.test_list)) + "\n" + r.code for r in problems.itertuples(index=False)]


def corpus_texts(cfg: PipelineConfig) -> tuple[list[str], dict[str, str]]:
    """The training texts and the files they came from (for the metadata)."""
    if cfg.train_corpus:
        # Interleaved file by file, so that a token budget smaller than the corpus still takes from every file
        # (a code corpus first would otherwise fill the budget alone).
        per_file = [read_corpus_file(path) for path in cfg.train_corpus]
        texts = [t for group in zip_longest(*per_file) for t in group if t]
        return texts, {f"corpus_{i}": path for i, path in enumerate(cfg.train_corpus)}
    general = _hub_texts(10_000)
    code = _mbpp_texts(cfg.mbpp_path)
    # Interleaved, so that a token budget smaller than the corpus still takes both kinds.
    mixed = [t for pair in zip_longest(general, code) for t in pair if t]
    inputs = {"mbpp": cfg.mbpp_path} if cfg.mbpp_path else {}
    return mixed, inputs


def train_saes_cli(cfg: PipelineConfig) -> int:
    """Load the model, read the corpus, train one SAE per layer, print held-out FVU and L0 per layer."""
    from common.modeling.models import default_dtype, load_model_and_tokenizer, resolve_device

    if not cfg.train_output:
        raise PipelineError("train-saes needs --output DIR (the folder --sae-path will read)")
    out = Path(cfg.train_output)
    if (out / REPORT_FILENAME).exists():
        raise PipelineError(f"{out} already holds trained SAEs ({REPORT_FILENAME}); choose another --output")
    if out.exists() and not out.is_dir():
        raise PipelineError(f"--output {out} is a file, not a folder")
    check_writable(out / REPORT_FILENAME, "--output")  # before the model is loaded or a token collected
    check_option_limits(cfg, "train-saes")  # --tokens at least MIN_TRAIN_TOKENS, --width at least 1
    clock = RunClock()
    texts, inputs = corpus_texts(cfg)
    device = resolve_device(cfg.device)
    model, tokenizer = load_model_and_tokenizer(cfg.model, device, default_dtype(device))
    layers = cfg.layers if cfg.layers is not None else list(range(len(_layers(model))))
    training = SAETrainingConfig(
        d_sae=cfg.train_width, training_tokens=cfg.train_tokens, corpus_tokens=cfg.train_tokens, seed=cfg.seed,
    )
    extra = build_metadata("train-saes", cfg, clock, inputs=inputs, extra={"n_corpus_texts": len(texts)})
    train_saes(model, tokenizer, texts, layers, out, training, model_name=cfg.model, extra=extra)
    from common.datadir import read_json, write_json

    report: dict[str, Any] = read_json(out / REPORT_FILENAME)
    # The whole command's wall time and peak memory (the metadata in ``extra`` was taken before training).
    report["resources"] = clock.resources()
    write_json(out / REPORT_FILENAME, report)
    print(f"trained {len(report['layers'])} SAEs in {out} ({report['n_train_tokens']} training tokens, "
          f"{report['n_heldout_tokens']} held out)")
    for layer, entry in report["layers"].items():
        fvu, l0 = entry["heldout_fvu"], entry["heldout_l0"]
        shown = "n/a (no held-out text)" if fvu is None else f"held-out FVU {fvu:.3f}, L0 {l0:.1f}"
        print(f"  layer {layer}: d_sae {entry['d_sae']}, {shown}")
    print(f"use them with: --model {cfg.model} --sae-path {out}")
    return 0


def _layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    from common.modeling.models import decoder_layers

    return decoder_layers(model)
