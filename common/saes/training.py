"""Train one JumpReLU SAE per layer on a model's ``resid_post``, with SAE Lens's own trainer.

Why: Phase 2 reads latents through an SAE of the same layer as the captured
vectors. For a model with public SAEs the presets name them; for any other
causal LM (and for the offline demo) the pipeline trains its own, on exactly
the site Phase 1 captures: ``blocks.{L}.hook_resid_post``, the OUTPUT of
decoder layer L before the final norm (``common/modeling/hooks.py``).

How:
- activations are read with ``hooks.read_hook`` at every real token of every
  text except the first one and padding; right padding keeps every text at
  its unpadded positions. Why not the first: with a ``<bos>`` it is the same
  constant vector for every text; WITHOUT one (SmolLM2's tokenizer adds none)
  the first token can still be the attention sink, with a residual norm far
  above the others' (measured on SmolLM2-135M, ``bench/sae_fvu_positions.py``:
  layer 20, mean norm 22,552 at position 0 against 236 elsewhere, 99.4% of
  the held-out variance; layer 10, no outlier). Kept, those outliers made
  layer 20's held-out FVU 0.007 while its FVU on the other tokens was 1.11
  (no better than their mean); left out, 0.44. Phase 1 never reads the first
  token, so nothing is lost;
- whole texts are held out (seeded) for the reported FVU and L0, so held-out
  tokens are not near-copies of training tokens from the same text;
- each layer gets a ``JumpReLUTrainingSAE`` trained by SAE Lens's
  ``SAETrainer`` over a seeded in-memory iterator (the corpus is cycled when it
  holds fewer tokens than ``training_tokens``); activations are normalised to
  an expected norm of sqrt(d_in) during training (``expected_average_only_in``)
  and SAE Lens folds that scale back into the weights at the end
  (``fold_activation_norm_scaling_factor``), so the saved SAE takes raw
  residual vectors;
- ``save_inference_model`` writes ``cfg.json`` + ``sae_weights.safetensors``,
  which ``sae_lens.SAE.load_from_disk`` (and ``--sae-path``) loads.

The hyperparameters are the demo's, measured there (see ``demo/sae_training.py``):
the "tanh" L0 loss with coefficient 0.5 and lr 5e-3 gives held-out FVU
~0.05-0.1 at L0 ~20 on the demo models; the "step" loss stays dense on small
data. They are a starting point for other models, not a tuned recipe, which
is why the held-out FVU and L0 of every layer are recorded.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from common.datadir import write_json
from common.errors import PipelineError
from common.modeling.hooks import hook_name, model_layers, read_hook, remove_all
from common.modeling.models import text_sizes

logger = logging.getLogger(__name__)

REPORT_FILENAME = "sae_training_report.json"
# Written in a layer folder after its weights: the layer is whole and was trained with the recorded key.
LAYER_DONE = "training_done.json"
# Activations of one collection pass are kept in memory (float32); more layers than fit are collected in groups.
ACTIVATION_MEMORY_BYTES = 8 * 1024**3


@dataclass
class SAETrainingConfig:
    """How the SAEs are trained; recorded whole in the training report."""

    expansion_factor: int = 4  # d_sae = expansion_factor * d_model, unless d_sae is given
    d_sae: int | None = None  # latents per SAE (run.py --width)
    init_threshold: float = 0.1
    bandwidth: float = 0.05
    sparsity_loss_mode: str = "tanh"
    l0_coefficient: float = 0.5
    ste_to_input: bool = False
    lr: float = 5e-3
    lr_end_fraction: float = 0.1
    batch_size: int = 512
    training_tokens: int = 500_000  # activation vectors each SAE sees (run.py --tokens); the corpus is cycled
    corpus_tokens: int | None = None  # stop reading the corpus after this many tokens (None: all of it)
    holdout_fraction: float = 0.1
    normalize_activations: str = "expected_average_only_in"
    seed: int = 0
    forward_batch_size: int = 32
    max_text_tokens: int = 512  # longer texts are truncated
    # Leave out every text's first token (<bos>, or the attention sink without one): see the module docstring.
    skip_first_token: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def width(self, d_in: int) -> int:
        return int(self.d_sae) if self.d_sae is not None else d_in * self.expansion_factor


def read_corpus_file(path: str | Path) -> list[str]:
    """The documents of a local corpus file (``common.corpora.files.read_documents``, as Phase 2 reads it).

    ``.jsonl``: one document per row, its ``text`` field; an MBPP row (with
    ``code`` and ``test_list``) becomes its prompt followed by its reference
    code, so MBPP's own file serves as the code part of a corpus offline.
    Anything else is UTF-8 text: paragraphs split at blank lines (or lines,
    when there is no blank line).
    """
    from common.corpora.files import read_documents
    from common.prompts import build_prompt

    def row_text(row: dict[str, Any]) -> str:
        if isinstance(row.get("code"), str) and row.get("test_list"):
            return build_prompt(row["text"], list(row["test_list"])) + "\n" + row["code"]
        return str(row["text"])

    return read_documents(path, "corpus", row_text)[0]


def tokenize_texts(
    tokenizer: Any, texts: list[str], max_text_tokens: int, corpus_tokens: int | None, skip_first_token: bool = True
) -> list[list[int]]:
    """Token ids per text (as the tokenizer gives them), truncated, until ``corpus_tokens`` trained tokens are taken.

    Every text's first token is not trained on (``collect_resid_post``) unless
    ``skip_first_token`` is False, so it is not counted, and a text with no
    other token is left out.
    """
    out: list[list[int]] = []
    taken = 0
    for text in texts:
        ids = list(tokenizer(text)["input_ids"])[:max_text_tokens]
        counted = len(ids) - int(skip_first_token)
        if counted < 1:
            continue
        out.append(ids)
        taken += counted
        if corpus_tokens is not None and taken >= corpus_tokens:
            break
    if not out:
        raise PipelineError("the SAE training corpus has no text with a token")
    return out


@torch.no_grad()
def collect_resid_post(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: list[str] | list[list[int]],
    layers: list[int],
    batch_size: int = 32,
    skip_first_token: bool = True,
    sort_by_length: bool = True,
) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """resid_post of each layer at every real token of every text but its first (unless told to keep it).

    ``texts`` are strings or already tokenized ids. Returns
    ``({layer: float32 (n_tokens, d_model)}, text_index (n_tokens,))`` on the CPU.
    The first token (``<bos>`` or, without one, the attention sink) is skipped
    by default: see the module docstring.
    """
    layers = model_layers(model, layers)
    encoded = [t if isinstance(t, list) else tokenizer(t)["input_ids"] for t in texts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    captured: dict[int, torch.Tensor] = {}

    def make_hook(layer: int):
        def hook(hidden: torch.Tensor) -> None:
            captured[layer] = hidden.detach()

        return hook

    handles = [read_hook(model, layer, make_hook(layer)) for layer in layers]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    first = 1 if skip_first_token else 0
    order = _forward_order(encoded, sort_by_length)
    # Each text's rows go straight to their place in one preallocated tensor per layer: a list of pieces
    # joined at the end would hold every vector twice at the peak (9.1 GB for the SmolLM2 study's 6 layers).
    counts = [max(0, len(ids) - first) for ids in encoded]
    offsets = [0, *itertools.accumulate(counts)]
    out: dict[int, torch.Tensor] = {}
    try:
        # The corpus pass is SAE training's longest step on a CPU (tens of minutes): show where it is.
        starts = range(0, len(order), batch_size)
        for start in tqdm(starts, desc=f"reading layers {layers}", unit="batch", disable=len(starts) < 2):
            members = order[start : start + batch_size]
            ids, mask = _right_padded([encoded[i] for i in members], pad)
            # The decoder stack alone: no logits are needed, and a large vocabulary's unembedding is costly.
            decoder(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
            for layer in layers:
                hidden = captured[layer]
                if layer not in out:
                    out[layer] = torch.empty((offsets[-1], hidden.shape[-1]), dtype=torch.float32)
                for row, text in enumerate(members):
                    out[layer][offsets[text] : offsets[text + 1]] = hidden[row, first : len(encoded[text])].float().cpu()
    finally:
        remove_all(handles)
        model.train(was_training)
    owners = torch.repeat_interleave(torch.arange(len(encoded)), torch.tensor(counts, dtype=torch.long))
    return {layer: out[layer] for layer in layers}, owners


def _forward_order(encoded: list[list[int]], sort_by_length: bool) -> list[int]:
    """Texts in the order they are batched: longest first, so a batch pads little; the output keeps text order.

    Why: the corpus pass computes every padded position. On the SmolLM2
    study's corpus (1,545 texts of 2 to 512 tokens, batches of 32) batches in
    text order computed 789k positions for 302k tokens; sorted, 309k.
    """
    if not sort_by_length:
        return list(range(len(encoded)))
    return sorted(range(len(encoded)), key=lambda i: (-len(encoded[i]), i))


def _right_padded(batch: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids padded on the right to the batch's longest, and the attention mask (1 on real tokens)."""
    length = max(len(ids) for ids in batch)
    ids = torch.full((len(batch), length), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), length), dtype=torch.long)
    for i, seq in enumerate(batch):
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
    return ids, mask


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


