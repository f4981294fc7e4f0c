"""How stable the sae-split ranking is on the validation split (docs/design.md section 4).

Why: latents are chosen on the sae split (rule 6); the validation split then
says whether the same latents would have been found on other problems. This
only *reports*: nothing here chooses or re-ranks anything.

Compared, per direction: overlap of the two top-k sets, and Spearman's rank
correlation of the two splits' separation scores over the sae split's top-k
latents and over every latent unflagged in both runs. The comparison needs
the same SAEs; otherwise it is reported as not comparable.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as sps

from common.datadir import PHASE2_RESULTS, PHASE2_SCORES, newest_phase2_results
from common.errors import PipelineError
from common.statistics.stats import DIRECTIONS

logger = logging.getLogger(__name__)

def sae_reference(data_dir: str | Path) -> Path | None:
    """The newest sae-split results to compare with, or None (stability is then reported as unavailable)."""
    try:
        return newest_phase2_results(data_dir, "sae")
    except PipelineError:
        return None


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rho, or None when undefined (fewer than 2 pairs, or a constant side)."""
    if a.size < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return None
    return float(sps.spearmanr(a, b).statistic)


def _load_reference_scores(scores_dir: Path, layers: list[int]) -> dict[int, dict[str, np.ndarray]]:
    out = {}
    for layer in layers:
        path = scores_dir / PHASE2_SCORES.file_name(layer=layer)
        with np.load(path) as data:
            out[layer] = {k: data[k] for k in ("separation_correct", "separation_incorrect", "general_flagged")}
    return out


def compute_stability(
    reference_path: Path | None,
    sae_source: dict[str, Any],
    scores: dict[int, dict[str, np.ndarray]],
    top: dict[str, list[dict[str, Any]]],
) -> dict[str, Any]:
    """Stability of the sae-split results at ``reference_path`` against this (validation) run.

    ``scores`` are this run's full arrays per layer, ``top`` its top-k lists.
    A missing reference or an incomparable one is reported, not raised.
    """
    if reference_path is None:
        return {"available": False, "reason": "no sae-split results found in the Phase 2 folder; run `python3 run.py phase 2 --split sae` first to get stability"}
    reference = PHASE2_RESULTS.read_json(reference_path, needed=("sae", "scores_dir", "layers"))
    base = {"available": False, "reference": str(reference_path)}
    ref_source = {k: v for k, v in reference.get("sae", {}).items() if k != "layers"}
    if ref_source != sae_source:
        return {**base, "reason": f"the sae-split run used other SAEs ({ref_source}) than this run ({sae_source})"}
    # The scores folder is written beside its results file.
    scores_dir = reference_path.parent / Path(reference["scores_dir"]).name
    common = sorted(set(int(layer) for layer in reference["layers"]) & set(scores))
    if not common:
        return {**base, "reason": f"no layer in common: sae-split layers {reference['layers']}, this run {sorted(scores)}"}
    missing = [layer for layer in common if not (scores_dir / PHASE2_SCORES.file_name(layer=layer)).is_file()]
    if missing:
        return {**base, "reason": f"score arrays of layers {missing} are missing from {scores_dir}"}
    ref_scores = _load_reference_scores(scores_dir, common)
    shapes = {layer for layer in common if ref_scores[layer]["separation_correct"].shape != scores[layer]["separation_correct"].shape}
    if shapes:
        return {**base, "reason": f"latent counts differ on layers {sorted(shapes)}"}

    result: dict[str, Any] = {
        "available": True,
        "reference": str(reference_path),
        "layers_compared": common,
        "note": "reported only; latents are chosen on the sae split (rule 6)",
        "directions": {},
    }
    for direction in DIRECTIONS:
        key = f"separation_{direction}"
        ref_top = reference["top_latents"][direction]
        ref_set = {(int(e["layer"]), int(e["latent"])) for e in ref_top}
        val_set = {(int(e["layer"]), int(e["latent"])) for e in top[direction]}
        k = min(len(ref_set), len(val_set))
        overlap = len(ref_set & val_set)
        pairs = [(int(e["layer"]), int(e["latent"])) for e in ref_top]
        in_common = [(layer, j) for layer, j in pairs if layer in ref_scores]
        ref_vals = np.array([ref_scores[layer][key][j] for layer, j in in_common], dtype=np.float64)
        val_vals = np.array([scores[layer][key][j] for layer, j in in_common], dtype=np.float64)
        all_ref, all_val = [], []
        for layer in common:
            keep = ~(ref_scores[layer]["general_flagged"].astype(bool) | scores[layer]["general_flagged"].astype(bool))
            all_ref.append(ref_scores[layer][key][keep])
            all_val.append(scores[layer][key][keep])
        all_ref_arr = np.concatenate(all_ref)
        all_val_arr = np.concatenate(all_val)
        result["directions"][direction] = {
            "k": k,
            "overlap": overlap,
            "overlap_at_k": (overlap / k) if k else None,
            "spearman_top_k": _spearman(ref_vals, val_vals),
            "n_top_k_compared": int(ref_vals.size),
            "spearman_all_unflagged": _spearman(all_ref_arr, all_val_arr),
            "n_all_unflagged": int(all_ref_arr.size),
        }
    logger.info(
        "stability vs %s: overlap@k correct %s, incorrect %s",
        reference_path.name,
        result["directions"]["correct"]["overlap_at_k"],
        result["directions"]["incorrect"]["overlap_at_k"],
    )
    return result
