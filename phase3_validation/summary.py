"""The one-page ``summary.md`` and ``flipped_examples.md``, written from the result document.

Why from the document: the page a researcher pastes into a thesis must say
exactly what the machine-readable results say, so both come from one
:class:`~common.datadir.phase3_result.Phase3Result` (the summary is rendered from the
document as written, NaN as null).
Every number stands beside its interval and its baseline (rule 7), the
Phase 2 null result is stated plainly, and the alpha = 0 check is reported
whatever its outcome.
"""

from __future__ import annotations

import math
from typing import Any

from common.datadir import (
    Alpha0Check,
    DirectionSteeringResult,
    Phase2Null,
    Phase3Configuration,
    Phase3Result,
    ProbeEntry,
    StatisticalSection,
    SteeringSection,
    TopLatent,
    TransferSection,
)
from common.saes.neuronpedia import latent_markdown
from phase3_validation.confounds import summary_lines as reviewer_lines
from phase3_validation.prompt_confidence import summary_lines as availability_lines
from phase3_validation.prompting import summary_lines as prompting_lines
from phase3_validation.statistical import BASELINE_NOTES, NO_THRESHOLD, NO_THRESHOLD_ON_SET


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


def _mc_cell(mc: dict[str, Any] | None) -> str:
    """The family p with its Monte Carlo standard error, and the verdict it supports."""
    if not mc:
        return "n/a | not recorded"
    p = f"{_p(mc['p'])} +- {mc['mc_se']:.2g}"
    if mc["decision"] == "below":
        return f"{p} | yes"
    if mc["decision"] == "above":
        return f"{p} | **no**"
    more = mc.get("more_shuffles_needed")
    need = f"about {more} more shuffles needed" if more is not None else "p equals 0.05"
    return f"{p} | undecided at this number of shuffles ({need})"


def _null_section(null: Phase2Null, phase2_top: dict[str, TopLatent | None]) -> list[str]:
    lines = ["## 1. Did Phase 2's latents beat the permutation null?", ""]
    # Phase 2's own section, as Phase 2 wrote it: a field it did not write reads "?".
    n_perm = null.document.get("n_permutations", "?")
    n_family = null.document.get("n_latents_in_family", "?")
    floor = f"1/{1 + n_perm} = {1 / (1 + n_perm):.3g}" if isinstance(n_perm, int) else "1/(1 + shuffles)"
    lines.append(f"Phase 2 shuffled the sae-split labels {n_perm} times (seed {null.document.get('seed', '?')}) and kept, each "
                 f"time, the largest separation score in either direction out of {n_family} unflagged latents (one "
                 "family for both directions); p_family = (1 + number of shuffles whose maximum is at or above the "
                 f"latent's score) / (1 + number of shuffles), so the smallest possible p_family is {floor}. "
                 "Beside it, its Monte Carlo standard error sqrt(p (1 - p) / shuffles); within two of them from 0.05 "
                 "the verdict is undecided at this number of shuffles.")
    lines += ["", "Split: sae (where Phase 2 ranked the latents).", "",
              "| direction | rank-1 latent | separation | p_family +- MC SE | beats the null |", "|---|---|---|---|---|"]
    mcs = null.mc_verdicts
    for direction, top in phase2_top.items():
        beats = null.beats_null.get(direction)
        if mcs.get(direction):
            cells = _mc_cell(mcs[direction])
        else:
            cells = f"{_p(top.p_family) if top else ''} | " + (
                "yes" if beats else ("**no**" if beats is not None else "not recorded"))
        if top:
            lines.append(f"| {direction} | L{top.layer}/{top.latent} | {_f(top.separation_score)} | {cells} |")
        else:
            lines.append(f"| {direction} | none | | {cells} |")
    lines.append("")
    if null.verdict:
        lines += [f"Phase 2's verdict: {null.verdict}.", ""]
    for direction in ("correct", "incorrect"):
        mc = mcs.get(direction) or {}
        if mc.get("decision") == "undecided":
            lines.append(f"**The {direction}-preferring latent is undecided at {n_perm} shuffles**: rerun Phase 2 with "
                         f"more (`--permutations {mc.get('shuffles_needed') or n_perm}`) before reading its numbers "
                         "as more than exploratory.")
        elif null.beats_null.get(direction) is False:
            lines.append(f"**No {direction}-preferring latent beat the shuffled-label null** out of {n_family} unflagged "
                         "latents: its best separation score is within what chance produces, so the numbers below for "
                         "it describe a latent that may have been chosen by chance.")
    return lines + [""]


