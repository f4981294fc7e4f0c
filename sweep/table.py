"""The sweep's comparison table, read from the Phase 3 result (``validation_<ts>.json``) each model's step wrote.

Why read the result and not recompute: the table must show exactly the numbers
Phase 3 reported (chosen on sae/hyperparams, measured on validation). A value
Phase 3 did not measure (a probe, when no probe was run) shows as "n/a", and so
does every cell of a model whose chain failed or whose result cannot be read
(``read_phase3_result`` refuses it; the reason is logged), rather than stopping
the table.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from common.datadir import Phase3Result, TopLatent, read_phase3_result
from common.errors import PipelineError

logger = logging.getLogger(__name__)

DIRECTIONS = ("correct", "incorrect")
NA = "n/a"


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _with_interval(value: Any, lo: Any, hi: Any) -> str:
    v = _number(value)
    if v is None:
        return NA
    low, high = _number(lo), _number(hi)
    return f"{v:.3f} [{low:.3f}, {high:.3f}]" if low is not None and high is not None else f"{v:.3f} [interval n/a]"


def _latent_auroc(result: Phase3Result, top: TopLatent) -> str:
    """AUROC of Phase 2's rank-1 latent on the validation split at temperature 0, with its bootstrap interval."""
    for entry in result.statistical.latents:
        if (entry.layer, entry.latent, entry.direction) == (top.layer, top.latent, top.direction):
            row = entry.validation_row()
            if row is not None:
                return _with_interval(row.get("auroc"), row.get("auroc_ci_lo"), row.get("auroc_ci_hi"))
    return NA


def _beats_null(result: Phase3Result, direction: str) -> str:
    """Whether Phase 2's rank-1 latent beat its permutation null: without it, the row is exploratory."""
    verdict = result.phase2_null.beats_null.get(direction)
    return NA if verdict is None else ("yes" if verdict else "no")


def _probe_auroc(result: Phase3Result, direction: str) -> str:
    """The logistic probe's validation AUROC (temperature 0) at its best layer for this direction's class.

    The best layer is chosen on hyperparams (``statistical.probes.best_layer[kind][class]``).
    """
    probes = result.statistical.probes
    layer = (probes.best_layer.get("logistic") or {}).get(direction)
    entry = None if layer is None else probes.find("logistic", direction, layer)
    row = None if entry is None else entry.validation_row()
    if row is None:
        return NA
    return f"L{layer} " + _with_interval(row.get("auroc"), row.get("auroc_ci_lo"), row.get("auroc_ci_hi"))


def _steering(result: Phase3Result, direction: str) -> tuple[str, str]:
    """(chosen alpha, effect on validation with its interval): correction rate for "correct", corruption for "incorrect"."""
    steer = result.steering.directions.get(direction)
    if steer is None:
        return NA, NA
    alpha = _number(steer.chosen_alpha)
    val = steer.validation or {}
    kind = "correction" if direction == "correct" else "corruption"
    effect = _with_interval(val.get(f"{kind}_rate"), val.get(f"{kind}_ci_lo"), val.get(f"{kind}_ci_hi"))
    return (NA if alpha is None else f"{alpha:g}"), (effect if effect == NA else f"{kind} {effect}")


def model_rows(name: str, path: Path | None) -> list[dict[str, Any]]:
    """The table rows of one model (one per direction) from its Phase 3 result; all "n/a" without a readable one."""
    try:
        if path is None:
            raise PipelineError("no Phase 3 result")
        result = read_phase3_result(path)
    except PipelineError as exc:
        logger.warning("sweep table, model %s: %s", name, exc)
        return [{"model": name, "direction": d, "best_layer": NA, "latent": NA, "latent_auroc": NA, "probe_auroc": NA,
                 "alpha": NA, "steering_effect": NA, "beats_null": NA, "source": None} for d in DIRECTIONS]
    rows = []
    for direction in DIRECTIONS:
        top = result.phase2_top.get(direction)
        alpha, effect = _steering(result, direction)
        rows.append({
            "model": name, "direction": direction,
            "best_layer": NA if top is None else top.layer, "latent": NA if top is None else top.latent,
            "beats_null": _beats_null(result, direction),
            "latent_auroc": _latent_auroc(result, top) if top else NA, "probe_auroc": _probe_auroc(result, direction),
            "alpha": alpha, "steering_effect": effect, "source": str(path),
        })
    return rows


def comparison_rows(models: list[tuple[str, Path | None]]) -> list[dict[str, Any]]:
    """Rows of every model, in the order given: (name, its Phase 3 ``validation_<ts>.json`` or None)."""
    return [row for name, path in models for row in model_rows(name, path)]


COLUMNS = (
    ("model", "model"), ("direction", "direction"), ("best_layer", "best layer"), ("latent", "latent"), ("beats_null", "beats null"),
    ("latent_auroc", "latent AUROC [95% CI]"), ("probe_auroc", "probe AUROC [95% CI]"),
    ("alpha", "steering alpha"), ("steering_effect", "steering effect [95% CI]"),
)


def render_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table (readable in a terminal too); AUROCs are on the validation split at temperature 0."""
    head = "| " + " | ".join(title for _, title in COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in COLUMNS) + "|"
    body = ["| " + " | ".join(str(row.get(key, NA)) for key, _ in COLUMNS) + " |" for row in rows]
    note = ("AUROC: Phase 2's rank-1 latent per direction, validation split, temperature 0. Steering: coefficient "
            "chosen on hyperparams; correction rate (correct direction) or corruption rate (incorrect) on validation.")
    return "\n".join([head, rule, *body, "", note])
