"""``run.py study-report``: the study's results page, written from its output files (no number is typed).

Why generated: a page whose numbers are typed drifts from the files; this one
is rebuilt from the files by the study's last step, and a test checks that
its numbers equal the files'. Every piece it reads is optional: a missing
piece is an explicit "not measured" line, never a crash, so the page of a
partial study says what is missing.

Read (all under the data directory): Phase 1's MBPP dataset and Phase 0.1's
splits (pass rates), Phase 1.2's run (pass rate per temperature), HumanEval's
Phase 1 dataset, the SAE training report and Phase 2's score arrays (held-out
FVU, L0, latents that never fire), Phase 3's ``validation_<ts>.json`` and
summary, every phase's metadata (wall time, peak memory), the corpora's
metadata and the study record (settings and why). Beside the page, in a
folder of the page's name: the greedy generations with their labels (so
anyone can re-score them with ``run.py label``) and Phase 3's plots.
"""

from __future__ import annotations

import json
import logging
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common.config import PipelineConfig, benchmark_data_dir
from common.datadir import (
    DIFFICULTY_METADATA,
    PHASE1_DATASET,
    PHASE1_METADATA,
    PHASE2_METADATA,
    PHASE2_RESULTS,
    PHASE2_SCORES,
    PHASE3_METADATA,
    PHASE3_VALIDATION,
    SPLIT,
    SPLIT_METADATA,
    TEMPERATURE_METADATA,
    Phase3Result,
    atomic_write_bytes,
    atomic_write_text,
    load_temperature_run,
    metadata_path_of,
    phase3_summary_of,
    read_json,
    read_phase3_result,
)
from common.errors import PipelineError
from common.statistics.stats import clopper_pearson
from sweep.table import comparison_rows, render_table

logger = logging.getLogger(__name__)

NOT_MEASURED = "not measured"
FEW_POSITIVES = 20  # below this many passing programs, the page warns that AUROC intervals are wide
SPLITS = ("sae", "hyperparams", "validation")
GENERATION_COLUMNS = ["task_id", "generated_text", "passed", "outcome"]
# Published figures the page compares with; literature, not this study's output.
PUBLISHED = (
    "gemma-2-2b with GemmaScope SAEs on MBPP (the study this pipeline reproduces): its best latents reach "
    "AUROC 0.64 to 0.67",
    "the 2026 probe study on Qwen3-4B: a linear probe reaches AUROC 0.931, prompt length alone 0.754",
)
PUBLISHED_LATENT_AUROC = (0.64, 0.67)  # gemma-2-2b's best latents, as in PUBLISHED
PUBLISHED_PROBE_AUROC = 0.931  # Qwen3-4B's linear probe
PUBLISHED_LENGTH_AUROC = 0.754  # prompt length alone, same study


@dataclass
class Page:
    """The page being written and the files it read (listed at its end)."""

    lines: list[str] = field(default_factory=list)
    sources: list[Path] = field(default_factory=list)

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def section(self, title: str) -> None:
        self.lines.extend(["", f"## {title}", ""])

    def read(self, path: Path) -> Path:
        self.sources.append(path)
        return path


def rate(k: int, n: int) -> str:
    """``k/n = r [lo, hi]`` with the exact (Clopper-Pearson) 95% interval."""
    if n == 0:
        return f"0/0 ({NOT_MEASURED})"
    lo, hi = clopper_pearson(k, n)
    return f"{k}/{n} = {k / n:.3f} [{lo:.3f}, {hi:.3f}]"


def _num(value: Any, digits: int = 3) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value):
        return f"{value:.{digits}f}"
    return NOT_MEASURED


def phase1_dataset(data_dir: Path) -> Path | None:
    return PHASE1_DATASET.latest(data_dir)


def _settings(page: Page, record: dict[str, Any] | None) -> None:
    page.section("Command and settings")
    if record is None:
        page.add(f"Study record: {NOT_MEASURED} (no study.json given): the settings below come from nowhere.")
        return
    commands = [s["command"] for s in record.get("steps", [])]
    page.add(f"Produced by `{record.get('command') or 'python3 run.py study'}` (preset `{record.get('preset')}`), "
             "whose steps were:", "", "```")
    page.add(*commands, "```", "")
    page.add("| setting | value used | full study | reduced | why |", "| --- | --- | --- | --- | --- |")
    for name, s in (record.get("settings") or {}).items():
        page.add(f"| {name} | {s['value']} | {s['full']} | {'yes' if s['reduced'] else 'no'} | {s['reason']} |")


