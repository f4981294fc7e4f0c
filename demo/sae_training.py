"""Train one small JumpReLU SAE per layer on the demo model's residual stream, with SAE Lens.

Why: the offline demo must run Phase 2 exactly as the real run does, i.e.
load one SAE Lens folder per layer (``--sae-path``), check its hook name, and
encode the captured vectors. GemmaScope cannot be fetched and would not fit a
tiny model anyway, so the demo trains its own SAEs, with SAE Lens's own
training code, on the site the pipeline captures: ``blocks.{L}.hook_resid_post``
(the OUTPUT of decoder layer L, before the final norm; DESIGN rule 1).

How:
- activations are read with forward hooks on the HF model's decoder layers (one
  pass over the texts gives every layer), at every real token of every text
  except ``<bos>`` (its vector is the same constant for every text: it would
  only weigh on the norm estimate) and padding;
- whole texts are held out (seeded) for the reported FVU and L0, so held-out
  tokens are not near-copies of training tokens from the same text;
- each layer gets a ``JumpReLUTrainingSAE`` trained by ``SAETrainer`` over a
  seeded in-memory iterator; activations are normalised to an expected norm of
  sqrt(d_in) during training (``expected_average_only_in``) and SAE Lens folds
  that scale back into the weights at the end, so the saved SAE takes raw
  residual vectors;
- ``save_inference_model`` writes ``cfg.json`` + ``sae_weights.safetensors``
  (the same files the SAE Lens training runner writes), which
  ``sae_lens.SAE.load_from_disk`` loads as an inference ``JumpReLUSAE``.

Measured on this 2-core machine (test and demo models, ~8,300 training
tokens): with SAE Lens's default "step" L0 loss (DeepMind's JumpReLU) the SAEs
stay dense whatever the coefficient (L0 ~145 of 256 latents, with or without
activation normalisation): the straight-through gradient only reaches the
threshold through pre-activations within one bandwidth of it, and the encoder
simply moves the pre-activations above it. The "tanh" loss (Anthropic's
setup, also in SAE Lens) penalises the activations themselves and gives held-out
FVU ~0.05-0.1 at L0 ~20 with coefficient 0.5 and lr 5e-3. Passing the
straight-through gradient to the encoder (``jumprelu_ste_to_input``) collapsed
every latent. The initial threshold is 0.1 (DESIGN section 6: 0.01 stays
dense, 0.5 collapses).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
import torch
import transformers

from common.capture import hidden_from_output
from common.models import decoder_layers
from common.prompts import build_prompt
from common.storage import write_json
from demo.presets import PresetConfig
from demo.training import completion_text, deterministic_torch

logger = logging.getLogger(__name__)

REPORT_FILENAME = "sae_training_report.json"

# "demo": about 12 s a layer for d_in 128 on 2 cores (held-out FVU ~0.05, L0 ~20);
# "test": about 4 s a layer for d_in 64 (FVU ~0.1, L0 ~25).
_PRESETS: dict[str, dict[str, Any]] = {
    "demo": dict(training_tokens=500_000),
    "test": dict(training_tokens=300_000),
}


def hook_name(layer: int) -> str:
    """The TransformerLens name of the site captured for ``layer`` (and GemmaScope's ``layer_L``)."""
    return f"blocks.{layer}.hook_resid_post"


@dataclass
class DemoSAEConfig(PresetConfig):
    """How the demo SAEs are trained; recorded in the SAE training report."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = _PRESETS

    size: str = "demo"
    expansion_factor: int = 4
    init_threshold: float = 0.1
    bandwidth: float = 0.05
    sparsity_loss_mode: str = "tanh"
    l0_coefficient: float = 0.5
    ste_to_input: bool = False
    lr: float = 5e-3
    lr_end_fraction: float = 0.1
    batch_size: int = 512
    training_tokens: int = 500_000
    holdout_fraction: float = 0.1
    normalize_activations: str = "expected_average_only_in"
    seed: int = 0
    num_threads: int = 2
    forward_batch_size: int = 32


def demo_sae_texts(problems: pd.DataFrame) -> list[str]:
    """The texts the demo SAEs are trained on: every problem's prompt followed by its reference solution.

    Why prompts: Phase 2 encodes the last prompt token, so the SAE must know
    prompt-position activations; solutions add code-token contexts.
    """
    return [
        build_prompt(r.text, list(r.test_list)) + completion_text(r.code)
        for r in problems.sort_values("task_id").itertuples(index=False)
    ]


@torch.no_grad()
def collect_resid_post(
    model: transformers.PreTrainedModel,
    tokenizer: transformers.PreTrainedTokenizerBase,
    texts: list[str],
    layers: list[int],
    batch_size: int = 32,
) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """resid_post of each layer at every real non-<bos> token of every text.

    Returns ``({layer: float32 (n_tokens, d_model)}, text_index (n_tokens,))``.
    Sequences are padded on the right with an attention mask: under the causal
    mask no real token sees a pad, and positions are the unpadded ones.
    """
    blocks = decoder_layers(model)
    bad = [layer for layer in layers if not 0 <= layer < len(blocks)]
    if bad:
        raise ValueError(f"layers {bad} out of range: the model has layers 0..{len(blocks) - 1}")
    encoded = [tokenizer(t)["input_ids"] for t in texts]
    bos = tokenizer.bos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    captured: dict[int, torch.Tensor] = {}

    def make_hook(layer: int):
        def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
            captured[layer] = hidden_from_output(output).detach()

        return hook

    handles = [blocks[layer].register_forward_hook(make_hook(layer)) for layer in layers]
    chunks: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    owners: list[torch.Tensor] = []
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(encoded), batch_size):
            batch = encoded[start : start + batch_size]
            length = max(len(ids) for ids in batch)
            ids = torch.full((len(batch), length), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), length), dtype=torch.long)
            for i, seq in enumerate(batch):
                ids[i, : len(seq)] = torch.tensor(seq)
                mask[i, : len(seq)] = 1
            keep = mask.bool()
            if bos is not None:
                keep &= ids != bos
            model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
            for layer in layers:
                chunks[layer].append(captured[layer].float().cpu()[keep])
            owners.append((torch.arange(len(batch)) + start)[:, None].expand(-1, length)[keep])
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {layer: torch.cat(chunks[layer]) for layer in layers}, torch.cat(owners)


def _batches(acts: torch.Tensor, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless seeded shuffled epochs over the rows of ``acts``, ``batch_size`` rows at a time."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(acts.shape[0], generator=gen)
        for start in range(0, acts.shape[0] - batch_size + 1, batch_size):
            yield acts[order[start : start + batch_size]]


@torch.no_grad()
def sae_fvu_and_l0(sae: Any, acts: torch.Tensor) -> tuple[float, float]:
    """FVU = sum ||x - x_hat||^2 / sum ||x - mean x||^2, and mean number of active latents (> 0)."""
    x = acts.float()
    feats = sae.encode(x)
    recon = sae.decode(feats)
    fvu = float(((x - recon) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
    l0 = float((feats > 0).float().sum(-1).mean())
    return fvu, l0


def _train_one(
    layer: int, train_acts: torch.Tensor, model_name: str, cfg: DemoSAEConfig
) -> Any:
    """One SAE Lens JumpReLU training run on ``train_acts``; returns the trained TrainingSAE."""
    from sae_lens import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.training.sae_trainer import SAETrainer

    d_in = int(train_acts.shape[1])
    batch_size = min(cfg.batch_size, int(train_acts.shape[0]))
    steps = max(1, cfg.training_tokens // batch_size)
    sae_cfg = JumpReLUTrainingSAEConfig(
        d_in=d_in,
        d_sae=d_in * cfg.expansion_factor,
        dtype="float32",
        device="cpu",
        normalize_activations=cfg.normalize_activations,
        jumprelu_init_threshold=cfg.init_threshold,
        jumprelu_bandwidth=cfg.bandwidth,
        l0_coefficient=cfg.l0_coefficient,
        jumprelu_sparsity_loss_mode=cfg.sparsity_loss_mode,
        jumprelu_ste_to_input=cfg.ste_to_input,
        metadata=SAEMetadata(
            model_name=model_name,
            hook_name=hook_name(layer),
            hook_head_index=None,
            prepend_bos=True,
            context_size=None,
        ),
    )
    torch.manual_seed(cfg.seed * 1000 + layer)
    sae = JumpReLUTrainingSAE(sae_cfg)
    trainer_cfg = SAETrainerConfig(
        total_training_samples=steps * batch_size,
        train_batch_size_samples=batch_size,
        lr=cfg.lr,
        lr_end=cfg.lr * cfg.lr_end_fraction,
        lr_scheduler_name="cosineannealing",
        lr_decay_steps=steps,
        device="cpu",
        logger=LoggingConfig(log_to_wandb=False),
        n_batches_for_norm_estimate=max(1, math.ceil(train_acts.shape[0] / batch_size)),
        # Windows longer than the run: dead-latent bookkeeping is not used here.
        dead_feature_window=steps + 1,
        feature_sampling_window=steps + 1,
    )
    trainer = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=_batches(train_acts, batch_size, cfg.seed + layer))
    return trainer.fit()


def train_demo_saes(
    model_dir: str | Path,
    texts: list[str],
    layers: list[int],
    out_dir: str | Path,
    cfg: DemoSAEConfig | None = None,
) -> dict[int, Path]:
    """Train and save one SAE per layer as ``out_dir/layer_{L}``; returns {layer: folder}.

    ``out_dir`` is then what ``--sae-path`` takes. ``sae_training_report.json``
    in ``out_dir`` records the config, token counts, times, and the held-out
    FVU and L0 of every layer's SAE.
    """
    from sae_lens import SAE

    from common.models import load_model_and_tokenizer

    cfg = cfg or DemoSAEConfig()
    if not texts:
        raise ValueError("train_demo_saes needs at least one text")
    if not layers:
        raise ValueError("train_demo_saes needs at least one layer")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"model_dir": str(model_dir), "config": cfg.to_dict(), "layers": {}}
    with deterministic_torch(cfg.num_threads):
        model, tokenizer = load_model_and_tokenizer(str(model_dir), torch.device("cpu"), torch.float32)
        t0 = time.perf_counter()
        acts, owner = collect_resid_post(model, tokenizer, texts, sorted(set(layers)), cfg.forward_batch_size)
        report["collect_seconds"] = time.perf_counter() - t0
        n_held = max(1, round(cfg.holdout_fraction * len(texts))) if len(texts) > 1 else 0
        held_texts = torch.randperm(len(texts), generator=torch.Generator().manual_seed(cfg.seed))[:n_held]
        held = torch.isin(owner, held_texts)
        report["n_train_tokens"] = int((~held).sum())
        report["n_heldout_tokens"] = int(held.sum())
        logger.info(
            "SAE data: %d training tokens, %d held-out tokens (%d of %d texts)",
            report["n_train_tokens"], report["n_heldout_tokens"], n_held, len(texts),
        )
        folders: dict[int, Path] = {}
        for layer in sorted(set(layers)):
            t1 = time.perf_counter()
            trained = _train_one(layer, acts[layer][~held], str(model_dir), cfg)
            seconds = time.perf_counter() - t1
            folder = out / f"layer_{layer}"
            trained.save_inference_model(folder)
            sae = SAE.load_from_disk(folder, device="cpu", dtype="float32")
            # None (not NaN, which is not JSON) when a single text leaves nothing to hold out.
            fvu, l0 = sae_fvu_and_l0(sae, acts[layer][held]) if held.any() else (None, None)
            report["layers"][str(layer)] = {
                "folder": str(folder), "hook_name": hook_name(layer), "d_in": int(sae.cfg.d_in),
                "d_sae": int(sae.cfg.d_sae), "heldout_fvu": fvu, "heldout_l0": l0, "train_seconds": seconds,
            }
            if fvu is not None:
                logger.info("SAE layer %d: held-out FVU %.3f, L0 %.1f, %.1f s", layer, fvu, l0, seconds)
            folders[layer] = folder
    # Written last: its presence means every layer's folder is complete.
    write_json(out / REPORT_FILENAME, report)
    return folders
