"""Phase 3's reviewer baselines (what a predictor adds to free signals): confounds, the model's confidence, direction geometry, coverage.

Why: a hidden-state predictor of correctness is only interesting for what it
adds to what a reader gets for free. Prompt length alone can predict
correctness (longer prompts, harder tasks); so can the model's confidence in
its own tokens; the SAE latent may point nowhere near the probe's direction;
and a predictor is only of practical use if trusting its top-ranked tasks
raises the pass rate. This module wires the pure computations of
``baselines.py`` to Phase 3's inputs, with the phase's discipline: every
model (signs, logistic regressions, probes) is fitted on the sae split, the
best latent and probe are chosen by their hyperparams AUROC, and every number
is computed on the validation split.

Without a sae split nothing here can be fitted: the section is a one-line
note. A Phase 1 dataset written before ``mean_logprob`` (or
``n_prompt_tokens``) was recorded drops only that predictor, with a note.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from common.saes.loading import encode, load_sae
from phase3_validation import baselines
from phase3_validation.inputs import Phase3Inputs, SplitTasks
from phase3_validation.probes import MIN_PROBE_CLASS, ProbeResults, fit_layer, fit_logistic_probe
from phase3_validation.prompt_confidence import KNOWN, PromptConfidence, chosen_before_generation
from phase3_validation.prompt_confidence import NAMES as PROMPT_TIME_NAMES
from phase3_validation.statistical import LatentEvaluation, split_too_small

logger = logging.getLogger(__name__)

CONFIDENCE = "mean_logprob"
RESIDUALISED = "probe_length_residualised"
RULES = {
    "confounds": "n_prompt_tokens: prompt length in tokens (Phase 1, no padding); cyclomatic_complexity: of the "
                 "reference solution (Phase 0); n_asserts and asserts_chars: number and total characters of the "
                 "task's asserts (split table test_list)",
    "single_auroc": "each feature's sign learnt by a one-feature logistic regression on the sae split; AUROC on "
                    "validation with DeLong's 95% interval (logit scale)",
    "beyond_confounds": "logistic regressions on the confounds alone, the predictor alone and both, fitted on the "
                        "sae split; on validation the combined model against the better of the confound model and "
                        "chance (0.5), against the predictor alone, and against 0.5, each with a paired bootstrap "
                        f"95% interval; a gain or loss is called only when the whole interval is beyond "
                        f"{baselines.GAIN_TOLERANCE} AUROC",
    "best_latent": "the validated SAE latent with the highest hyperparams AUROC (ties: Phase 2 order)",
    "best_probe": "the logistic probe layer with the highest hyperparams AUROC; its sae-split scores are out-of-fold "
                  "(5-fold cross-fitting), so the combined regression does not see in-sample probe scores",
    "beyond_confidence": "the same comparison with mean_logprob in place of the confounds",
    "coverage": "validation tasks ranked by each predictor's P(correct) (one-feature logistic regression fitted on "
                "sae); pass rate among the top x% 'trusted' tasks, tasks tied at the cut taken in expectation over "
                "their orderings, with a Clopper-Pearson 95% interval",
    "length_residualised_probe": "the best layer's logistic probe refitted after removing the linear effect of "
                                 "n_prompt_tokens from every activation dimension (one least-squares line per "
                                 "dimension, fitted on the sae split only and applied to both splits)",
    "geometry": "cosine (sign kept) between the SAE latent's decoder row, the logistic probe's weight vector in "
                "residual coordinates (coef / feature scale) and the sae-split difference of class means, at the "
                "latent's layer; probe and difference of means point towards correct",
}


def confound_features(split: SplitTasks) -> tuple[pd.DataFrame, dict[str, str]]:
    """The confound columns of a split (task order) and, per confound that cannot be built, why."""
    features: dict[str, Any] = {}
    missing: dict[str, str] = {}
    if "n_prompt_tokens" in split.baseline.columns:
        features["n_prompt_tokens"] = split.baseline["n_prompt_tokens"].to_numpy(dtype=float)
    else:
        missing["n_prompt_tokens"] = "the Phase 1 dataset has no n_prompt_tokens column (written before it was recorded)"
    if "cyclomatic_complexity" in split.tasks.columns:
        features["cyclomatic_complexity"] = split.tasks["cyclomatic_complexity"].to_numpy(dtype=float)
    else:
        missing["cyclomatic_complexity"] = f"the split table {split.table_path.name} has no cyclomatic_complexity column"
    tests = [list(t) for t in split.tasks["test_list"]]
    features["n_asserts"] = np.array([len(t) for t in tests], dtype=float)
    features["asserts_chars"] = np.array([sum(len(str(a)) for a in t) for t in tests], dtype=float)
    return pd.DataFrame(features), missing


def confidence(split: SplitTasks, fill: float | None = None) -> tuple[np.ndarray | None, str | None]:
    """Per-task mean log-probability of the model's own tokens, or None and the one-line reason.

    Tasks with no generated token have no mean; they get ``fill`` (the sae
    split's lowest value: least confident) so every predictor scores the same tasks.
    """
    if CONFIDENCE not in split.baseline.columns:
        return None, ("confidence baseline unavailable: the Phase 1 dataset has no mean_logprob column (written "
                      "before log-probabilities were recorded); rerun Phase 1 to add it")
    values = pd.to_numeric(split.baseline[CONFIDENCE], errors="coerce").to_numpy(dtype=float)
    if np.isnan(values).all():
        return None, "confidence baseline unavailable: mean_logprob is empty for every task of the Phase 1 dataset"
    if np.isnan(values).any():
        values = np.where(np.isnan(values), np.nanmin(values) if fill is None else fill, values)
    return values, None


def best_latent(evaluations: list[LatentEvaluation]) -> LatentEvaluation:
    """The validated latent with the highest hyperparams AUROC: chosen without looking at validation."""
    def hp_auroc(ev: LatentEvaluation) -> float:
        auroc = ev.rows[0]["auroc"]
        return -1.0 if auroc is None or math.isnan(auroc) else float(auroc)
    return max(evaluations, key=hp_auroc)  # max keeps the first of ties: Phase 2 order


def _latent_scores(inputs: Phase3Inputs, layer: int, latent: int, sae_cache: dict[int, Any]
                   ) -> tuple[np.ndarray, np.ndarray]:
    if layer not in sae_cache:
        sae_cache[layer] = load_sae(inputs.results.sae_source, layer, device="cpu")
    sae = sae_cache[layer]
    assert inputs.sae is not None
    return (encode(sae, inputs.activations(inputs.sae, layer))[:, latent],
            encode(sae, inputs.activations(inputs.validation, layer))[:, latent])


def _probe_scores(inputs: Phase3Inputs, layer: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold sae-split scores and full-fit validation scores of the logistic probe of ``layer``."""
    assert inputs.sae is not None
    x_sae, y_sae = inputs.activations(inputs.sae, layer).astype(np.float64), inputs.sae.correct
    n_splits = int(min(5, y_sae.sum(), (~y_sae).sum()))
    cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    full = fit_logistic_probe(x_sae, y_sae, seed)
    oof = cross_val_predict(full, x_sae, y_sae, cv=cv, method="decision_function")  # refits clones per fold
    return oof, full.decision_function(inputs.activations(inputs.validation, layer).astype(np.float64))


def residualise_on_length(x_train: np.ndarray, len_train: np.ndarray, x_eval: np.ndarray, len_eval: np.ndarray
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Remove the linear effect of prompt length from every activation dimension, fitted on the training rows only.

    Why: prompt length alone predicts correctness (longer prompts, harder
    tasks), and a residual-stream probe can read length off the activations.
    One least-squares line per dimension, x_j ~ a_j + b_j * length, fitted on
    the training split; both splits keep only what the line does not explain.
    """
    design = np.column_stack([np.ones(len(len_train)), np.asarray(len_train, dtype=np.float64)])
    coef, *_ = np.linalg.lstsq(design, np.asarray(x_train, dtype=np.float64), rcond=None)  # (2, d)
    eval_design = np.column_stack([np.ones(len(len_eval)), np.asarray(len_eval, dtype=np.float64)])
    return (np.asarray(x_train, dtype=np.float64) - design @ coef,
            np.asarray(x_eval, dtype=np.float64) - eval_design @ coef)


def _residualised_probe_scores(inputs: Phase3Inputs, layer: int, len_sae: np.ndarray, len_val: np.ndarray,
                               seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The logistic probe of ``layer`` refitted on length-residualised vectors: out-of-fold sae, full-fit validation."""
    assert inputs.sae is not None
    x_sae, x_val = residualise_on_length(inputs.activations(inputs.sae, layer), len_sae,
                                         inputs.activations(inputs.validation, layer), len_val)
    y_sae = inputs.sae.correct
    n_splits = int(min(5, y_sae.sum(), (~y_sae).sum()))
    cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    full = fit_logistic_probe(x_sae, y_sae, seed)
    oof = cross_val_predict(full, x_sae, y_sae, cv=cv, method="decision_function")
    return oof, full.decision_function(x_val)


def _add_residualised_probe(inputs: Phase3Inputs, probe_layer: int | None, c_sae: pd.DataFrame, c_val: pd.DataFrame,
                            scores: dict[str, tuple[np.ndarray, np.ndarray]], predictors: dict[str, dict[str, Any]],
                            seed: int) -> str | None:
    """Register the length-residualised probe beside the plain one; the one-line reason when it cannot be built."""
    if probe_layer is None:
        return None
    if "n_prompt_tokens" not in c_sae.columns or c_sae["n_prompt_tokens"].nunique() < 2:
        return "length-residualised probe not fitted: no varying n_prompt_tokens on the sae split"
    scores[RESIDUALISED] = _residualised_probe_scores(inputs, probe_layer, c_sae["n_prompt_tokens"].to_numpy(),
                                                      c_val["n_prompt_tokens"].to_numpy(), seed)
    predictors[RESIDUALISED] = {"name": f"logistic probe L{probe_layer}, prompt length removed"}
    return None


def _geometry(inputs: Phase3Inputs, chosen: LatentEvaluation,
              sae_cache: dict[int, Any], seed: int) -> list[dict[str, Any]]:
    """One cosine table per reported latent (the rank-1 latent of each direction and the chosen best)."""
    refs = [inputs.results.top[d][0] for d in ("correct", "incorrect") if inputs.results.top[d]]
    if chosen.ref is not None and chosen.ref not in refs:
        refs.append(chosen.ref)
    out = []
    fitted: dict[int, Any] = {}
    for ref in refs:
        if ref.layer not in sae_cache:
            sae_cache[ref.layer] = load_sae(inputs.results.sae_source, ref.layer, device="cpu")
        decoder = sae_cache[ref.layer].W_dec[ref.latent].detach().cpu().numpy()
        if ref.layer not in fitted:
            fitted[ref.layer] = fit_layer(inputs, ref.layer, seed)
        probes = fitted[ref.layer]
        scaler, logistic = probes.logistic[0], probes.logistic[-1]
        weight = logistic.coef_[0] / scaler.scale_  # the probe's direction in residual coordinates
        table = baselines.cosine_table({f"SAE decoder {ref.name}": decoder, f"logistic probe L{ref.layer}": weight,
                                        f"diff of means L{ref.layer}": probes.diff_means})
        out.append({"layer": ref.layer, "latent": ref.latent, "direction": ref.direction, "pairs": table})
    return out


def evaluate(inputs: Phase3Inputs, probes: ProbeResults, evaluations: list[LatentEvaluation],
             n_boot: int, seed: int, prompt_time: PromptConfidence | None = None) -> dict[str, Any]:
    """Every reviewer baseline as one JSON-ready dict (``note`` says why it is empty when it is).

    ``prompt_time``: the before-generation confidence baselines
    (``prompt_confidence.compute``), added as predictors beside mean_logprob.
    """
    section: dict[str, Any] = {"rules": RULES, "note": None}
    if inputs.sae is None:
        section["note"] = f"reviewer baselines skipped: {inputs.sae_note}"
        return section
    small = split_too_small(inputs.sae.correct, "sae", MIN_PROBE_CLASS, "fit the reviewer baselines")
    if small:
        section["note"] = small + "; reviewer baselines skipped"
        return section
    sae_split, val = inputs.sae, inputs.validation
    y_sae, y_val = sae_split.correct, val.correct
    c_sae, missing = confound_features(sae_split)
    c_val, _ = confound_features(val)
    constant = [c for c in c_sae.columns if c_sae[c].nunique() < 2]
    for c in constant:
        missing[c] = "constant on the sae split: carries no information"
    used = [c for c in baselines.CONFOUNDS if c in c_sae.columns and c not in constant]
    section["confounds_used"], section["confounds_missing"] = used, missing
    section["confounds"] = {c: baselines.single_feature_auroc(c_sae[c], y_sae, c_val[c], y_val, n_boot, seed).to_dict()
                            for c in used}

    sae_cache: dict[int, Any] = {}
    chosen = best_latent(evaluations)
    assert chosen.ref is not None
    predictors: dict[str, dict[str, Any]] = {}
    scores: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    scores["latent"] = _latent_scores(inputs, chosen.ref.layer, chosen.ref.latent, sae_cache)
    predictors["latent"] = {"name": f"SAE latent {chosen.ref.name} ({chosen.ref.direction}-preferring)"}
    probe_layer = (probes.best.get("logistic") or {}).get("correct")
    if probe_layer is None:
        section["probe_note"] = f"no logistic probe: {probes.note or 'not computed'}"
    else:
        scores["probe"] = _probe_scores(inputs, probe_layer, seed)
        predictors["probe"] = {"name": f"logistic probe L{probe_layer}"}
    section["residualised_probe_note"] = _add_residualised_probe(inputs, probe_layer, c_sae, c_val, scores,
                                                                 predictors, seed)
    conf_sae, conf_note = confidence(sae_split)
    section["confidence_note"] = conf_note
    if conf_sae is not None:
        conf_val, _ = confidence(val, fill=float(np.nanmin(conf_sae)))
        if conf_val is not None:
            scores[CONFIDENCE] = (conf_sae, conf_val)
            predictors[CONFIDENCE] = {"name": "mean log-probability of the model's own tokens"}
    _add_prompt_time(section, scores, predictors, prompt_time)
    for key, (s_sae, s_val) in scores.items():
        predictors[key]["auroc"] = baselines.single_feature_auroc(s_sae, y_sae, s_val, y_val, n_boot, seed).to_dict()
        if used:
            predictors[key]["beyond_confounds"] = baselines.beyond_confounds(
                c_sae[used].to_numpy(), s_sae, y_sae, c_val[used].to_numpy(), s_val, y_val, n_boot, seed).to_dict()
    if CONFIDENCE in scores:  # does the latent (probe) add anything to the model's confidence in its own tokens?
        conf_sae, conf_val = scores[CONFIDENCE]
        for key in ("latent", "probe"):
            if key in scores:
                predictors[key]["beyond_confidence"] = baselines.beyond_confounds(
                    conf_sae[:, None], scores[key][0], y_sae, conf_val[:, None], scores[key][1], y_val, n_boot, seed
                ).to_dict()
    _beyond_prompt_confidence(section, scores, predictors, prompt_time, inputs, n_boot, seed)
    for key, p in predictors.items():  # every predictor says when it is known, in its name too
        p["known"] = KNOWN[key]
        p["name"] = f"{p['name']} [{KNOWN[key]}]"
    section["predictors"] = predictors
    section["verdicts"] = _verdicts(predictors, used)
    section["flags"] = _flags(predictors)
    section["geometry"] = _geometry(inputs, chosen, sae_cache, seed)

    ranked = dict(scores)
    if "n_prompt_tokens" in used:
        ranked["n_prompt_tokens"] = (c_sae["n_prompt_tokens"].to_numpy(), c_val["n_prompt_tokens"].to_numpy())
    curves = {key: baselines.coverage_curve(baselines.oriented_score(s_sae, y_sae, s_val), y_val)
              for key, (s_sae, s_val) in ranked.items()}
    section["coverage"] = {
        "overall_pass_rate": float(np.mean(y_val)), "n_validation": int(len(y_val)), "curves": curves,
        "pass_rate_at_50": {key: next(r["pass_rate"] for r in rows if r["coverage"] == 0.5) for key, rows in curves.items()},
    }
    logger.info("reviewer baselines: %s", "; ".join(section["verdicts"]))
    return section


def _add_prompt_time(section: dict[str, Any], scores: dict[str, tuple[np.ndarray, np.ndarray]],
                     predictors: dict[str, dict[str, Any]], prompt_time: PromptConfidence | None) -> None:
    """The before-generation baselines as predictors (scored like the others), or a note saying why not."""
    if prompt_time is None:
        section["prompt_time_note"] = "not computed (no model pass over the prompts in this run)"
        return
    section["prompt_time"] = prompt_time.info
    for key in prompt_time.scores:
        if "sae" in prompt_time.scores[key]:
            scores[key] = prompt_time.pair(key)
            predictors[key] = {"name": PROMPT_TIME_NAMES[key]}


def _beyond_prompt_confidence(section: dict[str, Any], scores: dict[str, tuple[np.ndarray, np.ndarray]],
                              predictors: dict[str, dict[str, Any]], prompt_time: PromptConfidence | None,
                              inputs: Phase3Inputs, n_boot: int, seed: int) -> None:
    """Does the latent (probe) add anything to the best before-generation confidence (chosen on hyperparams)?"""
    if prompt_time is None or inputs.sae is None:
        return
    chosen = chosen_before_generation(prompt_time, inputs.sae.correct, inputs.hyperparams.correct)
    section["prompt_time_chosen"] = chosen
    if chosen is None:
        return
    base_sae, base_val = scores[chosen]
    for key in ("latent", "probe"):
        if key in scores:
            predictors[key]["beyond_prompt_confidence"] = baselines.beyond_confounds(
                base_sae[:, None], scores[key][0], inputs.sae.correct, base_val[:, None], scores[key][1],
                inputs.validation.correct, n_boot, seed,
            ).to_dict()


def _diff(d: dict[str, Any]) -> str:
    return f"{d['delta']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"


def _gain_words(b: dict[str, Any], reference: str = "confounds") -> str:
    """The comparison in words (``reference``: what the predictor is added to), old results included."""
    ref = f"max({reference}, 0.5)" if "vs_confounds" in b else reference
    text = (f"AUROC {reference} {b['auroc_confounds']:.3f}"
            + (f", predictor alone {b['auroc_predictor']:.3f}" if "auroc_predictor" in b else "")
            + f", combined {b['auroc_with_predictor']:.3f}; combined - {ref} "
              f"{b['delta']:+.3f} [{b['delta_low']:+.3f}, {b['delta_high']:+.3f}]")
    if "vs_predictor" in b:
        text += f"; combined - predictor alone {_diff(b['vs_predictor'])}"
    return text


def _verdicts(predictors: dict[str, dict[str, Any]], used: list[str]) -> list[str]:
    """One line per predictor: does it carry information beyond the confounds (interval beyond the tolerance)?"""
    if not used:
        return ["no confound could be built, so nothing is tested against them"]
    lines = []
    for p in predictors.values():
        b = p["beyond_confounds"]
        verdict = "carries information beyond" if b["adds_information"] else "carries **no** information shown beyond"
        worse = (" Adding the confounds makes it worse than the predictor alone."
                 if (b.get("vs_predictor") or {}).get("loss") else "")
        lines.append(f"The {p['name']} {verdict} the confounds ({', '.join(used)}): {_gain_words(b)}.{worse}")
    return lines


def _flags(predictors: dict[str, dict[str, Any]]) -> list[str]:
    """What the reader must see first: a latent or probe that adds nothing to the confounds or to the confidence."""
    flags = []
    for key in ("latent", "probe", RESIDUALISED):
        p = predictors.get(key)
        if p is None:
            continue
        for what, label, reference in (("beyond_confounds", "the trivial confounds", "confounds"),
                                       ("beyond_confidence", "the model's own confidence (mean log-probability)",
                                        CONFIDENCE)):
            b = p.get(what)
            if b and not b["adds_information"]:
                flags.append(f"The {p['name']} adds no information shown beyond {label} on validation "
                             f"({_gain_words(b, reference)})")
    return flags


def _auc(a: dict[str, float]) -> str:
    return f"{a['auroc']:.3f} [{a['low']:.3f}, {a['high']:.3f}]"


def _auprc(a: dict[str, float]) -> str:
    if "auprc" not in a:
        return "n/a"
    return f"{a['auprc']:.3f} ({a['auprc_baseline_prevalence']:.3f})"


def _beyond_cells(b: dict[str, Any] | None) -> str:
    """Predictor-alone, combined and the three paired comparisons of one predictor, as table cells."""
    if not b:
        return "n/a | n/a | n/a"
    chance = b.get("combined_vs_chance")
    combined = (f"{chance['auroc']:.3f} [{chance['low']:.3f}, {chance['high']:.3f}]" if chance
                else f"{b['auroc_with_predictor']:.3f}")
    gain = f"{b['delta']:+.3f} [{b['delta_low']:+.3f}, {b['delta_high']:+.3f}]"
    vs_pred = _diff(b["vs_predictor"]) if b.get("vs_predictor") else "n/a"
    return f"{combined} | {gain} | {vs_pred}"


def _coverage_lines(cov: dict[str, Any]) -> list[str]:
    """The coverage table: expected pass rate (ties averaged) with its Clopper-Pearson interval at every point."""
    keys = list(cov["curves"])
    lines = ["", "#### Coverage-accuracy: pass rate among the top x% trusted validation tasks", "",
             f"Overall pass rate {cov['overall_pass_rate']:.3f} ({cov['n_validation']} tasks). Tasks tied at the cut "
             "count in expectation over the orderings of the tie; brackets are Clopper-Pearson 95% intervals. "
             "At 50% coverage: " + "; ".join(f"{k} {cov['pass_rate_at_50'][k]:.3f}" for k in keys) + ".", "",
             "| coverage | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for i, row in enumerate(cov["curves"][keys[0]]):
        cells = []
        for k in keys:
            r = cov["curves"][k][i]
            ci = f" [{r['ci_lo']:.3f}, {r['ci_hi']:.3f}]" if "ci_lo" in r else ""
            cells.append(f"{r['pass_rate']:.3f}{ci}")
        lines.append(f"| {row['coverage']:.0%} ({row['n_trusted']}) | " + " | ".join(cells) + " |")
    return lines


def summary_lines(section: dict[str, Any] | None) -> list[str]:
    """The summary.md section, rendered from the JSON section alone."""
    lines = ["### Baselines a reviewer asks for (validation split; fitted on sae)", ""]
    if not section:
        return lines + ["Not computed.", ""]
    if section.get("note"):
        return lines + [f"{section['note'].capitalize()}.", ""]
    lines += ["Rules: " + "; ".join(f"{k}: {v}" for k, v in section["rules"].items()) + ".", "",
              "#### Confounds and confidence against the latent and the probe", "",
              "| predictor | AUROC [95% CI] (0.5) | AUPRC (prevalence) | confounds + predictor: AUROC [95% CI] (0.5) | "
              "combined - max(confounds, 0.5) [95% CI] | combined - predictor alone [95% CI] |",
              "|---|---|---|---|---|---|"]
    for name, auc in section["confounds"].items():
        lines.append(f"| confound: {name} [before generation] | {_auc(auc)} | {_auprc(auc)} | | | |")
    for p in section["predictors"].values():
        lines.append(f"| {p['name']} | {_auc(p['auroc'])} | {_auprc(p['auroc'])} | {_beyond_cells(p.get('beyond_confounds'))} |")
    lines.append("")
    for p in section["predictors"].values():
        c = p.get("beyond_confidence")
        if c:
            lines.append(f"The {p['name']} beside the model's confidence (mean_logprob [after generation] in place "
                         f"of the confounds): {_gain_words(c, CONFIDENCE)} "
                         f"({'adds information' if c['adds_information'] else '**adds no information shown**'}).")
    for name, why in section.get("confounds_missing", {}).items():
        lines.append(f"Confound {name} not used: {why}.")
    for key in ("confidence_note", "probe_note", "residualised_probe_note"):
        if section.get(key):
            lines.append(f"{section[key][0].upper()}{section[key][1:]}.")
    lines += [""] + [f"**{v}**" for v in section["verdicts"]] + [""]
    lines += ["#### Direction geometry (cosine similarity)", "", "| layer | latent | a | b | cosine |", "|---|---|---|---|---|"]
    for g in section["geometry"]:
        for pair in g["pairs"]:
            lines.append(f"| {g['layer']} | {g['latent']} ({g['direction']}) | {pair['a']} | {pair['b']} | "
                         f"{pair['cosine']:+.3f} |")
    return lines + _coverage_lines(section["coverage"]) + [""]