def _mbpp(page: Page, data_dir: Path) -> pd.DataFrame | None:
    page.section("MBPP, Phase 1 (greedy)")
    path = phase1_dataset(data_dir)
    if path is None:
        page.add(f"Pass rate: {NOT_MEASURED} (no Phase 1 dataset).")
        return None
    table = pd.read_parquet(page.read(path))
    passed = table["passed"].astype(bool)
    page.add(f"Pass rate, all tasks: {rate(int(passed.sum()), len(table))} (exact 95% interval).", "")
    page.add("| split | passed / tasks = rate [95% CI] |", "| --- | --- |")
    for split in SPLITS:
        split_path = SPLIT.path(data_dir, split=split)
        if not split_path.is_file():
            page.add(f"| {split} | {NOT_MEASURED} |")
            continue
        ids = set(pd.read_parquet(page.read(split_path), columns=["task_id"])["task_id"].astype(int))
        inside = passed[table["task_id"].astype(int).isin(ids)]
        page.add(f"| {split} | {rate(int(inside.sum()), len(inside))} |")
    page.add("", "Outcomes: " + ", ".join(f"{k} {v}" for k, v in table["outcome"].value_counts().sort_index().items()) + ".")
    if "n_prompt_tokens" in table:
        by = table.groupby(passed)["n_prompt_tokens"].mean()
        page.add(f"Mean prompt length in tokens: passing {_num(by.get(True), 1)}, failing {_num(by.get(False), 1)}.")
    return table


def _temperatures(page: Page, data_dir: Path) -> None:
    page.section("MBPP validation split, Phase 1.2 (sampling)")
    try:
        run = load_temperature_run(TEMPERATURE_METADATA.folder(data_dir))
    except PipelineError as exc:
        page.add(f"Pass rates by temperature: {NOT_MEASURED} ({exc}).")
        return
    if run is None:
        page.add(f"Pass rates by temperature: {NOT_MEASURED} (no Phase 1.2 run).")
        return
    page.add("| temperature | samples passed / drawn = rate [95% CI] | tasks |", "| --- | --- | --- |")
    for temperature, path in sorted(run.tables.items()):
        table = pd.read_parquet(page.read(path), columns=["task_id", "passed"])
        page.add(f"| {temperature:g} | {rate(int(table['passed'].sum()), len(table))} | {table['task_id'].nunique()} |")


def _humaneval(page: Page, data_dir: Path) -> pd.DataFrame | None:
    page.section("HumanEval, Phase 1 (greedy, transfer set)")
    path = phase1_dataset(benchmark_data_dir(str(data_dir), "humaneval"))
    if path is None:
        page.add(f"Pass rate: {NOT_MEASURED} (no HumanEval Phase 1 dataset).")
        return None
    table = pd.read_parquet(page.read(path))
    page.add(f"Pass rate: {rate(int(table['passed'].astype(bool).sum()), len(table))}.")
    meta_path = metadata_path_of(path)
    if meta_path.is_file():
        fmt = (read_json(page.read(meta_path)).get("run") or {}).get("settings", {}).get("prompt_format", NOT_MEASURED)
        page.add(f"Prompt format (as Phase 1 recorded it): {fmt}.")
    return table


def _sae_report_path(data_dir: Path, record: dict[str, Any] | None) -> Path | None:
    """The SAE folder: the study's train-saes step, else the local SAE folder Phase 2 read."""
    for step in (record or {}).get("steps", []):
        words = shlex.split(step["command"])
        if "train-saes" in words and "--output" in words:
            return Path(words[words.index("--output") + 1]) / "sae_training_report.json"
    results = PHASE2_RESULTS.latest(data_dir, split="sae")
    local = (read_json(results).get("sae") or {}).get("local_path") if results else None
    return Path(local) / "sae_training_report.json" if local else None


def dead_latents(data_dir: Path) -> tuple[dict[str, int], Path | None]:
    """Per layer: latents that fire (> 0) on no sae-split task (Phase 2's firing shares of both classes are 0)."""
    results = PHASE2_RESULTS.latest(data_dir, split="sae")
    if results is None:
        return {}, None
    scores_dir = Path(read_json(results)["scores_dir"])
    dead = {}
    for npz in PHASE2_SCORES.in_folder(scores_dir):
        with np.load(npz) as arrays:
            dead[npz.stem.removeprefix("layer_")] = int(((arrays["f_correct"] == 0) & (arrays["f_incorrect"] == 0)).sum())
    return dead, results


