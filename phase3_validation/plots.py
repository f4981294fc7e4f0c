"""Phase 3's figures: ROC curves, metrics by temperature, the steering coefficient grid.

Why PNGs: users read results over SSH and paste figures into theses; each
figure carries its baseline (the diagonal, chance AUROC, the always-positive
F1) so it cannot be read without it. Rendered with the Agg backend (no
display) to PNG bytes: the phase renders everything before it writes
anything, so a failing figure never leaves half a set of outputs.
"""

from __future__ import annotations

import io
import logging
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve

from common.datadir import DirectionSteeringResult
from phase3_validation.statistical import LatentEvaluation

logger = logging.getLogger(__name__)

DIRECTIONS = ("correct", "incorrect")


def _png(fig: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=120, bbox_inches="tight", format="png")
    plt.close(fig)
    return buffer.getvalue()


def roc_curves(evaluations: list[LatentEvaluation], key: str = "validation@T0") -> bytes:
    """ROC of every validated latent on the validation split at temperature 0, one panel per direction."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 5), squeeze=False)
    for ax, direction in zip(axes[0], DIRECTIONS):
        ax.plot([0, 1], [0, 1], ls="--", color="grey", label="chance (AUROC 0.5)")
        for ev in (e for e in evaluations if e.latent.direction == direction):
            y, scores = ev.roc_data[key]
            if y.all() or not y.any():
                continue
            fpr, tpr, _ = roc_curve(y, scores)
            auroc = next(r["auroc"] for r in ev.rows if r["split"] == "validation" and r["temperature"] == 0.0)
            ax.plot(fpr, tpr, label=f"#{ev.latent.rank} {ev.latent.name} (AUROC {auroc:.3f})")
        ax.set_title(f"{direction}-preferring latents (positive = {direction})")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle("ROC on the validation split, temperature 0 (latent activation as score)")
    return _png(fig)


def metrics_by_temperature(metrics: pd.DataFrame) -> bytes:
    """AUROC (with bootstrap CI) and F1 (at the hyperparams threshold) against temperature, one line per latent."""
    val = metrics[metrics["split"] == "validation"]
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), squeeze=False, sharex=True)
    for col, direction in enumerate(DIRECTIONS):
        part = val[val["direction"] == direction]
        ax_auc, ax_f1 = axes[0][col], axes[1][col]
        ax_auc.axhline(0.5, ls="--", color="grey", label="chance 0.5")
        for (rank, layer, latent), rows in part.groupby(["rank", "layer", "latent"], sort=True):
            rows = rows.sort_values("temperature")
            t = rows["temperature"].to_numpy()
            auc = rows["auroc"].to_numpy(dtype=float)
            err = np.vstack([auc - rows["auroc_ci_lo"].to_numpy(dtype=float), rows["auroc_ci_hi"].to_numpy(dtype=float) - auc])
            label = f"#{rank} L{layer}/{latent}"
            ax_auc.errorbar(t, auc, yerr=np.nan_to_num(err), marker="o", capsize=3, label=label)
            ax_f1.plot(t, rows["f1"], marker="o", label=label)
        if not part.empty:
            base = part.groupby("temperature")["f1_baseline_always_positive"].first().sort_index()
            ax_f1.plot(base.index, base.to_numpy(), ls="--", marker="_", markersize=12, color="grey",
                       label="always positive")
        for ax in (ax_auc, ax_f1):
            ax.set_ylim(-0.02, 1.02)
        ax_auc.set_title(f"{direction}-preferring: AUROC (95% CI)")
        ax_f1.set_title(f"{direction}-preferring: F1 at hyperparams threshold")
        ax_f1.set_xlabel("temperature (0 = Phase 1.0 greedy)")
        for ax in (ax_auc, ax_f1):
            ax.legend(fontsize=7)
    only_greedy = val["temperature"].nunique() <= 1
    fig.suptitle("Validation split: metrics by sampling temperature"
                 + (" (Phase 1.2 absent: temperature 0 only)" if only_greedy else ""))
    return _png(fig)


def coverage_accuracy(coverage: dict[str, Any]) -> bytes:
    """Pass rate among the top x% trusted validation tasks per predictor (ties averaged), its 95% band, the overall rate."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, rows in coverage["curves"].items():
        x = [100 * r["coverage"] for r in rows]
        (line,) = ax.plot(x, [r["pass_rate"] for r in rows], marker="o", label=key)
        if all("ci_lo" in r for r in rows):  # the Clopper-Pearson 95% band of each point (absent in older results)
            ax.fill_between(x, [r["ci_lo"] for r in rows], [r["ci_hi"] for r in rows], color=line.get_color(),
                            alpha=0.15, lw=0)
    ax.axhline(coverage["overall_pass_rate"], ls="--", color="grey",
               label=f"overall pass rate {coverage['overall_pass_rate']:.3f}")
    ax.set_xlabel("coverage: % of validation tasks trusted (top-ranked by the predictor)")
    ax.set_ylabel("pass rate among trusted tasks")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8)
    ax.set_title(f"Coverage-accuracy on the validation split ({coverage['n_validation']} tasks; "
                 "band: Clopper-Pearson 95%)")
    return _png(fig)


def steering_grid(directions: dict[str, DirectionSteeringResult]) -> bytes:
    """Rates (exact 95% CI) and the excess effect over controls across the hyperparams grid, chosen alpha marked.

    alpha < 0 points are the opposite-sign experiment (never chosen); every
    rate is against the hyperparams split's alpha = 0 rerun.
    """
    fig, axes = plt.subplots(1, max(1, len(directions)), figsize=(11, 4.5), squeeze=False)
    for ax, (direction, info) in zip(axes[0], directions.items()):
        grid = sorted(info.grid_hyperparams + info.opposite_sign["grid_hyperparams"], key=lambda r: r["alpha"])
        alphas = np.array([r["alpha"] for r in grid])
        # A small horizontal offset keeps the two rates' interval bars apart.
        offset = 0.01 * max(float(np.ptp(alphas)), 1e-6)
        for sign, (what, color) in zip((-1, 1), (("correction", "tab:green"), ("corruption", "tab:red"))):
            rate = np.array([r[f"{what}_rate"] for r in grid])
            err = np.vstack([rate - [r[f"{what}_ci_lo"] for r in grid], [r[f"{what}_ci_hi"] for r in grid] - rate])
            ax.errorbar(alphas + sign * offset, rate, yerr=err, marker="o", capsize=3, color=color,
                        label=f"{what} rate (95% CI)")
        ax.plot(alphas, [r["excess_effect"] for r in grid], ls="--", marker="s", color="black",
                label="predicted effect - mean control effect")
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.axvline(0.0, color="grey", lw=0.8, ls=":")
        ax.axvline(info.chosen_alpha, ls=":", color="tab:blue", label=f"chosen alpha {info.chosen_alpha:g}")
        target = info.target
        ax.set_title(f"{direction}-preferring L{target.layer}/{target.latent} (alpha < 0: opposite sign)")
        ax.set_xlabel("alpha (x mean residual norm at the hook point)")
        ax.set_ylabel("vs the alpha = 0 rerun")
        ax.set_ylim(-1.02, 1.02)
        ax.legend(fontsize=7)
    fig.suptitle("Steering coefficient selection on the hyperparams split")
    return _png(fig)
