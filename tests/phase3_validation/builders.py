"""Builders for Phase 3 tests (a plain module, imported): local SAE Lens SAEs, synthetic Phase 0.1/1.0/1.2/2 outputs.

Why synthetic Phase 2 results: Phase 3 only reads Phase 2's results JSON and
score arrays, so tests write them directly (same schema) and control exactly
which latents are "chosen"; this also keeps Phase 3's tests independent of
Phase 2's code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("sae_lens")
from sae_lens import JumpReLUSAE, JumpReLUSAEConfig
from sae_lens.saes.sae import SAEMetadata

from common.datadir import (
    PHASE1_DATASET,
    PHASE2_RESULTS,
    metadata_path_of,
    read_phase1_metadata,
    save_task_activations,
    timestamp,
    write_parquet,
)
from common.prompts import build_prompt
from tests.artifact_builders import write_phase1_run


def make_sae(
    folder: Path,
    layer: int,
    d_in: int,
    d_sae: int,
    seed: int = 0,
    threshold: float = 0.05,
    planted: dict[int, np.ndarray] | None = None,
) -> Path:
    """A JumpReLU SAE with random weights for ``layer``, saved as ``folder/layer_{layer}``.

    ``planted`` maps a latent index to an input direction: that latent's
    encoder column becomes the unit direction (no bias, threshold 0.5), so it
    fires exactly on vectors with a large component along it.
    """
    torch.manual_seed(seed)
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae, metadata=SAEMetadata(hook_name=f"blocks.{layer}.hook_resid_post")))
    with torch.no_grad():
        sae.W_enc.normal_(0, 1 / np.sqrt(d_in))
        sae.W_dec.normal_(0, 1 / np.sqrt(d_sae))
        sae.b_enc.normal_(0, 0.05)
        sae.b_dec.zero_()
        sae.threshold.fill_(threshold)
        for latent, direction in (planted or {}).items():
            unit = torch.as_tensor(direction, dtype=torch.float32)
            unit = unit / unit.norm()
            sae.W_enc[:, latent] = unit
            sae.W_dec[latent] = unit
            sae.b_enc[latent] = 0.0
            sae.threshold[latent] = 0.5
    path = folder / f"layer_{layer}"
    sae.save_model(path)
    return path


def latent_item(rank: int, layer: int, latent: int, separation: float, p_family: float = 0.01) -> dict[str, Any]:
    return {
        "rank": rank, "layer": layer, "latent": latent, "f_correct": 0.5 + separation / 2, "f_incorrect": 0.5 - separation / 2,
        "separation_score": separation, "mean_correct": 1.0, "mean_incorrect": 0.0, "t_stat": 5.0, "p_family": p_family,
    }


def write_phase2_results(
    data_dir: Path,
    sae_dir: Path,
    top: dict[str, list[dict[str, Any]]],
    d_sae: int,
    layers: list[int],
    beats_null: dict[str, bool] | None = None,
    seed: int = 0,
) -> Path:
    """A Phase 2 results JSON (schema of phase2_sae_analysis) plus ``scores/layer_{L}.npz`` arrays.

    Score arrays: every latent fires on some tasks (f > 0) with separation
    near zero, except the top latents, which carry their listed separation.
    """
    out = data_dir / "phase2"
    scores_dir = out / "scores_sae"
    scores_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for layer in layers:
        f = rng.uniform(0.1, 0.9, size=d_sae)
        sep = rng.uniform(-0.005, 0.005, size=d_sae)
        for direction, items in top.items():
            for item in items:
                if item["layer"] == layer and item["latent"] < d_sae:
                    sep[item["latent"]] = item["separation_score"] * (1 if direction == "correct" else -1)
        np.savez(scores_dir / f"layer_{layer}.npz", separation_correct=sep, separation_incorrect=-sep,
                 f_correct=f + sep / 2, f_incorrect=f - sep / 2, mean_correct=f, mean_incorrect=f, t_stat=sep * 10,
                 general_freq=np.zeros(d_sae), general_flagged=np.zeros(d_sae, dtype=bool))
    beats = beats_null or {"correct": False, "incorrect": False}
    path = PHASE2_RESULTS.path(data_dir, split="sae", ts=timestamp())
    dataset = PHASE1_DATASET.newest(data_dir)  # the run Phase 2 "labelled" its tasks with
    PHASE2_RESULTS.write({
        "split": "sae",
        "n_tasks": 0,
        "labels": {"source_tables": [str(dataset)]},
        "phase1_model": read_phase1_metadata(dataset)["model"],
        "label_source": {"phase": "1", "run_id": None, "metadata": str(metadata_path_of(dataset)), "tables": [str(dataset)]},
        "layers": layers,
        "sae": {"release": "local", "id_template": "layer_{layer}", "width": "tiny", "local_path": str(sae_dir),
                "layers": {str(layer): {"source": "local"} for layer in layers}},
        "top_latents": top,
        "permutation_null": {"n_permutations": 50, "seed": 7, "beats_null": beats, "verdict": "synthetic",
                             "null_max": {"correct": [0.5] * 50, "incorrect": [0.5] * 50}},
        "scores_dir": str(scores_dir),
        "top_latents_path": None,
    }, path)
    return path


def mbpp_row(task_id: int, text: str, tests: list[str]) -> dict[str, Any]:
    return {"task_id": task_id, "text": text, "code": "def f():\n    return 1", "test_list": tests,
            "test_setup_code": "", "challenge_test_list": []}


def write_splits(data_dir: Path, rows: list[dict[str, Any]], hp_ids: list[int], val_ids: list[int]) -> None:
    """Phase 0.1 split tables (full MBPP rows) for the hyperparams and validation tasks."""
    folder = data_dir / "phase0_1"
    table = pd.DataFrame(rows)
    for name, ids in (("hyperparams", hp_ids), ("validation", val_ids)):
        write_parquet(table[table["task_id"].isin(ids)].reset_index(drop=True), folder / f"{name}_mbpp.parquet")


def write_synthetic_phase1(
    data_dir: Path,
    rows: list[dict[str, Any]],
    passed: dict[int, bool],
    activations: dict[int, dict[int, np.ndarray]],
) -> Path:
    """A Phase 1.0 dataset (prompts rebuilt from ``rows``) and its activation files."""
    records = []
    for row in rows:
        tid = row["task_id"]
        records.append({"task_id": tid, "prompt": build_prompt(row["text"], row["test_list"]),
                        "generated_text": "", "extracted_code": "", "passed": passed[tid],
                        "outcome": "passed" if passed[tid] else "assertion"})
        save_task_activations(data_dir / "phase1_0" / "activations", tid, activations[tid],
                              "correct" if passed[tid] else "incorrect")
    return write_phase1_run(data_dir, pd.DataFrame(records))