def _saes(page: Page, data_dir: Path, record: dict[str, Any] | None) -> None:
    page.section("SAEs")
    path = _sae_report_path(data_dir, record)
    dead, results = dead_latents(data_dir)
    if results is not None:
        page.read(results)
    if path is None or not path.is_file():
        page.add(f"SAE quality: {NOT_MEASURED} (no sae_training_report.json).")
        return
    report = read_json(page.read(path))
    fvu_phase2 = (read_json(results).get("fvu") or {}) if results else {}
    page.add(f"Trained on {report.get('n_train_tokens')} tokens ({report.get('n_heldout_tokens')} held out) of "
             f"{report.get('n_texts')} corpus texts.", "")
    page.add("| layer | d_sae | held-out FVU | held-out L0 | dead on the sae split | FVU at the last prompt token |",
             "| --- | --- | --- | --- | --- | --- |")
    for layer, entry in sorted(report.get("layers", {}).items(), key=lambda kv: int(kv[0])):
        own = (fvu_phase2.get(layer) or {}).get("own")
        page.add(f"| {layer} | {entry['d_sae']} | {_num(entry['heldout_fvu'])} | {_num(entry['heldout_l0'], 1)} | "
                 f"{dead.get(layer, NOT_MEASURED)} | {_num(own)} |")


def _phase3(page: Page, data_dir: Path) -> Phase3Result | None:
    page.section("Latents, probes and steering (Phase 3)")
    path = PHASE3_VALIDATION.latest(data_dir)
    if path is None:
        page.add(f"Latents, probes, confounds, steering and HumanEval transfer: {NOT_MEASURED} (no Phase 3 output).")
        return None
    doc = read_phase3_result(page.read(path))
    page.add(render_table(comparison_rows([("this study", path)])), "")
    auprc = [row.get("auprc") for e in doc.statistical.latents for row in e.rows]
    if not any(v is not None for v in auprc):
        page.add(f"AUPRC: {NOT_MEASURED} (Phase 3's results hold no AUPRC).", "")
    _confounds(page, doc)
    summary = phase3_summary_of(path)
    page.section("Phase 3 summary, as Phase 3 wrote it")
    if summary.is_file():
        text = page.read(summary).read_text()
        page.add(*["##" + line if line.startswith("#") else line for line in text.splitlines()])
    else:
        page.add(f"{NOT_MEASURED} (no {summary.name}).")
    return doc


def _confounds(page: Page, doc: Phase3Result) -> None:
    reviewer = doc.statistical.reviewer_baselines or {}
    page.add("Confounds and reviewer baselines (validation AUROC, 95% bootstrap interval):", "")
    rows = {**{f"confound {k}": v for k, v in (reviewer.get("confounds") or {}).items()},
            **{k: p.get("auroc") for k, p in (reviewer.get("predictors") or {}).items()}}
    if not rows:
        page.add(f"- {NOT_MEASURED}: {reviewer.get('note') or 'no reviewer baselines in the Phase 3 results'}")
    for name, a in rows.items():
        a = a or {}
        page.add(f"- {name}: {_num(a.get('auroc'))} [{_num(a.get('low'))}, {_num(a.get('high'))}]")
    page.add(*[f"- {line}" for line in reviewer.get("verdicts") or []])


def _phase_metadata(data_dir: Path) -> list[tuple[str, Path | None]]:
    """Each phase's metadata file (the newest), in pipeline order."""
    he = benchmark_data_dir(str(data_dir), "humaneval")
    return [
        ("phase 0", DIFFICULTY_METADATA.latest(data_dir)),
        ("phase 0.1", SPLIT_METADATA.path(data_dir)),
        ("phase 1 (MBPP)", PHASE1_METADATA.latest(data_dir)),
        ("phase 1.2", TEMPERATURE_METADATA.path(data_dir)),
        ("phase 2 (sae)", PHASE2_METADATA.latest(data_dir, split="sae")),
        ("phase 2 (validation)", PHASE2_METADATA.latest(data_dir, split="validation")),
        ("phase 1 (HumanEval)", PHASE1_METADATA.latest(he)),
        ("phase 3", PHASE3_METADATA.latest(data_dir)),
    ]


