"""The one-page ``summary.md`` and ``flipped_examples.md``, written from the validation JSON.

Why from the JSON: the page a researcher pastes into a thesis must say
exactly what the machine-readable results say, so both come from one dict.
Every number stands beside its interval and its baseline (rule 7), the
Phase 2 null result is stated plainly, and the alpha = 0 check is reported
whatever its outcome.
"""

from __future__ import annotations

import math
from typing import Any

from common.neuronpedia import latent_markdown
from phase3_validation.statistical import BASELINE_NOTES


def _f(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def _p(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.3g}"


def _ci(lo: Any, hi: Any) -> str:
    return f"[{_f(lo)}, {_f(hi)}]"


def _rate(k: int, n: int, rate: float, lo: float, hi: float) -> str:
    return f"{k}/{n} = {_f(rate)} {_ci(lo, hi)}"


def _null_section(doc: dict[str, Any]) -> list[str]:
    null = doc["phase2_null"]
    lines = ["## 1. Did Phase 2's latents beat the permutation null?", ""]
    n_perm = null.get("n_permutations", "?")
    lines.append(f"Phase 2 shuffled the sae-split labels {n_perm} times (seed {null.get('seed', '?')}) and kept the "
                 "maximum separation score over all layers and latents each time; p_family is the share of shuffles "
                 "that beat a latent.")
    lines += ["", "| direction | rank-1 latent | separation | p_family | beats the null |", "|---|---|---|---|---|"]
    for direction, top in doc["phase2_top"].items():
        beats = null.get("beats_null", {}).get(direction)
        verdict = "yes" if beats else ("**no**" if beats is not None else "not recorded")
        if top:
            lines.append(f"| {direction} | L{top['layer']}/{top['latent']} | {_f(top['separation_score'])} | "
                         f"{_p(top.get('p_family'))} | {verdict} |")
        else:
            lines.append(f"| {direction} | none | | | {verdict} |")
    lines.append("")
    if null.get("verdict"):
        lines += [f"Phase 2's verdict: {null['verdict']}.", ""]
    for direction in ("correct", "incorrect"):
        if null.get("beats_null", {}).get(direction) is False:
            lines.append(f"**No {direction}-preferring latent beat the shuffled-label null**: its best separation "
                         "score is within what chance produces, so the numbers below for it describe a latent "
                         "that may have been chosen by chance.")
    return lines + [""]


def _latent(doc: dict[str, Any], lat: dict[str, Any]) -> str:
    """The latent, linked to its Neuronpedia dashboard when its SAE is a public one (common/neuronpedia.py)."""
    desc = doc["configuration"].get("sae_ids", {}).get(str(lat["layer"]), {})
    return latent_markdown(desc, lat["layer"], lat["latent"])


def _stat_section(doc: dict[str, Any]) -> list[str]:
    stat = doc["statistical"]
    lines = ["## 2. Statistical validation (validation split, temperature 0)", "",
             "Threshold: best F1 on the hyperparams split, applied unchanged to validation (rule 6). "
             "Each metric is followed by its baseline in parentheses.", "",
             "| dir | rank | latent | AUROC [95% CI] (0.5) | F1 (always-positive) | precision (base rate) | "
             "recall (random) | accuracy (majority) | threshold | n (positives) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for lat in stat["latents"]:
        row = next(r for r in lat["rows"] if r["split"] == "validation" and r["temperature"] == 0.0)
        lines.append(
            f"| {lat['direction']} | {lat['rank']} | {_latent(doc, lat)} | "
            f"{_f(row['auroc'])} {_ci(row['auroc_ci_lo'], row['auroc_ci_hi'])} | "
            f"{_f(row['f1'])} ({_f(row['f1_baseline_always_positive'])}) | "
            f"{_f(row['precision'])} ({_f(row['precision_baseline_base_rate'])}) | "
            f"{_f(row['recall'])} ({_f(row['recall_baseline_random'])}) | "
            f"{_f(row['accuracy'])} ({_f(row['accuracy_baseline_majority'])}) | "
            f"{row['threshold']:.4g} | {row['n']} ({row['n_positive']}) |")
    silent = [f"L{lat['layer']}/{lat['latent']}" for lat in stat["latents"]
              if next(r for r in lat["rows"] if r["split"] == "validation" and r["temperature"] == 0.0)["firing_rate"] == 0]
    if silent:
        lines += ["", f"Never fires on the validation split (activation 0 on every task, so AUROC 0.5 by construction): "
                      f"{', '.join(silent)}."]
    lines.append("")
    lines.append("Baselines: " + "; ".join(f"{k}: {v}" for k, v in BASELINE_NOTES.items()) + ".")
    lines.append("")
    if stat.get("temperature_note"):
        lines += [f"Temperatures > 0: {stat['temperature_note']}", ""]
    elif stat.get("temperatures"):
        lines += ["### By Phase 1.2 temperature (one row per sample; AUROC CI resamples tasks)", "",
                  "| dir | rank | latent | T | AUROC [95% CI] | F1 (always-positive) | n samples (positives) |",
                  "|---|---|---|---|---|---|---|"]
        for lat in stat["latents"]:
            for row in lat["rows"]:
                if row["split"] != "validation" or row["temperature"] == 0.0:
                    continue
                note = f" {row['note']}" if row.get("note") else ""
                lines.append(
                    f"| {lat['direction']} | {lat['rank']} | L{lat['layer']}/{lat['latent']} | {row['temperature']:g} | "
                    f"{_f(row['auroc'])} {_ci(row['auroc_ci_lo'], row['auroc_ci_hi'])}{note} | "
                    f"{_f(row['f1'])} ({_f(row['f1_baseline_always_positive'])}) | {row['n']} ({row['n_positive']}) |")
        lines.append("")
    return lines


def _steering_section(doc: dict[str, Any]) -> list[str]:
    steering = doc["steering"]
    cfg = doc["configuration"]
    lines = ["## 3. Steering (causal validation)", "",
             f"Vector: unit SAE decoder direction x alpha x mean residual norm at the latent's layer "
             f"(hyperparams split), added at `{cfg['hook_point']}` with position policy `{cfg['steer_positions']}` "
             f"({'prompt tokens only' if cfg['steer_positions'] == 'prompt' else 'prompt and every generated token'}); "
             f"greedy decoding, {cfg['max_new_tokens']} new tokens at most. Alpha chosen on hyperparams: "
             f"{steering['selection_rule']}. Rates are against the Phase 1.0 greedy labels; intervals are exact "
             "(Clopper-Pearson) 95%.", ""]
    for direction, info in steering["directions"].items():
        t = info["target"]
        v = info["validation"]
        test = info["control_test"]
        pooled = test["pooled"]
        expect = "corrections" if direction == "correct" else "corruptions"
        lines += [f"### {direction}-preferring latent L{t['layer']}/{t['latent']} (rank 1; expected effect: more {expect})", "",
                  f"Hook `{info['hook_name']}`, mean residual norm {info['residual_norm']:.4g}, "
                  f"chosen alpha **{info['chosen_alpha']:g}** (grid on hyperparams below).", "",
                  "| alpha | correction [95% CI] | corruption [95% CI] | predicted effect | programs changed |",
                  "|---|---|---|---|---|"]
        for g in sorted(info["grid_hyperparams"], key=lambda r: r["alpha"]):
            mark = " (chosen)" if g["alpha"] == info["chosen_alpha"] else ""
            lines.append(
                f"| {g['alpha']:g}{mark} | {_rate(g['n_corrected'], g['n_initially_incorrect'], g['correction_rate'], g['correction_ci_lo'], g['correction_ci_hi'])} | "
                f"{_rate(g['n_corrupted'], g['n_initially_correct'], g['corruption_rate'], g['corruption_ci_lo'], g['corruption_ci_hi'])} | "
                f"{g['predicted_effect']:+.3f} | {g['n_programs_changed']}/{g['n_tasks']} |")
        lines += ["", f"Validation split, alpha {info['chosen_alpha']:g}:", "",
                  "| | steered latent | pooled controls (baseline) | Fisher exact p |", "|---|---|---|---|",
                  f"| correction rate | {_rate(v['n_corrected'], v['n_initially_incorrect'], v['correction_rate'], v['correction_ci_lo'], v['correction_ci_hi'])} | "
                  f"{_rate(pooled['n_corrected'], pooled['n_initially_incorrect'], pooled['correction_rate'], pooled['correction_ci_lo'], pooled['correction_ci_hi'])} | {_p(test['fisher_p_correction'])} |",
                  f"| corruption rate | {_rate(v['n_corrupted'], v['n_initially_correct'], v['corruption_rate'], v['corruption_ci_lo'], v['corruption_ci_hi'])} | "
                  f"{_rate(pooled['n_corrupted'], pooled['n_initially_correct'], pooled['corruption_rate'], pooled['corruption_ci_lo'], pooled['corruption_ci_hi'])} | {_p(test['fisher_p_corruption'])} |",
                  f"| preservation rate | {_f(v['preservation_rate'])} {_ci(v['preservation_ci_lo'], v['preservation_ci_hi'])} | "
                  f"{_f(1 - pooled['corruption_rate'])} {_ci(1 - pooled['corruption_ci_hi'], 1 - pooled['corruption_ci_lo'])} | |",
                  "",
                  f"Exact McNemar test against the baseline (discordant pairs: {v['n_corrected']} corrected, "
                  f"{v['n_corrupted']} corrupted): p = {_p(v['mcnemar_p'])}. Controls: {test['n_controls']} random "
                  f"latents of layer {t['layer']} with |separation| <= {cfg['control_max_separation']} "
                  f"({', '.join(str(c) for c in info['control_selection']['latents'])}), same alpha and norm.", ""]
    return lines


def _alpha0_section(doc: dict[str, Any]) -> list[str]:
    check = doc["steering"]["alpha0_check"]
    lines = ["## 4. alpha = 0 check (same code path, zero vector)", ""]
    if check["n_programs_changed"] == 0 and check["n_label_flips"] == 0:
        lines.append(f"Passed: all {check['n_tasks']} validation programs and labels equal the Phase 1.0 baseline exactly.")
    else:
        lines.append(f"**FAILED (flagged as a bug)**: {check['n_programs_changed']} of {check['n_tasks']} programs differ "
                     f"from Phase 1.0 and {check['n_label_flips']} labels flipped "
                     f"({check['n_label_flips_same_program']} with an identical program, i.e. from execution, e.g. "
                     f"timeouts). Tasks: {', '.join(map(str, check['changed_task_ids'][:20]))}. Steering rates include "
                     "this noise; see the notes in the configuration section.")
        for note in check.get("notes", []):
            lines.append(f"Note: {note}")
    return lines + [""]


def _sae(desc: dict[str, str]) -> str:
    if desc.get("source") == "local":
        return f"local `{desc['path']}`"
    return f"`{desc.get('release')}` / `{desc.get('sae_id')}`"


def _config_section(doc: dict[str, Any]) -> list[str]:
    cfg = doc["configuration"]
    sizes = cfg["split_sizes"]
    lines = ["## 5. Configuration", "",
             f"- model: `{cfg['model']}` ({cfg['device']}, {cfg['dtype']}); Phase 1.0 model: `{cfg['phase1_model']}`",
             "- SAEs: " + "; ".join(f"layer {layer}: {_sae(desc)}" for layer, desc in cfg["sae_ids"].items()),
             "- splits: " + "; ".join(f"{name} {s['n']} tasks ({s['n_correct']} correct, {s['n_incorrect']} incorrect)"
                                      for name, s in sizes.items()),
             f"- seeds: pipeline seed {cfg['seed']} (bootstrap, control choice); Phase 2 null seed "
             f"{doc['phase2_null'].get('seed', '?')}",
             f"- bootstrap resamples: {cfg['bootstrap']}; latents validated per direction: {cfg['top_latents_validated']}",
             f"- coefficient grid: {', '.join(f'{a:g}' for a in cfg['coefficients'])}",
             f"- hook point: `{cfg['hook_point']}`; position policy: `{cfg['steer_positions']}`",
             f"- controls: {cfg['n_random_controls']} per steered latent, |separation| <= {cfg['control_max_separation']}",
             f"- generation: greedy, max_new_tokens {cfg['max_new_tokens']} (Phase 1.0: {cfg['phase1_max_new_tokens']}), "
             f"batch size {cfg['batch_size']} (Phase 1.0: {cfg['phase1_batch_size']}), prompt template "
             f"`{cfg['prompt_template_version']}`",
             f"- git commit: `{cfg['git_commit']}`",
             f"- Phase 2 results: `{doc['inputs']['phase2_results']}`; Phase 1.0 dataset: `{doc['inputs']['phase1_dataset']}`",
             ""]
    return lines


def render_summary(doc: dict[str, Any]) -> str:
    """The one-page markdown summary of a Phase 3 run."""
    lines = [f"# PVA-SAE Phase 3: validation summary ({doc['timestamp']})", ""]
    if doc["flags"]:
        lines += ["**Read first:**", ""] + [f"- {flag}" for flag in doc["flags"]] + [""]
    lines += _null_section(doc) + _stat_section(doc) + _steering_section(doc) + _alpha0_section(doc) + _config_section(doc)
    outputs = doc.get("outputs", {})
    if outputs:
        lines += ["## 6. Files", ""] + [f"- {name}: `{path}`" for name, path in outputs.items()] + [""]
    return "\n".join(lines)


def render_flipped_examples(doc: dict[str, Any], flipped: dict[str, dict[str, list[dict[str, Any]]]]) -> str:
    """A few validation programs that flipped each way under each steered latent, before and after."""
    lines = [f"# Flipped programs under steering ({doc['timestamp']})", "",
             "Before = Phase 1.0 greedy program; after = the same prompt with the steering vector at the chosen alpha.", ""]
    for direction, kinds in flipped.items():
        info = doc["steering"]["directions"][direction]
        t = info["target"]
        lines += [f"## {direction}-preferring latent L{t['layer']}/{t['latent']}, alpha {info['chosen_alpha']:g}", ""]
        for kind, title in (("corrected", "incorrect -> correct"), ("corrupted", "correct -> incorrect")):
            lines += [f"### {title}", ""]
            if not kinds.get(kind):
                lines += ["(none)", ""]
            for ex in kinds.get(kind, []):
                lines += [f"#### task {ex['task_id']}: {ex['text']}", "",
                          f"Before ({ex['before_outcome']}):", "", "```python", ex["before_code"].rstrip() or "# (empty program)", "```", "",
                          f"After ({ex['after_outcome']}):", "", "```python", ex["after_code"].rstrip() or "# (empty program)", "```", ""]
    return "\n".join(lines)