def _latent(sae_ids: dict[str, dict[str, str]], layer: int, latent: int) -> str:
    """The latent, linked to its Neuronpedia dashboard when its SAE is a public one (common/saes/neuronpedia.py)."""
    return latent_markdown(sae_ids.get(str(layer), {}), layer, latent)


def _no_threshold_text(row: dict[str, Any]) -> str:
    """Why a row has no threshold metrics: none was chosen, or the chosen one puts this set in one class."""
    return NO_THRESHOLD_ON_SET if row.get("threshold_status") == "one class on this set" else NO_THRESHOLD


def _auprc_cell(row: dict[str, Any]) -> str:
    """AUPRC beside its baseline, the prevalence of the positive class (absent in older results: n/a)."""
    return f"{_f(row.get('auprc'))} ({_f(row.get('auprc_baseline_prevalence', row.get('base_rate')))})"


def _metric_cells(row: dict[str, Any]) -> str:
    """AUROC and AUPRC, then the threshold metrics beside their baselines, or why there are none."""
    auroc = f"{_f(row['auroc'])} {_ci(row['auroc_ci_lo'], row['auroc_ci_hi'])} | {_auprc_cell(row)}"
    if not row.get("informative_threshold", True):
        return f"{auroc} | {_no_threshold_text(row)} | | | | n/a"
    return (f"{auroc} | {_f(row['f1'])} ({_f(row['f1_baseline_always_positive'])}) | "
            f"{_f(row['precision'])} ({_f(row['precision_baseline_base_rate'])}) | "
            f"{_f(row['recall'])} ({_f(row['recall_baseline_random'])}) | "
            f"{_f(row['accuracy'])} ({_f(row['accuracy_baseline_majority'])}) | {row['threshold']:.4g}")