def _resources(page: Page, data_dir: Path, record: dict[str, Any] | None) -> None:
    page.section("Wall time and peak memory")
    page.add("| step | wall time (s) | peak RSS (MB) | metadata |", "| --- | --- | --- | --- |")
    for name, path in _phase_metadata(data_dir):
        if path is None or not path.is_file():
            page.add(f"| {name} | {NOT_MEASURED} | {NOT_MEASURED} | - |")
            continue
        meta = read_json(page.read(path))
        page.add(f"| {name} | {_num(meta.get('wall_time_s'), 1)} | {_num(meta.get('peak_rss_mb'), 1)} | {path.name} |")
    sae_row = _sae_training_row(data_dir, record)
    if sae_row:
        page.add(sae_row)
    page.add(*_resumed_note(page, data_dir))  # after the table: a paragraph inside it would end it


def _sae_training_row(data_dir: Path, record: dict[str, Any] | None) -> str:
    """The train-saes row of the resources table ('' without a training report)."""
    sae_report = _sae_report_path(data_dir, record)
    if sae_report is None or not sae_report.is_file():
        return ""
    report = read_json(sae_report)
    whole = report.get("resources")
    if whole:  # the whole command, recorded by run.py train-saes
        return (f"| train-saes | {_num(whole.get('wall_time_s'), 1)} | {_num(whole.get('peak_rss_mb'), 1)} | "
                f"{sae_report.name} |")
    seconds = report.get("collect_seconds", 0.0) + sum(e["train_seconds"] for e in report.get("layers", {}).values())
    return f"| train-saes (collecting and training only) | {_num(seconds, 1)} | {NOT_MEASURED} | {sae_report.name} |"


def _resumed_note(page: Page, data_dir: Path) -> list[str]:
    """A Phase 3 that read generations back from earlier processes: its wall time is the last process's alone.

    Why on the page: a phase's metadata times the process that wrote it, so a
    Phase 3 stopped and rerun reports less than the study cost.
    """
    path = PHASE3_VALIDATION.latest(data_dir)
    steering = Path(read_phase3_result(path).outputs.get("steering", "")) if path is not None else None
    if steering is None or not steering.is_file():
        return []
    runs = pd.read_parquet(page.read(steering), columns=["n_resumed"])["n_resumed"].fillna(0)
    resumed = int((runs > 0).sum())
    if not resumed:
        return []
    note = (f"Phase 3 read generations back from the checkpoints of earlier processes ({resumed} of the "
            f"{len(runs)} rows of its steering table: a stopped run resumed, or generations kept by "
            "`--keep-generations`): its wall time and peak memory are those of its last process alone.")
    return ["", note + _generation_cost_sentence(page, data_dir)]


def _generation_cost_sentence(page: Page, data_dir: Path) -> str:
    """What Phase 3's generations cost across processes, from its metadata ('' where not recorded)."""
    path = PHASE3_METADATA.latest(data_dir)
    cost = read_json(page.read(path)).get("generation_cost") if path is not None and path.is_file() else None
    if not cost:
        return ""
    now, before = cost["model_seconds_this_process"], cost["model_seconds_read_back"]
    return (f" Its {cost['runs']} generation runs ({cost['sequences']} sequences, {cost['sequences_read_back']} "
            f"read back) cost {_num(now + before, 1)} s of model time: {_num(now, 1)} s in the last process and "
            f"{_num(before, 1)} s in earlier ones (the sum of the records' amortised generation times; the earlier "
            "processes' test execution and statistics are not counted).")


def _corpora(page: Page, record: dict[str, Any] | None) -> None:
    page.section("Corpora")
    commands = [shlex.split(s["command"]) for s in (record or {}).get("steps", [])]
    outs = [words for words in commands if "build-corpus" in words]
    if not outs:
        page.add(f"Corpora: {NOT_MEASURED} (no build-corpus step in the study record).")
        return
    page.add("| kind | documents | characters | files | sha256 |", "| --- | --- | --- | --- | --- |")
    for words in outs:
        out = Path(words[words.index("--out") + 1])
        meta_path = out.with_name(f"{out.stem}_metadata.json")
        if not meta_path.is_file():
            page.add(f"| {out.name} | {NOT_MEASURED} | | | |")
            continue
        m = read_json(page.read(meta_path))
        page.add(f"| {m['kind']} | {m['n_documents']} | {m['n_chars']} | {m['n_files']} | `{m['sha256']}` |")