def train_one(layer: int, train_acts: torch.Tensor, model_name: str, cfg: SAETrainingConfig) -> Any:
    """One SAE Lens JumpReLU training run on ``train_acts``; returns the trained TrainingSAE."""
    from sae_lens import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.training.sae_trainer import SAETrainer

    d_in = int(train_acts.shape[1])
    batch_size = min(cfg.batch_size, int(train_acts.shape[0]))
    steps = max(1, cfg.training_tokens // batch_size)
    device = str(train_acts.device)
    sae_cfg = JumpReLUTrainingSAEConfig(
        d_in=d_in,
        d_sae=cfg.width(d_in),
        dtype="float32",
        device=device,
        normalize_activations=cfg.normalize_activations,
        jumprelu_init_threshold=cfg.init_threshold,
        jumprelu_bandwidth=cfg.bandwidth,
        l0_coefficient=cfg.l0_coefficient,
        jumprelu_sparsity_loss_mode=cfg.sparsity_loss_mode,
        jumprelu_ste_to_input=cfg.ste_to_input,
        metadata=SAEMetadata(
            model_name=model_name,
            hook_name=hook_name(layer, "resid_post"),
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
        device=device,
        logger=LoggingConfig(log_to_wandb=False),
        n_batches_for_norm_estimate=max(1, math.ceil(train_acts.shape[0] / batch_size)),
        # Windows longer than the run: dead-latent bookkeeping is not used here.
        dead_feature_window=steps + 1,
        feature_sampling_window=steps + 1,
    )
    trainer = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=_batches(train_acts, batch_size, cfg.seed + layer))
    return trainer.fit()


def _layer_groups(layers: list[int], n_tokens: int, d_model: int) -> list[list[int]]:
    """Layers split so that one group's float32 activations stay under ``ACTIVATION_MEMORY_BYTES``."""
    per_layer = max(1, n_tokens * d_model * 4)
    size = max(1, ACTIVATION_MEMORY_BYTES // per_layer)
    return [layers[i : i + size] for i in range(0, len(layers), size)]


def train_saes(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: list[str],
    layers: list[int],
    out_dir: str | Path,
    cfg: SAETrainingConfig | None = None,
    model_name: str = "",
    extra: dict[str, Any] | None = None,
) -> dict[int, Path]:
    """Train and save one SAE per layer as ``out_dir/layer_{L}``; returns {layer: folder}.

    ``out_dir`` is then what ``--sae-path`` takes. ``sae_training_report.json``
    in ``out_dir`` records ``extra`` (provenance), the config, token counts,
    times, and the held-out FVU and L0 of every layer's SAE. It is written
    last: its presence means every layer's folder is complete.
    """
    from sae_lens import SAE

    cfg = cfg or SAETrainingConfig()
    if not texts:
        raise PipelineError("SAE training needs at least one text")
    layers = model_layers(model, layers)
    if not layers:
        raise PipelineError("SAE training needs at least one layer")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    encoded = tokenize_texts(tokenizer, texts, cfg.max_text_tokens, cfg.corpus_tokens, cfg.skip_first_token)
    n_held = max(1, round(cfg.holdout_fraction * len(encoded))) if len(encoded) > 1 else 0
    held_texts = torch.randperm(len(encoded), generator=torch.Generator().manual_seed(cfg.seed))[:n_held]
    report: dict[str, Any] = {
        **(extra or {}), "model": model_name, "sae_training": cfg.to_dict(), "n_texts": len(encoded),
        "n_heldout_texts": n_held, "layers": {},
    }
    n_tokens = sum(len(ids) for ids in encoded)
    d_model = text_sizes(model).d_model
    folders: dict[int, Path] = {}
    train_device = next(model.parameters()).device
    report["collect_seconds"] = 0.0
    for group in _layer_groups(layers, n_tokens, d_model):
        t0 = time.perf_counter()
        acts, owner = collect_resid_post(model, tokenizer, encoded, group, cfg.forward_batch_size, cfg.skip_first_token)
        report["collect_seconds"] += time.perf_counter() - t0
        held = torch.isin(owner, held_texts)
        report["n_train_tokens"], report["n_heldout_tokens"] = int((~held).sum()), int(held.sum())
        logger.info("SAE data: %d training tokens, %d held-out tokens (%d of %d texts)",
                    report["n_train_tokens"], report["n_heldout_tokens"], n_held, len(encoded))
        if report["n_train_tokens"] < 1:
            raise PipelineError("the SAE training corpus leaves no training token after the held-out texts")
        for layer in group:
            folder = out / f"layer_{layer}"
            key = layer_training_key(model_name, cfg, encoded, layer)
            seconds = finished_layer(folder, key)
            if seconds is None:
                (folder / LAYER_DONE).unlink(missing_ok=True)  # a kill while saving must not leave an old marker
                t1 = time.perf_counter()
                trained = train_one(layer, acts[layer][~held].to(train_device), model_name, cfg)
                seconds = time.perf_counter() - t1
                trained.save_inference_model(folder)
                write_json(folder / LAYER_DONE, {"key": key, "train_seconds": seconds})
            else:
                logger.info("SAE layer %d: trained by an earlier, interrupted run with these settings; kept", layer)
            sae = SAE.load_from_disk(folder, device="cpu", dtype="float32")
            # None (not NaN, which is not JSON) when a single text leaves nothing to hold out.
            fvu, l0 = sae_fvu_and_l0(sae, acts[layer][held]) if held.any() else (None, None)
            report["layers"][str(layer)] = {
                "folder": str(folder), "hook_name": hook_name(layer, "resid_post"), "d_in": int(sae.cfg.d_in),
                "d_sae": int(sae.cfg.d_sae), "heldout_fvu": fvu, "heldout_l0": l0, "train_seconds": seconds,
            }
            if fvu is not None:
                logger.info("SAE layer %d: held-out FVU %.3f, L0 %.1f, %.1f s", layer, fvu, l0, seconds)
            folders[layer] = folder
        del acts
    write_json(out / REPORT_FILENAME, report)
    return folders


def layer_training_key(model_name: str, cfg: SAETrainingConfig, encoded: list[list[int]], layer: int) -> str:
    """What makes one layer's SAE the same: model, training settings, the exact token ids, the layer."""
    digest = hashlib.sha256(json.dumps({"model": model_name, "cfg": cfg.to_dict(), "layer": layer}, sort_keys=True).encode())
    for ids in encoded:
        digest.update(b"|" + ",".join(map(str, ids)).encode())
    return digest.hexdigest()[:20]


def finished_layer(folder: Path, key: str) -> float | None:
    """The training seconds of a layer saved whole by an earlier run with the same key; None when it must be trained.

    Why resume per layer: training is the long part, and every layer is seeded
    on its own (``cfg.seed * 1000 + layer``, batches ``cfg.seed + layer``), so a
    layer kept from an interrupted run equals the one a fresh run would train.
    The marker is written after the weights, so its presence means they are whole.
    """
    try:
        done = json.loads((folder / LAYER_DONE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(done, dict) or done.get("key") != key:
        return None
    return float(done.get("train_seconds", 0.0))

