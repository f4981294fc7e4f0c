"""Phase 2: encode the saved activations with each layer's SAE, score, filter, rank, test against chance.

Flow of ``run(cfg)`` (docs/design.md sections 2 and 4):

1. Inputs (``inputs.py``): the split's tasks and labels, the layers present
   for every task, and every needed activation matrix, loaded up front so a
   missing file fails before any SAE is fetched.
2. The general-text filter is prepared (``general_filter.py``): corpus and
   model loaded first, so an unreachable hub fails fast too.
3. Per layer, one SAE in memory at a time: load and check it (hook name,
   d_in), encode in float32, score every latent (``common.statistics.stats``), fold the
   layer into the permutation null, measure FVU on this layer's and the
   neighbouring layer's activations, and the corpus firing shares.
4. Rank the unflagged latents of all layers per direction, attach the
   family-wise p-value of each, and (validation split) compare with the
   newest sae-split run (``stability.py``).
5. Write everything only after all of it succeeded, each file atomically, the
   results JSON (what Phase 3 reads) last.

Why one family for both directions: the study reports a winner in each
direction, so each shuffle keeps the largest separation in either direction
and both rank-1 latents are compared with that maximum (one test at 0.05 for
the pair, not two). The p-value carries its Monte Carlo standard error;
within two of them from 0.05 the verdict is "undecided at this number of
shuffles" (``common.statistics.stats.monte_carlo_verdict``).

Why the permutation null covers the unflagged latents only: the family a
p-value speaks for is the set the ranking chose from; flagging depends on
general text alone, never on the labels, so restricting the family to it
keeps the null exact for the selection actually made.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from common.config import PipelineConfig, check_option_limits, model_of_phase1
from common.datadir import (
    PHASE2_METADATA,
    PHASE2_RESULTS,
    PHASE2_SCORES,
    PHASE2_TOP,
    TMP_PREFIX,
    RunClock,
    build_metadata,
    json_safe,
    phase_dir,
    save_npz,
    timestamp,
)
from common.errors import PipelineError
from common.modeling.models import resolve_device
from common.saes.loading import SAESource, check_d_in, encode, fraction_of_variance_unexplained, load_sae, sae_hook_name
from common.statistics.stats import DIRECTIONS, PermutationNull, latent_scores, monte_carlo_verdict
from phase2_sae_analysis.general_filter import GeneralTextFilter, disabled_description
from phase2_sae_analysis.inputs import SplitData, load_split, resolve_layers
from phase2_sae_analysis.stability import compute_stability, sae_reference

logger = logging.getLogger(__name__)

SCORE_KEYS = (
    "f_correct", "f_incorrect", "separation_correct", "separation_incorrect",
    "mean_correct", "mean_incorrect", "t_stat",
)
ARRAY_KEYS = PHASE2_SCORES.fields  # SCORE_KEYS plus general_freq and general_flagged
TOP_COLUMNS = list(PHASE2_TOP.fields)
BEATS_NULL_ALPHA = 0.05
NULL_QUANTILES = (50, 95, 99)


@dataclass
class LayerResult:
    """Everything Phase 2 keeps about one layer once its SAE is gone."""

    layer: int
    arrays: dict[str, np.ndarray]
    fvu_own: float
    fvu_neighbour: float | None
    neighbour_layer: int | None
    sae_info: dict[str, Any]


# ---------------------------------------------------------------------------- helpers


def neighbour_layer(layer: int, available: list[int]) -> int | None:
    """The layer whose activations SAE ``layer`` is also tried on: L+1, else L-1, if present."""
    if layer + 1 in available:
        return layer + 1
    if layer - 1 in available:
        return layer - 1
    return None


def sae_source(cfg: PipelineConfig) -> SAESource:
    return SAESource(
        release=cfg.sae_release, id_template=cfg.sae_id_template, width=cfg.sae_width, local_path=cfg.sae_path
    )


def corpus_model(cfg: PipelineConfig, data: SplitData) -> tuple[str, str]:
    """The model whose residual stream the general filter reads (Phase 1's), and why that one."""
    model, note = model_of_phase1(cfg.model, data.phase1_model)
    logger.info("general filter: model %s (%s)", model, note)
    return model, note


def _load_matrices(data: SplitData, layers: list[int], neighbours: dict[int, int | None]) -> dict[int, np.ndarray]:
    needed = sorted(set(layers) | {n for n in neighbours.values() if n is not None})
    matrices = {layer: data.layer_matrix(layer) for layer in needed}
    widths = {layer: m.shape[1] for layer, m in matrices.items()}
    if len(set(widths.values())) != 1:
        raise PipelineError(f"activation widths differ between layers: {widths}")
    return matrices


# ---------------------------------------------------------------------------- per layer


def analyse_layer(
    layer: int,
    source: SAESource,
    device: torch.device,
    matrices: dict[int, np.ndarray],
    neighbour: int | None,
    correct: np.ndarray,
    null: PermutationNull,
    general: GeneralTextFilter | None,
) -> LayerResult:
    """Score, null update, FVU and general firing shares of one layer, with its SAE loaded only here."""
    x = matrices[layer]
    sae = load_sae(source, layer, device=str(device))
    try:
        check_d_in(sae, x.shape[1], layer)
        acts = encode(sae, x)
        arrays: dict[str, np.ndarray] = dict(latent_scores(acts, correct))
        d_sae = acts.shape[1]
        if general is not None:
            freq = general.frequencies(sae, layer)
            flagged = freq >= general.threshold
        else:
            freq = np.full(d_sae, np.nan)
            flagged = np.zeros(d_sae, dtype=bool)
        arrays["general_freq"] = freq
        arrays["general_flagged"] = flagged
        if flagged.all():
            logger.warning("layer %d: every latent fires on general text; none can be ranked", layer)
        else:
            null.update((acts > 0)[:, ~flagged])
        fvu_own = fraction_of_variance_unexplained(sae, x)
        fvu_neighbour = fraction_of_variance_unexplained(sae, matrices[neighbour]) if neighbour is not None else None
        sae_info = {
            **source.describe(layer),
            "hook_name": sae_hook_name(sae),
            "d_in": int(sae.cfg.d_in),
            "d_sae": int(sae.cfg.d_sae),
            "architecture": type(sae).__name__,
        }
    finally:
        del sae
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    logger.info(
        "layer %d: FVU %.3f (layer %s: %s), %d flagged, best separation correct %.3f, incorrect %.3f",
        layer, fvu_own, neighbour, "n/a" if fvu_neighbour is None else f"{fvu_neighbour:.3f}", int(flagged.sum()),
        float(np.max(arrays["separation_correct"])), float(np.max(arrays["separation_incorrect"])),
    )
    return LayerResult(layer, arrays, fvu_own, fvu_neighbour, neighbour, sae_info)


# ---------------------------------------------------------------------------- ranking


def rank_direction(
    results: dict[int, LayerResult], direction: str, top_k: int, null: PermutationNull
) -> list[dict[str, Any]]:
    """The ``top_k`` unflagged latents of all layers by separation score in ``direction``.

    Ties go to the lower layer, then the lower latent index, so reruns list
    the same latents in the same order.
    """
    key = f"separation_{direction}"
    layer_col, latent_col, value_col = [], [], []
    for layer, res in sorted(results.items()):
        keep = np.flatnonzero(~res.arrays["general_flagged"])
        layer_col.append(np.full(keep.size, layer, dtype=np.int64))
        latent_col.append(keep.astype(np.int64))
        value_col.append(res.arrays[key][keep])
    layers = np.concatenate(layer_col)
    latents = np.concatenate(latent_col)
    values = np.concatenate(value_col)
    if values.size == 0:
        return []
    order = np.lexsort((latents, layers, -values))[:top_k]
    p_values = null.p_value(values[order], direction)
    entries = []
    for rank, (index, p) in enumerate(zip(order, p_values), start=1):
        arrays = results[int(layers[index])].arrays
        j = int(latents[index])
        entries.append({
            "rank": rank,
            "layer": int(layers[index]),
            "latent": j,
            "f_correct": float(arrays["f_correct"][j]),
            "f_incorrect": float(arrays["f_incorrect"][j]),
            "separation_score": float(values[index]),
            "mean_correct": float(arrays["mean_correct"][j]),
            "mean_incorrect": float(arrays["mean_incorrect"][j]),
            "t_stat": float(arrays["t_stat"][j]),
            "general_freq": float(arrays["general_freq"][j]),
            "p_family": float(p),
            "p_family_mc_se": float(np.sqrt(p * (1.0 - p) / null.n_permutations)),
        })
    return entries


def _direction_verdict(direction: str, entry: dict[str, Any] | None, mc: dict[str, Any] | None, n_family: int) -> str:
    """One clause per direction, in the words the summary repeats."""
    if entry is None or mc is None:
        return f"no {direction}-preferring latent was ranked"
    where = f"out of {n_family} unflagged latents (both directions)"
    p = f"p_family = {mc['p']:.4g} +- {mc['mc_se']:.2g} (Monte Carlo SE)"
    if mc["decision"] == "below":
        return f"the rank-1 {direction}-preferring latent beats the null {where}: {p}"
    if mc["decision"] == "above":
        return f"no {direction}-preferring latent beats the null {where}: rank-1 {p}"
    more = mc["more_shuffles_needed"]
    need = f"about {more} more shuffles needed" if more is not None else "p equals alpha: no number of shuffles decides"
    return (f"the rank-1 {direction}-preferring latent is undecided at this number of shuffles "
            f"({mc['n_permutations']}) {where}: {p}; {need}")


def null_summary(null: PermutationNull, top: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The permutation null as the results file records it, with a plain verdict per direction.

    ``beats_null`` is True only when the rank-1 p is below alpha by more than
    two Monte Carlo standard errors; ``mc_verdicts`` says when it is
    undecided and how many more shuffles would decide it.
    """
    seen = null.n_layers > 0
    quantiles = {
        d: ({f"{q}%": float(np.percentile(null.null_max[d], q)) for q in NULL_QUANTILES} if seen else None)
        for d in DIRECTIONS
    }
    if seen:
        quantiles["family"] = {f"{q}%": float(np.percentile(null.family_max, q)) for q in NULL_QUANTILES}
    mc: dict[str, dict[str, Any] | None] = {d: (monte_carlo_verdict(top[d][0]["p_family"], null.n_permutations, BEATS_NULL_ALPHA) if top[d] else None)
          for d in DIRECTIONS}
    beats = {d: (mc[d] or {}).get("decision") == "below" for d in DIRECTIONS}
    verdict = "; ".join(_direction_verdict(d, top[d][0] if top[d] else None, mc[d], null.n_latents)
                        for d in DIRECTIONS)
    return {
        "n_permutations": null.n_permutations,
        "seed": null.seed,
        "family": (f"all {null.n_latents} unflagged latents of all analysed layers, both directions: each shuffle "
                   "keeps the largest separation in either direction"),
        "n_latents_in_family": null.n_latents,
        "p_value": ("(1 + #{shuffles whose maximum separation over the family, either direction, >= score}) "
                    "/ (1 + n_permutations)"),
        "mc_rule": ("Monte Carlo SE = sqrt(p (1 - p) / n_permutations); a verdict needs |p - alpha| > 2 SE, "
                    "otherwise undecided at this number of shuffles"),
        "mc_verdicts": mc,
        "null_max_quantiles": quantiles,
        "alpha": BEATS_NULL_ALPHA,
        "beats_null": beats,
        "verdict": verdict,
        "null_max": {d: null.null_max[d].tolist() if seen else [] for d in DIRECTIONS},
        "null_max_family": null.family_max.tolist() if seen else [],
    }


# ---------------------------------------------------------------------------- writing


def _write_scores(scores_dir: Path, results: dict[int, LayerResult]) -> None:
    """All layers' arrays into a temporary folder, then renamed into place (no half-written folder)."""
    tmp = scores_dir.with_name(f"{TMP_PREFIX}{scores_dir.name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        for layer, res in sorted(results.items()):
            save_npz(tmp / PHASE2_SCORES.file_name(layer=layer), **{k: res.arrays[k] for k in ARRAY_KEYS})
        os.replace(tmp, scores_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _top_table(top: dict[str, list[dict[str, Any]]]) -> pd.DataFrame:
    rows = [{"direction": d, **entry} for d in DIRECTIONS for entry in top[d]]
    return pd.DataFrame(rows, columns=TOP_COLUMNS).astype({"rank": "int64", "layer": "int64", "latent": "int64"})


# ---------------------------------------------------------------------------- entry point


def run(cfg: PipelineConfig) -> Path:
    """Run Phase 2 on ``cfg.split``; return the results JSON written."""
    clock = RunClock()
    check_option_limits(cfg, "2")  # --top-k, --general-filter-threshold, ... within their declared limits
    data = load_split(cfg)
    layers = resolve_layers(data, cfg.layers)
    neighbours = {layer: neighbour_layer(layer, data.available_layers) for layer in layers}
    matrices = _load_matrices(data, layers, neighbours)
    d_model = next(iter(matrices.values())).shape[1]
    logger.info(
        "phase 2 (%s split): %d tasks (%d correct, %d incorrect), layers %s, d_model %d",
        data.split, len(data.task_ids), data.n_correct, data.n_incorrect, layers, d_model,
    )
    device = resolve_device(cfg.device)
    source = sae_source(cfg)
    null = PermutationNull(data.correct, n_permutations=cfg.permutations, seed=cfg.seed)

    general: GeneralTextFilter | None = None
    if cfg.general_filter:
        model_name, note = corpus_model(cfg, data)
        general = GeneralTextFilter.prepare(cfg, model_name, note, layers, d_model, device)
    results: dict[int, LayerResult] = {}
    try:
        for layer in tqdm(layers, desc=f"phase 2 {data.split}: layers", unit="layer"):
            results[layer] = analyse_layer(
                layer, source, device, matrices, neighbours[layer], data.correct, null, general
            )
    finally:
        if general is not None:
            general.close()

    top = {d: rank_direction(results, d, cfg.top_k, null) for d in DIRECTIONS}
    permutation = null_summary(null, top)
    n_flagged = {layer: int(res.arrays["general_flagged"].sum()) for layer, res in results.items()}
    general_info = general.describe(n_flagged) if general is not None else disabled_description()
    stability: dict[str, Any] | None = None
    reference: Path | None = None
    if data.split == "validation":
        reference = sae_reference(cfg.data_dir)
        try:
            stability = compute_stability(
                reference, source.to_dict(), {l: r.arrays for l, r in results.items()}, top
            )
        except (OSError, ValueError, KeyError, PipelineError) as exc:
            stability = {"available": False, "reference": str(reference), "reason": f"cannot read the sae-split results: {exc}"}

    phase_dir(cfg.data_dir, "2")  # created here, so a read-only data dir fails before the writes
    stamp = timestamp()
    scores_dir = PHASE2_SCORES.path(cfg.data_dir, split=data.split, ts=stamp, layer=0).parent
    top_path = PHASE2_TOP.path(cfg.data_dir, split=data.split, ts=stamp)
    results_path = PHASE2_RESULTS.path(cfg.data_dir, split=data.split, ts=stamp)
    meta_path = PHASE2_METADATA.path(cfg.data_dir, split=data.split, ts=stamp)
    fvu = {
        str(layer): {"own": res.fvu_own, "neighbour": res.fvu_neighbour, "neighbour_layer": res.neighbour_layer}
        for layer, res in sorted(results.items())
    }
    sae_section = {**source.to_dict(), "layers": {str(l): r.sae_info for l, r in sorted(results.items())}}
    document: dict[str, Any] = {
        "split": data.split,
        "n_tasks": len(data.task_ids),
        "n_correct": data.n_correct,
        "n_incorrect": data.n_incorrect,
        "layers": layers,
        "d_model": d_model,
        "sae": sae_section,
        "top_latents": top,
        "permutation_null": permutation,
        "fvu": fvu,
        "scores_dir": str(scores_dir),
        "top_latents_path": str(top_path),
        "general_filter": general_info,
        "labels": {**data.label_info, "split_table": str(data.split_table)},
        # The model and run whose activations and labels were read; Phase 3 checks them against its own inputs.
        "phase1_model": data.phase1_model,
        "label_source": data.label_source,
        "activation_site": "blocks.{L}.hook_resid_post at the last prompt token, encoded by SAE layer_L in float32",
    }
    if stability is not None:
        document["stability"] = stability
        document["note"] = "validation-split ranking: for stability only; Phase 3 takes its latents from the sae split (rule 6)"

    inputs: dict[str, str | Path] = {
        "split_table": data.split_table,
        "activations": data.activation_dir,
        **{f"labels_{i}" if len(data.label_tables) > 1 else "labels": p for i, p in enumerate(data.label_tables)},
    }
    if cfg.sae_path:
        inputs["sae_path"] = cfg.sae_path
    if general is not None and cfg.general_corpus:
        inputs["general_corpus"] = cfg.general_corpus
    if reference is not None:
        inputs["stability_reference"] = reference
    meta = build_metadata(
        "2", cfg, clock,
        inputs=inputs,
        outputs={"results": results_path, "top_latents": top_path, "scores_dir": scores_dir},
        extra={
            "split": data.split,
            "layers": layers,
            "sae": sae_section,
            "sae_ids": {str(l): r.sae_info.get("sae_id", r.sae_info.get("path")) for l, r in sorted(results.items())},
            "model": general.model_name if general is not None else (data.phase1_model or cfg.model),
            "phase1_model": data.phase1_model,
            "device": str(device),
            "labels": document["labels"],
            "general_filter": general_info,
            "permutation_null": {k: v for k, v in permutation.items() if k not in ("null_max", "null_max_family")},
            "fvu": fvu,
        },
    )

    _write_scores(scores_dir, results)
    PHASE2_TOP.write(_top_table(top), top_path)
    PHASE2_METADATA.write(json_safe(meta), meta_path)
    PHASE2_RESULTS.write(json_safe(document), results_path)
    logger.info("phase 2: %s", permutation["verdict"])
    for d in DIRECTIONS:
        if top[d]:
            best = top[d][0]
            logger.info(
                "phase 2: top %s-preferring latent: layer %d latent %d, separation %.3f, p_family %.4g",
                d, best["layer"], best["latent"], best["separation_score"], best["p_family"],
            )
    logger.info("phase 2 done in %.1f s -> %s", clock.elapsed(), results_path)
    return results_path