def _latent_row(doc: Phase3Result, direction: str) -> dict[str, Any] | None:
    """Phase 3's validation row (temperature 0) of Phase 2's rank-1 latent of ``direction``."""
    top = doc.phase2_top.get(direction)
    if top is None:
        return None
    for entry in doc.statistical.latents:
        if (entry.layer, entry.latent, entry.direction) == (top.layer, top.latent, direction):
            return entry.validation_row()
    return None


def _last_token_fit(page: Page, data_dir: Path) -> None:
    """What Phase 2's FVU at the last prompt token says about what the latents can carry.

    Why on the page: that FVU divides the SAE's reconstruction error by the
    variance between the split's tasks. Above 1, the error is larger than
    everything that tells one task from another, so a latent that separates
    correct from incorrect is not expected, whatever the statistics say.
    """
    results = PHASE2_RESULTS.latest(data_dir, split="sae")
    if results is None:
        return
    fvu = {int(k): v.get("own") for k, v in (read_json(results).get("fvu") or {}).items() if v.get("own") is not None}
    if not fvu:
        return
    low, high = min(fvu.values()), max(fvu.values())
    where = f"at the last prompt token (layers {', '.join(str(k) for k in sorted(fvu))})"
    if low > 1:
        page.add(f"- {where[0].upper()}{where[1:]}, the SAEs' reconstruction error is {_num(low)} to {_num(high)} "
                 "times the variance between tasks (Phase 2's FVU): the error is larger than everything that tells "
                 "one task from another, so their latents are not expected to separate correct from incorrect; "
                 "probes on the raw residual stream do not have this loss.")
    else:
        page.add(f"- Phase 2's FVU {where} (reconstruction error over the variance between tasks): "
                 f"{_num(low)} to {_num(high)}.")


def _interval(row: dict[str, Any], lo: str = "auroc_ci_lo", hi: str = "auroc_ci_hi") -> str:
    """AUROC with its interval, and whether that interval includes chance."""
    if row.get(lo) is None or row.get(hi) is None:
        return f"AUROC {_num(row.get('auroc'))} (no interval)"
    chance = row[lo] <= 0.5 <= row[hi]
    return (f"AUROC {_num(row.get('auroc'))} [{_num(row[lo])}, {_num(row[hi])}]"
            + (", an interval that includes chance (0.5)" if chance else ", an interval that excludes chance"))


def _probe_row(doc: Phase3Result, kind: str, positive: str, layer: int) -> dict[str, Any] | None:
    """A probe's validation row at temperature 0, or None."""
    probes = doc.statistical.probes
    entry = next((p for p in probes.probes if (p.probe, p.positive_class, p.layer) == (kind, positive, layer)), None)
    return next((r for r in (entry.rows if entry else []) if r.get("split") == "validation"
                 and r.get("temperature") == 0.0), None)


def _where(low: float, high: float, row: dict[str, Any], lo: str = "auroc_ci_lo", hi: str = "auroc_ci_hi") -> str:
    """Where a published figure (or range) lies against this study's interval: inside, above or below it."""
    if row.get(lo) is None or row.get(hi) is None:
        return "cannot be placed (no interval here)"
    if low > row[hi]:
        return "lies above this study's interval"
    if high < row[lo]:
        return "lies below this study's interval"
    return "lies inside this study's interval" if low >= row[lo] and high <= row[hi] else "overlaps this study's interval"


def _published_comparison(doc: Phase3Result) -> list[str]:
    """This study's numbers beside the published ones, each placed against this study's 95% interval."""
    lines = []
    low, high = PUBLISHED_LATENT_AUROC
    for direction in ("correct", "incorrect"):
        row = _latent_row(doc, direction)
        if row is not None and row.get("auroc") is not None:
            lines.append(f"- The rank-1 {direction}-preferring latent here has validation AUROC "
                         f"{_num(row['auroc'])}; gemma-2-2b's published {low:g} to {high:g} {_where(low, high, row)}.")
    layer = ((doc.statistical.probes.best_layer or {}).get("logistic") or {}).get("correct")
    row = _probe_row(doc, "logistic", "correct", layer) if layer is not None else None
    if row is not None and row.get("auroc") is not None:
        lines.append(f"- The logistic probe here (layer {layer}) has validation AUROC {_num(row['auroc'])}; "
                     f"Qwen3-4B's published {PUBLISHED_PROBE_AUROC:g} "
                     f"{_where(PUBLISHED_PROBE_AUROC, PUBLISHED_PROBE_AUROC, row)}.")
    length = ((doc.statistical.reviewer_baselines or {}).get("confounds") or {}).get("n_prompt_tokens")
    if length and length.get("auroc") is not None:
        lines.append(f"- Prompt length alone here has validation AUROC {_num(length['auroc'])}; the probe study's "
                     f"{PUBLISHED_LENGTH_AUROC:g} {_where(PUBLISHED_LENGTH_AUROC, PUBLISHED_LENGTH_AUROC, length, 'low', 'high')}.")
    return lines


