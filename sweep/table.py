"""The sweep's comparison table, read from the Phase 3 ``validation_<ts>.json`` each model's step wrote.

Why read the JSON and not recompute: the table must show exactly the numbers
Phase 3 reported (chosen on sae/hyperparams, measured on validation). A field
Phase 3 did not write (a probe, when no probe was run; a model whose chain
failed) shows as "n/a" rather than stopping the table.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

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


def _latent_auroc(doc: dict[str, Any], top: dict[str, Any]) -> str:
    """AUROC of Phase 2's rank-1 latent on the validation split at temperature 0, with its bootstrap interval."""
    for entry in doc.get("statistical", {}).get("latents", []) or []:
        if entry.get("layer") == top.get("layer") and entry.get("latent") == top.get("latent") \
                and entry.get("direction", top.get("direction")) == top.get("direction"):
            for row in entry.get("rows", []) or []:
                if row.get("split") == "validation" and _number(row.get("temperature")) == 0.0:
                    return _with_interval(row.get("auroc"), row.get("auroc_ci_lo"), row.get("auroc_ci_hi"))
    return NA


def _beats_null(doc: dict[str, Any], direction: str) -> str:
    """Whether Phase 2's rank-1 latent beat its permutation null: without it, the row is exploratory."""
    verdict = ((doc.get("phase2_null") or {}).get("beats_null") or {}).get(direction)
    return NA if verdict is None else ("yes" if verdict else "no")


def _probe_auroc(doc: dict[str, Any], direction: str) -> str:
    """The logistic probe's validation AUROC (temperature 0) at its best layer for this direction's class.

    Phase 3 writes ``statistical.probes``: ``best_layer[kind][class]`` (chosen on
    hyperparams) and one entry per probe, layer and class with its metric rows.
    """
    probes = (doc.get("statistical") or {}).get("probes") or {}
    layer = ((probes.get("best_layer") or {}).get("logistic") or {}).get(direction)
    if layer is None:
        return NA
    for entry in probes.get("probes") or []:
        if entry.get("probe") == "logistic" and entry.get("positive_class") == direction and entry.get("layer") == layer:
            for row in entry.get("rows") or []:
                if row.get("split") == "validation" and row.get("temperature") == 0.0:
                    return f"L{layer} " + _with_interval(row.get("auroc"), row.get("auroc_ci_lo"), row.get("auroc_ci_hi"))
    return NA


def _steering(doc: dict[str, Any], direction: str) -> tuple[str, str]:
    """(chosen alpha, effect on validation with its interval): correction rate for "correct", corruption for "incorrect"."""
    steer = ((doc.get("steering") or {}).get("directions") or {}).get(direction)
    if not isinstance(steer, dict):
        return NA, NA
    alpha = _number(steer.get("chosen_alpha"))
    val = steer.get("validation") or {}
    kind = "correction" if direction == "correct" else "corruption"
    effect = _with_interval(val.get(f"{kind}_rate"), val.get(f"{kind}_ci_lo"), val.get(f"{kind}_ci_hi"))
    return (NA if alpha is None else f"{alpha:g}"), (effect if effect == NA else f"{kind} {effect}")


def model_rows(name: str, path: Path | None) -> list[dict[str, Any]]:
    """The table rows of one model (one per direction) from its Phase 3 JSON; all "n/a" without one."""
    try:
        if path is None:
            raise FileNotFoundError("no Phase 3 result")
        doc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return [{"model": name, "direction": d, "best_layer": NA, "latent": NA, "latent_auroc": NA, "probe_auroc": NA,
                 "alpha": NA, "steering_effect": NA, "beats_null": NA, "source": None} for d in DIRECTIONS]
    rows = []
    for direction in DIRECTIONS:
        top = (doc.get("phase2_top") or {}).get(direction) or {}
        alpha, effect = _steering(doc, direction)
        rows.append({
            "model": name, "direction": direction,
            "best_layer": top.get("layer", NA), "latent": top.get("latent", NA),
            "beats_null": _beats_null(doc, direction),
            "latent_auroc": _latent_auroc(doc, top) if top else NA, "probe_auroc": _probe_auroc(doc, direction),
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