def _val0(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return next(r for r in rows if r["split"] == "validation" and r["temperature"] == 0.0)


def _probe_best(stat: StatisticalSection) -> list[tuple[str, ProbeEntry]]:
    """(label, probe entry) of the best layer of each probe kind and positive class."""
    probes = stat.probes
    out = []
    for kind, by_class in (probes.best_layer or {}).items():
        for positive, layer in by_class.items():
            entry = next(p for p in probes.probes if p.probe == kind and p.positive_class == positive
                         and p.layer == layer)
            out.append((f"{kind} probe, best layer L{layer}", entry))
    return out


def _stat_section(doc: Phase3Result) -> list[str]:
    stat = doc.statistical
    sae_ids = doc.configuration.sae_ids
    lines = ["## 2. Statistical validation (validation split, temperature 0)", "",
             "Threshold: best F1 on the hyperparams split among thresholds that split its tasks, applied unchanged "
             f"to validation (rule 6); where no threshold splits them the row says \"{NO_THRESHOLD}\", and where the "
             f"threshold puts every validation task in one class it says \"{NO_THRESHOLD_ON_SET}\"; neither has "
             "threshold metrics. Each metric is followed by its baseline in parentheses. Probe rows: the same "
             "metrics for probes on the raw residual stream (fitted on the sae split, threshold on hyperparams, best "
             "layer chosen by hyperparams AUROC), the baseline every SAE latent should be read against.", "",
             "| positive class | rank | score | AUROC [95% CI] (0.5) | AUPRC (prevalence) | F1 (flag everything) | "
             "precision (base rate) | recall (random) | accuracy (majority) | threshold | n (positives) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for lat in stat.latents:
        row = _val0(lat.rows)
        lines.append(f"| {lat.direction} | {lat.rank} | {_latent(sae_ids, lat.layer, lat.latent)} | "
                     f"{_metric_cells(row)} | {row['n']} ({row['n_positive']}) |")
    best = _probe_best(stat)
    for direction in ("correct", "incorrect"):
        for label, entry in best:
            if entry.positive_class == direction:
                row = _val0(entry.rows)
                lines.append(f"| {direction} | probe | {label} | {_metric_cells(row)} | {row['n']} ({row['n_positive']}) |")
    silent = [f"L{lat.layer}/{lat.latent}" for lat in stat.latents if _val0(lat.rows)["firing_rate"] == 0]
    if silent:
        lines += ["", f"Never fires on the validation split (activation 0 on every task, so AUROC 0.5 by construction): "
                      f"{', '.join(silent)}."]
    no_threshold = [f"L{lat.layer}/{lat.latent}" for lat in stat.latents if lat.threshold is None]
    if no_threshold:
        lines += ["", f"{NO_THRESHOLD.capitalize()} on the hyperparams split (every threshold predicts one class for "
                      f"all tasks, or too few tasks): {', '.join(no_threshold)}; not a result."]
    lines.append("")
    lines.append("Baselines: " + "; ".join(f"{k}: {v}" for k, v in BASELINE_NOTES.items()) + ".")
    lines.append("")
    lines += _probe_layers(stat)
    lines += reviewer_lines(stat.reviewer_baselines)
    lines += availability_lines(stat.reviewer_baselines)
    if stat.temperature_note:
        lines += [f"Temperatures > 0: {stat.temperature_note}", ""]
    elif stat.temperatures:
        lines += ["### By Phase 1.2 temperature (validation split; one row per sample; AUROC CI resamples tasks)", "",
                  "| positive class | score | T | AUROC [95% CI] | AUPRC (prevalence) | F1 (flag everything) | "
                  "n samples (positives) |", "|---|---|---|---|---|---|---|"]
        scored = [(lat.direction, f"#{lat.rank} SAE latent L{lat.layer}/{lat.latent}", lat.rows)
                  for lat in stat.latents]
        scored += [(entry.positive_class, label, entry.rows) for label, entry in best]
        for positive, label, rows in scored:
            for row in rows:
                if row["split"] != "validation" or row["temperature"] == 0.0:
                    continue
                note = f" {row['note']}" if row.get("note") else ""
                f1 = (f"{_f(row['f1'])} ({_f(row['f1_baseline_always_positive'])})" if row.get("informative_threshold", True)
                      else _no_threshold_text(row))
                lines.append(f"| {positive} | {label} | {row['temperature']:g} | "
                             f"{_f(row['auroc'])} {_ci(row['auroc_ci_lo'], row['auroc_ci_hi'])}{note} | "
                             f"{_auprc_cell(row)} | {f1} | {row['n']} ({row['n_positive']}) |")
        lines.append("")
    return lines


def _probe_layers(stat: StatisticalSection) -> list[str]:
    probes = stat.probes
    if probes.note or not probes.probes:
        return [f"Probe baselines: {probes.note or 'not computed'}.", ""]
    lines = ["### Probe baselines by layer (positive class correct; AUROC is symmetric in the class)", "",
             "Fitted on the sae split; hyperparams AUROC chooses the best layer; validation AUROC is the result. "
             + "; ".join(f"{k}: {v}" for k, v in probes.rules.items()) + ".", "",
             "| layer | logistic: hyperparams AUROC | logistic: validation AUROC [95% CI] | C (CV) | "
             "diff of means: hyperparams AUROC | diff of means: validation AUROC [95% CI] |", "|---|---|---|---|---|---|"]
    by_layer: dict[int, dict[str, ProbeEntry]] = {}
    for entry in probes.probes:
        if entry.positive_class == "correct":
            by_layer.setdefault(entry.layer, {})[entry.probe] = entry
    for layer in sorted(by_layer):
        cells = []
        for kind in ("logistic", "diff_means"):
            found = by_layer[layer].get(kind)
            if found is None:
                cells += ["n/a", "n/a"]
                continue
            hp = next(r for r in found.rows if r["split"] == "hyperparams")
            val = _val0(found.rows)
            cells += [_f(hp["auroc"]), f"{_f(val['auroc'])} {_ci(val['auroc_ci_lo'], val['auroc_ci_hi'])}"]
        c = probes.chosen_c.get(str(layer))
        lines.append(f"| {layer} | {cells[0]} | {cells[1]} | {_p(c)} | {cells[2]} | {cells[3]} |")
    return lines + [""]


def _rate_cell(r: dict[str, Any], kind: str, prefix: str = "") -> str:
    if kind == "correction":
        k, n = r[f"{prefix}n_corrected"], r[f"{prefix}n_initially_incorrect"]
    else:
        k, n = r[f"{prefix}n_corrupted"], r[f"{prefix}n_initially_correct"]
    rate = r[f"{prefix}{kind}_rate"]
    if prefix:
        return f"{k}/{n} = {_f(rate)}"
    return _rate(k, n, rate, r[f"{kind}_ci_lo"], r[f"{kind}_ci_hi"])


def _grid_table(grid: list[dict[str, Any]], chosen: float | None) -> list[str]:
    lines = ["| alpha | correction [95% CI] | corruption [95% CI] | predicted effect | mean control effect | "
             "excess over controls | controls beaten | p vs controls (permutation) | degenerate outputs | "
             "programs changed vs alpha 0 |", "|---|---|---|---|---|---|---|---|---|---|"]
    for g in grid:
        mark = " (chosen)" if chosen is not None and g["alpha"] == chosen else ""
        lines.append(f"| {g['alpha']:g}{mark} | {_rate_cell(g, 'correction')} | {_rate_cell(g, 'corruption')} | "
                     f"{g['predicted_effect']:+.3f} | {g['mean_control_effect']:+.3f} | {g['excess_effect']:+.3f} | "
                     f"{g['n_controls_beaten']}/{g['n_controls']} | {_p_vs_controls(g)} | {_degenerate_cell(g)} | "
                     f"{g['n_programs_changed']}/{g['n_tasks']} |")
    return lines


def _validation_table(name: str, v: dict[str, Any], test: dict[str, Any], controls: list[int],
                      where: str = "validation split") -> list[str]:
    lines = [f"| run ({where}) | correction [95% CI] | corruption [95% CI] | predicted effect | degenerate outputs | "
             "corruption without degenerate outputs | tasks moved more by target / by control, paired sign test p |",
             "|---|---|---|---|---|---|---|",
             f"| {name} | {_rate_cell(v, 'correction')} | {_rate_cell(v, 'corruption')} | {v['predicted_effect']:+.3f} | "
             f"{_degenerate_cell(v)} | {_nondegenerate_cell(v)} | |"]
    for latent, c in zip(controls, test["per_control"]):
        lines.append(f"| control latent {latent} | {c['n_corrected']}/{c['n_initially_incorrect']} = "
                     f"{_f(c['correction_rate'])} | {c['n_corrupted']}/{c['n_initially_correct']} = "
                     f"{_f(c['corruption_rate'])} | {c['predicted_effect']:+.3f} | {_degenerate_cell(c)} | "
                     f"{_nondegenerate_cell(c)} | {c['tasks_target_ahead']} / {c['tasks_control_ahead']}, "
                     f"p = {_p(c['paired_p'])} |")
    lines += ["", f"{name} beats **{test['n_beaten']} of {test['n_controls']}** controls on the predicted effect "
                  f"(excess over their mean {test['excess_effect']:+.3f}). {_control_test_sentence(test)} "
                  f"Exact McNemar test against the alpha = 0 rerun ({v['n_corrected']} corrected, "
                  f"{v['n_corrupted']} corrupted): p = {_p(v['mcnemar_p'])}. Beside it, against Phase 1.0's labels "
                  f"(other batches): correction {_rate_cell(v, 'correction', 'phase1_')}, corruption "
                  f"{_rate_cell(v, 'corruption', 'phase1_')}, McNemar p = {_p(v['phase1_mcnemar_p'])}.", ""]
    return lines


# --------------------------------------------------------------------------- steering tests (controls, degenerate)


def _p_vs_controls(row: dict[str, Any]) -> str:
    """The permutation p against the controls, with its Monte Carlo error when it has one."""
    se = row.get("p_vs_controls_mc_se")
    extra = f" (MC s.e. {se:.2g})" if se else ""
    return f"{_p(row.get('p_vs_controls'))}{extra}"


def _degenerate_cell(row: dict[str, Any]) -> str:
    if row.get("n_degenerate") is None:
        return "n/a"
    return f"{row['n_degenerate']}/{row.get('n_tasks', row.get('n_initially_correct', 0) + row.get('n_initially_incorrect', 0))}"


def _nondegenerate_cell(row: dict[str, Any]) -> str:
    if row.get("n_initially_correct_nondegenerate") is None:
        return "n/a"
    return (f"{row['n_corrupted_nondegenerate']}/{row['n_initially_correct_nondegenerate']} = "
            f"{_f(row['corruption_rate_nondegenerate'])}")


def _control_test_sentence(test: dict[str, Any]) -> str:
    """The one test behind "beats its controls": the within-task permutation test, and how p was computed."""
    perm = test.get("permutation_test") or {}
    how = ("exact" if perm.get("method") == "exact" else
           f"Monte Carlo, {perm.get('n_resamples')} relabellings, s.e. {_p(perm.get('mc_se'))}")
    return (f"Within-task permutation test against all {test['n_controls']} controls (null: on every task the target "
            "and its controls are exchangeable; statistic: target's summed effect minus the mean control's, "
            f"{_f(perm.get('statistic'), 2)}, over {perm.get('n_tasks_runs_differ', '?')} tasks where the runs differ): "
            f"one-sided p = **{_p(test['p_vs_controls'])}** ({how}).")


def _norm_source(info: DirectionSteeringResult) -> str:
    saved = info.saved_layer_norm
    beside = (f"saved layer {info.scale_layer}'s activations give {saved:.4g}" if saved is not None
              else "no saved activations at this site")
    return f"measured by a forward pass over the hyperparams prompts at the hook point; {beside}"


def _steering_rules_lines(steering: SteeringSection) -> list[str]:
    """How the controls are matched and tested, and what counts as a degenerate output."""
    lines = []
    if steering.scale_rule:
        lines.append(f"Norm matching: {steering.scale_rule}.")
    if steering.control_test_rule:
        lines.append(f"\"Beats its controls\": {steering.control_test_rule}.")
    if steering.degenerate_rule:
        lines.append(f"Degenerate output: {steering.degenerate_rule}; corruption is shown with and without them.")
    return lines + [""] if lines else []


def _unsteered_degenerate_lines(steering: SteeringSection) -> list[str]:
    """Degenerate outputs of the runs without steering, the floor for every steered run's count."""
    runs = steering.unsteered_degenerate or {}
    if not runs:
        return []
    cells = [f"{name} {r['n_degenerate']} ({_f(r['degenerate_rate'])})" for name, r in runs.items()]
    return [f"Degenerate outputs without steering (count, share of tasks): {'; '.join(cells)}.", ""]


def _steering_section(doc: Phase3Result) -> list[str]:
    steering = doc.steering
    cfg = doc.configuration
    lines = ["## 3. Steering (causal validation)", "",
             f"Vector: unit direction x alpha x mean residual norm at the hook point (hyperparams split), added at "
             f"`{cfg.hook_point}` with position policy `{cfg.steer_positions}` "
             f"({'prompt tokens only' if cfg.steer_positions == 'prompt' else 'prompt and every generated token'}); "
             f"greedy decoding, {cfg.max_new_tokens} new tokens at most. Every rate is against the alpha = 0 "
             "rerun of the same split (same batches as the steered runs; section 4 shows how it differs from Phase "
             f"1.0). Alpha: {steering.selection_rule}. Intervals are exact (Clopper-Pearson) 95%.", ""]
    lines += _steering_rules_lines(steering)
    for direction, info in steering.directions.items():
        lines += _direction_lines(direction, info, cfg)
    lines += prompting_lines(steering.prompting_baseline, steering.directions)
    lines += _unsteered_degenerate_lines(steering)
    return lines


def _direction_lines(direction: str, info: DirectionSteeringResult, cfg: Phase3Configuration) -> list[str]:
    """One direction's steering: its alpha grid, validation against controls, diff-of-means and opposite-sign runs."""
    t = info.target
    controls = info.control_selection["latents"]
    lines = [f"### {direction}-preferring latent L{t.layer}/{t.latent} (rank 1)", "",
             f"Hypothesis: {info.hypothesis}. Hook `{info.hook_name}`, mean residual norm "
             f"{info.residual_norm:.4g} ({_norm_source(info)}), chosen alpha "
             f"**{info.chosen_alpha:g}**. Controls: {len(controls)} random latents of layer {t.layer} with "
             f"|separation| <= {cfg.control_max_separation} ({', '.join(map(str, controls))}), same alpha and "
             "norm, same tasks.", "",
             "Alpha grid, hyperparams split, alpha > 0 (the hypothesis):", ""]
    lines += _grid_table(info.grid_hyperparams, info.chosen_alpha)
    lines += ["", f"Validation split, alpha {info.chosen_alpha:g}:", ""]
    lines += _validation_table(f"SAE latent L{t.layer}/{t.latent}", info.validation, info.control_test, controls)
    dm = info.diff_means
    if dm:
        lines += [f"Baseline: the difference-of-class-means direction of layer {t.layer} (sae split), same scale "
                  f"and controls, its own alpha chosen the same way: **{dm['chosen_alpha']:g}**.", "",
                  "Alpha grid, hyperparams split:", ""]
        lines += _grid_table(dm["grid_hyperparams"], dm["chosen_alpha"])
        lines += ["", f"Validation split, alpha {dm['chosen_alpha']:g}:", ""]
        lines += _validation_table(f"diff of means L{t.layer}", dm["validation"], dm["control_test"], controls)
    else:
        lines += [f"Difference-of-means steering baseline: not run ({info.diff_means_note}).", ""]
    opposite = info.opposite_sign
    if opposite["grid_hyperparams"]:
        lines += ["Separate experiment, against the hypothesis (alpha < 0, hyperparams split only, never chosen):", ""]
        lines += _grid_table(opposite["grid_hyperparams"], None) + [""]
    return lines


def _alpha0_section(checks: dict[str, Alpha0Check]) -> list[str]:
    lines = ["## 4. alpha = 0 rerun against Phase 1.0 (same code path, zero vector)", "",
             "The rerun is the baseline of every steering rate; here is how far it is from Phase 1.0, whose batches "
             "held other tasks (greedy bf16 decoding is not batch-invariant on a GPU).", "",
             "| split | programs differing | labels flipped (same program) | tasks |", "|---|---|---|---|"]
    for split, check in checks.items():
        lines.append(f"| {split} | {check.n_programs_changed} | {check.n_label_flips} "
                     f"({check.n_label_flips_same_program}) | {check.n_tasks} |")
    lines.append("")
    for split, check in checks.items():
        if check.changed_task_ids:
            lines.append(f"{split}: differing tasks {', '.join(map(str, check.changed_task_ids[:20]))}.")
    differ = any(c.n_programs_changed or c.n_label_flips for c in checks.values())
    first = next(iter(checks.values()), None)
    notes = first.notes if differ and first is not None else []
    for note in notes:
        lines.append(f"Note: {note}")
    return lines + [""]


def _sae(desc: dict[str, str]) -> str:
    if desc.get("source") == "local":
        return f"local `{desc['path']}`"
    return f"`{desc.get('release')}` / `{desc.get('sae_id')}`"


def _config_section(doc: Phase3Result) -> list[str]:
    cfg = doc.configuration
    lines = ["## 5. Configuration", "",
             f"- model: `{cfg.model}` ({cfg.device}, {cfg.dtype}); Phase 1.0 model: `{cfg.phase1_model}`",
             "- SAEs: " + "; ".join(f"layer {layer}: {_sae(desc)}" for layer, desc in cfg.sae_ids.items()),
             "- splits: " + "; ".join(f"{name} {s['n']} tasks ({s['n_correct']} correct, {s['n_incorrect']} incorrect)"
                                      for name, s in cfg.split_sizes.items()),
             f"- seeds: pipeline seed {cfg.seed} (bootstrap, control choice); Phase 2 null seed "
             f"{doc.phase2_null.document.get('seed', '?')}",
             f"- bootstrap resamples: {cfg.bootstrap}; latents validated per direction: {cfg.top_latents_validated}",
             f"- coefficient grid: {', '.join(f'{a:g}' for a in cfg.coefficients)} (alpha > 0 searched; alpha < 0 "
             "the separate opposite-sign experiment)",
             f"- hook point: `{cfg.hook_point}`; position policy: `{cfg.steer_positions}`",
             f"- controls: {cfg.n_random_controls} per steered latent, |separation| <= {cfg.control_max_separation}",
             f"- generation: greedy, max_new_tokens {cfg.max_new_tokens} (Phase 1.0: {cfg.phase1_max_new_tokens}), "
             f"batch size {cfg.batch_size} (Phase 1.0: {cfg.phase1_batch_size}), prompt template "
             f"`{cfg.prompt_template_version}` in the {cfg.prompt_format} format (Phase 1.0's)",
             f"- git commit: `{cfg.git_commit}`",
             f"- Phase 2 results: `{doc.inputs['phase2_results']}`; Phase 1.0 dataset: `{doc.inputs['phase1_dataset']}`",
             ""]
    return lines


def _transfer_section(transfer: TransferSection | None, sae_ids: dict[str, dict[str, str]]) -> list[str]:
    """HumanEval transfer: the MBPP latents, thresholds and probes scored unchanged on HumanEval, beside MBPP validation."""
    if not transfer:
        return []
    lines = ["## 2b. Transfer to HumanEval (chosen on MBPP, applied unchanged)", ""]
    if not transfer.measured:
        return lines + [f"Not measured: {transfer.note}.", ""]
    sizes = transfer.sizes
    lines += [f"Rule: {transfer.rule}. HumanEval run: `{transfer.dataset}` (model {transfer.model}, prompt "
              f"{transfer.prompt_template_version}); {sizes['n']} tasks, {sizes['n_correct']} correct, "
              f"{sizes['n_incorrect']} incorrect. Each metric is followed by its baseline in parentheses; the "
              "threshold is the MBPP hyperparams one.", ""]
    if transfer.note:
        lines += [f"**Note:** {transfer.note}.", ""]
    lines += ["| positive class | score | MBPP validation AUROC [95% CI] | HumanEval AUROC [95% CI] (0.5) | "
              "HumanEval AUPRC (prevalence) | MBPP validation F1 (flag everything) | HumanEval F1 (flag everything) | "
              "HumanEval accuracy (majority) | threshold | HumanEval n (positives) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for row in transfer.latents + transfer.probes:
        score = row["name"] if "probe" in row else f"rank {row['rank']}: {_latent(sae_ids, row['layer'], row['latent'])}"
        mbpp = f"{_f(row['mbpp_validation_auroc'])} {_ci(row['mbpp_validation_auroc_ci_lo'], row['mbpp_validation_auroc_ci_hi'])}"
        he = f"{_f(row['auroc'])} {_ci(row['auroc_ci_lo'], row['auroc_ci_hi'])}"
        mbpp_f1 = f"{_f(row['mbpp_validation_f1'])} ({_f(row['mbpp_validation_f1_baseline_always_positive'])})"
        if row["informative_threshold"]:
            f1 = f"{_f(row['f1'])} ({_f(row['f1_baseline_always_positive'])})"
            acc = f"{_f(row['accuracy'])} ({_f(row['accuracy_baseline_majority'])})"
            threshold = f"{row['threshold']:.4g}"
        else:  # the MBPP threshold is shown when one was chosen, even where it puts HumanEval in one class
            f1, acc = _no_threshold_text(row), ""
            value = row.get("threshold")
            threshold = "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4g}"
        lines.append(f"| {row['positive_class']} | {score} | {mbpp} | {he} | {_auprc_cell(row)} | {mbpp_f1} | {f1} | "
                     f"{acc} | {threshold} | {row['n']} ({row['n_positive']}) |")
    if transfer.probe_note:
        lines += ["", f"Probes: {transfer.probe_note}."]
    return lines + [""] + _transfer_steering_lines(transfer.steering)


def _transfer_steering_lines(steering: dict[str, Any]) -> list[str]:
    """The steering half of the transfer: HumanEval at the MBPP alpha beside MBPP validation's numbers."""
    if not steering.get("measured"):
        return [f"Steering on HumanEval: not measured ({steering['note']}).", ""]
    sizes = steering["sizes"]
    lines = ["### Steering transfer (MBPP's alpha, vector, scale and controls on HumanEval)", "",
             f"Rule: {steering['rule']}. Scale: {steering['scale_source']}. Baseline: {steering['baseline']}; "
             f"{sizes['n']} tasks, {sizes['n_correct_alpha0']} pass at alpha = 0 ({sizes['n_correct_phase1']} in the "
             f"HumanEval Phase 1 run); at most {steering['max_new_tokens']} new tokens. Intervals are exact "
             "(Clopper-Pearson) 95%; p vs controls is the within-task permutation test (null: target and controls "
             "exchangeable on each task).", ""]
    if steering.get("note"):
        lines += [f"**Note:** {steering['note']}.", ""]
    lines += ["| direction | latent | alpha (MBPP hyperparams) | MBPP validation correction | MBPP validation corruption | "
              "MBPP controls beaten, p | HumanEval correction | HumanEval corruption | HumanEval McNemar p | "
              "HumanEval controls beaten, p |", "|---|---|---|---|---|---|---|---|---|---|"]
    for direction, info in steering["directions"].items():
        t, m, h, test = info["target"], info["mbpp_validation"], info["humaneval"], info["control_test"]
        lines.append(
            f"| {direction} | L{t['layer']}/{t['latent']} | {info['alpha']:g} | {_rate_cell(m, 'correction')} | "
            f"{_rate_cell(m, 'corruption')} | {m['n_controls_beaten']} of {m['n_controls']}, p = {_p(m['p_vs_controls'])} | "
            f"{_rate_cell(h, 'correction')} | {_rate_cell(h, 'corruption')} | {_p(h['mcnemar_p'])} | "
            f"{test['n_beaten']} of {test['n_controls']}, p = {_p(test['p_vs_controls'])} |")
    lines.append("")
    for direction, info in steering["directions"].items():
        t = info["target"]
        lines += [f"HumanEval, {direction}-preferring L{t['layer']}/{t['latent']} at alpha {info['alpha']:g}, "
                  "each control:", ""]
        lines += _validation_table(f"SAE latent L{t['layer']}/{t['latent']}", info["humaneval"], info["control_test"],
                                   info["control_latents"], "HumanEval")
    check = steering["alpha0_check"]
    lines += [f"HumanEval alpha = 0 rerun against the HumanEval Phase 1 run: {check['n_programs_changed']} of "
              f"{check['n_tasks']} programs differ, {check['n_label_flips']} labels flipped"
              + (f" ({'; '.join(check['notes'])})" if check["notes"] else "") + ".", ""]
    return lines


def render_summary(doc: Phase3Result) -> str:
    """The one-page markdown summary of a Phase 3 run."""
    lines = [f"# PVA-SAE Phase 3: validation summary ({doc.timestamp})", ""]
    if doc.flags:
        lines += ["**Read first:**", ""] + [f"- {flag}" for flag in doc.flags] + [""]
    lines += _null_section(doc.phase2_null, doc.phase2_top) + _stat_section(doc)
    lines += _transfer_section(doc.transfer, doc.configuration.sae_ids) + _steering_section(doc)
    lines += _alpha0_section(doc.steering.alpha0_check) + _config_section(doc)
    if doc.outputs:
        lines += ["## 6. Files", ""] + [f"- {name}: `{path}`" for name, path in doc.outputs.items()] + [""]
    return "\n".join(lines)


def render_flipped_examples(doc: Phase3Result, flipped: dict[str, dict[str, list[dict[str, Any]]]]) -> str:
    """A few validation programs that flipped each way under each steered latent, before and after."""
    lines = [f"# Flipped programs under steering ({doc.timestamp})", "",
             "Before = the alpha = 0 rerun's greedy program (same batches); after = the same prompt with the steering "
             "vector at the chosen alpha.", ""]
    for direction, kinds in flipped.items():
        info = doc.steering.directions[direction]
        t = info.target
        lines += [f"## {direction}-preferring latent L{t.layer}/{t.latent}, alpha {info.chosen_alpha:g}", ""]
        for kind, title in (("corrected", "incorrect -> correct"), ("corrupted", "correct -> incorrect")):
            lines += [f"### {title}", ""]
            if not kinds.get(kind):
                lines += ["(none)", ""]
            for ex in kinds.get(kind, []):
                lines += [f"#### task {ex['task_id']}: {ex['text']}", "",
                          f"Before ({ex['before_outcome']}):", "", "```python", ex["before_code"].rstrip() or "# (empty program)", "```", "",
                          f"After ({ex['after_outcome']}):", "", "```python", ex["after_code"].rstrip() or "# (empty program)", "```", ""]
    return "\n".join(lines)