def _probe_findings(doc: Phase3Result) -> list[str]:
    """The best probe of each kind and positive class (layer chosen on hyperparams), on validation."""
    probes = doc.statistical.probes
    found: dict[tuple[str, int, str], list[str]] = {}  # (kind, layer, AUROC text) -> the positive classes
    for kind, by_class in sorted((probes.best_layer or {}).items()):
        for positive, layer in sorted(by_class.items()):
            row = _probe_row(doc, kind, positive, layer)
            if row is not None:
                found.setdefault((kind, layer, _interval(row)), []).append(positive)
    lines = []
    for (kind, layer, interval), classes in found.items():  # AUROC is symmetric: one sentence when both agree
        which = " or ".join(classes)
        lines.append(f"- The {kind} probe on the residual stream (layer {layer}, chosen on hyperparams; {which} as "
                     f"the positive class): validation {interval}.")
    return lines


def _steering_findings(doc: Phase3Result) -> list[str]:
    """Each direction's steering on validation against its random-latent controls, in one sentence."""
    lines = []
    for direction, info in sorted(doc.steering.directions.items()):
        v = info.validation or {}
        p = v.get("p_vs_controls")
        if p is None:
            lines.append(f"- Steering the {direction}-preferring latent: the test against its controls was "
                         f"{NOT_MEASURED}.")
            continue
        verdict = "beats" if p < 0.05 else "does **not** beat"
        lines.append(
            f"- Steering the {direction}-preferring latent (alpha {info.chosen_alpha:g}, chosen on hyperparams) "
            f"{verdict} its {v.get('n_controls')} random-latent controls on validation: effect "
            f"{_num(v.get('predicted_effect'))} against a mean control effect {_num(v.get('mean_control_effect'))} "
            f"(excess {_num(v.get('excess_effect'))}, one-sided p = {_num(p)}).")
    return lines


def _transfer_findings(doc: Phase3Result) -> list[str]:
    """How many of the MBPP-chosen scores separate HumanEval's classes, unchanged."""
    transfer = doc.transfer
    if not transfer.measured:
        return [f"- HumanEval transfer: {NOT_MEASURED} ({transfer.note})."]
    rows = [r for r in transfer.latents + transfer.probes if r.get("auroc_ci_lo") is not None]
    above = [r for r in rows if r["auroc_ci_lo"] > 0.5]
    below = [r for r in rows if r["auroc_ci_hi"] < 0.5]
    sizes = transfer.sizes
    few = sizes.get("n_correct") is not None and sizes["n_correct"] < FEW_POSITIVES
    return [f"- On HumanEval ({sizes.get('n_correct')} passing of {sizes.get('n')}), {len(above)} of the {len(rows)} "
            f"scores chosen on MBPP (latents and probes, applied unchanged) have an AUROC interval above chance and "
            f"{len(below)} below it" + ("; with so few passing programs most intervals are wide." if few else ".")]


def _findings(page: Page, doc: Phase3Result | None, mbpp: pd.DataFrame | None, data_dir: Path) -> None:
    page.section("What this study finds, and what it cannot")
    split_path = SPLIT.path(data_dir, split="validation")
    if mbpp is not None and split_path.is_file():
        ids = set(pd.read_parquet(split_path, columns=["task_id"])["task_id"].astype(int))
        inside = mbpp[mbpp["task_id"].astype(int).isin(ids)]
        page.add(f"- The validation split, where every number above is measured, holds {int(inside['passed'].sum())} "
                 f"passing programs of {len(inside)}: an AUROC interval is only as narrow as that count allows.")
    _last_token_fit(page, data_dir)
    if doc is None:
        page.add(f"- Latents, probes and steering: {NOT_MEASURED} (no Phase 3 output).")
    else:
        beats = doc.phase2_null.beats_null
        for direction in ("correct", "incorrect"):
            verdict = beats.get(direction)
            said = NOT_MEASURED if verdict is None else ("beats" if verdict else "does **not** beat")
            row = _latent_row(doc, direction)
            auroc = (f"validation AUROC {NOT_MEASURED}" if row is None or row.get("auroc_ci_lo") is None
                     else f"validation {_interval(row)}")
            page.add(f"- The best {direction}-preferring latent {said} its permutation null on the sae split; {auroc}.")
        page.add(*_probe_findings(doc))
        length = ((doc.statistical.reviewer_baselines or {}).get("confounds") or {}).get("n_prompt_tokens")
        if length:
            page.add(f"- Prompt length alone reaches validation AUROC {_num(length.get('auroc'))} "
                     f"[{_num(length.get('low'))}, {_num(length.get('high'))}] here.")
        page.add(*_steering_findings(doc), *_transfer_findings(doc))
    page.add("", "Published figures to compare with (literature, not this study's output):")
    page.add(*[f"- {line}" for line in PUBLISHED])
    if doc is not None:
        page.add("", "Against them (a published figure inside this study's 95% interval is one this study cannot "
                 "tell apart from its own):", *_published_comparison(doc))


def _assets(page: Page, out: Path, mbpp: pd.DataFrame | None, humaneval: pd.DataFrame | None,
            doc: Phase3Result | None) -> None:
    """Generations with labels and Phase 3's plots, in ``<page stem>/`` beside the page."""
    folder = out.with_suffix("")
    page.section("Files beside this page")
    for name, table, dataset in (("mbpp_generations.jsonl", mbpp, "mbpp"), ("humaneval_generations.jsonl", humaneval, "humaneval")):
        if table is None:
            continue
        rows = table[GENERATION_COLUMNS].to_dict(orient="records")
        atomic_write_text(folder / name, "".join(json.dumps(r, default=_plain) + "\n" for r in rows))
        page.add(f"- `{folder.name}/{name}`: {len(rows)} generations (task_id, generated_text, passed, outcome); "
                 f"re-score with `python3 run.py label --generations {folder.name}/{name} --dataset {dataset}`")
    for key, src in sorted((doc.outputs if doc is not None else {}).items()):
        if key.endswith("_png") and Path(src).is_file():
            # A name without Phase 3's timestamp: a rerun's plot replaces the one before instead of sitting beside it.
            name = key.removesuffix("_png") + ".png"
            atomic_write_bytes(folder / name, Path(src).read_bytes())
            page.add(f"- `{folder.name}/{name}` ({key.removesuffix('_png').replace('_', ' ')}; Phase 3's "
                     f"`{Path(src).name}`)")


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else str(value)


def build_page(data_dir: Path, out: Path, record_path: Path | None) -> str:
    """The whole page as Markdown (and the files beside it)."""
    record = read_json(record_path) if record_path is not None and record_path.is_file() else None
    page = Page()
    model = Path(str((record or {}).get("study_inputs", {}).get("model_dir", "SmolLM2-135M-Instruct"))).name
    page.add(f"# {model} on MBPP and HumanEval: results",
             "", "Generated by `python3 run.py study-report` from the study's output files; do not edit by hand "
             "(rerun the command instead). Every number below is read from the files listed at the end.")
    _settings(page, record)
    mbpp = _mbpp(page, data_dir)
    _temperatures(page, data_dir)
    humaneval = _humaneval(page, data_dir)
    _saes(page, data_dir, record)
    doc = _phase3(page, data_dir)
    _resources(page, data_dir, record)
    _corpora(page, record)
    _findings(page, doc, mbpp, data_dir)
    _assets(page, out, mbpp, humaneval, doc)
    page.section("Files read")
    page.add(*[f"- `{p}`" for p in dict.fromkeys(page.sources)])
    return "\n".join(page.lines) + "\n"


def report_cli(cfg: PipelineConfig, out: str | None, record: str | None) -> int:
    from study.runner import DEFAULT_REPORT

    data_dir = Path(cfg.data_dir).resolve()
    if not data_dir.is_dir():
        raise PipelineError(f"--data-dir {data_dir} is not a folder: run the study first (python3 run.py study)")
    if record is not None and not Path(record).is_file():
        raise PipelineError(f"--record {record} is not a file")
    target = Path(out) if out else DEFAULT_REPORT
    text = build_page(data_dir, target, Path(record) if record else None)
    atomic_write_text(target, text)
    print(f"results page -> {target}")
    return 0

