"""Phase 3's HumanEval transfer section (is the latent more than MBPP's style?): MBPP's choices applied unchanged to HumanEval.

A latent chosen on MBPP that predicts correctness only on MBPP may read
MBPP's prompt style rather than correctness. So when ``<data dir>/humaneval/``
holds a Phase 1 run of the same model (``python3 run.py phase 1 --dataset
humaneval``), every latent Phase 3 validates, with the threshold chosen on the
MBPP hyperparams split, and the best-layer probes (fitted on the MBPP sae
split, threshold and layer chosen on MBPP hyperparams) score the HumanEval
tasks' activations. Nothing is chosen on HumanEval: not the latent, the
threshold, the probe, its layer or its C. The metrics are computed by the
same code as MBPP's validation rows
(:func:`phase3_validation.statistical.evaluate_at_threshold`), so each
stands beside the same baselines (AUROC 0.5, always-positive F1, base rate,
majority accuracy), with a bootstrap interval over HumanEval tasks.

The causal half (steering on HumanEval at the MBPP-chosen alpha, with the
MBPP scale and controls) is ``transfer_steering.py``; its section is
``TransferResults.steering``. Without a HumanEval run both halves say
"not measured" and why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common.config import benchmark_data_dir, same_model
from common.datadir import PHASE1_DATASET, PHASE_DIRS, TransferSection, load_layer_matrix, read_phase1_metadata
from common.errors import PipelineError
from common.saes.loading import encode, load_sae
from phase3_validation.inputs import Phase3Inputs
from phase3_validation.probes import ProbeResults
from phase3_validation.statistical import LatentEvaluation, evaluate_at_threshold, positive_labels

logger = logging.getLogger(__name__)

BENCHMARK = "humaneval"
HUMANEVAL_COMMAND = "python3 run.py phase 1 --dataset humaneval"
THRESHOLD_SOURCE = "MBPP hyperparams split (chosen there, applied unchanged)"
RULE = ("latents, thresholds and probes chosen on MBPP (latents on the sae split by Phase 2; thresholds, probe "
        "best layers on hyperparams; probes fitted on sae) applied unchanged to HumanEval, and so are the steering "
        "alpha, vector, scale and controls (transfer_steering.py); nothing is chosen on HumanEval")
STEERING_NOTE = ("steering transfer not measured: Phase 3's steering did not reach HumanEval (see the note on the "
                 "statistical transfer)")


@dataclass
class TransferSet:
    """A HumanEval Phase 1.0 run: its tasks' labels and where their activations are."""

    dataset_path: Path
    meta: dict[str, Any]
    tasks: pd.DataFrame  # task_id, passed; task_id order

    @property
    def task_ids(self) -> list[int]:
        return [int(t) for t in self.tasks["task_id"]]

    @property
    def correct(self) -> np.ndarray:
        return self.tasks["passed"].to_numpy(dtype=bool)

    def activations(self, layer: int) -> np.ndarray:
        """(n_tasks, d_model) Phase 1.0 activations of ``layer``; a missing file is one line naming it."""
        labels: list[str | None] = ["correct" if c else "incorrect" for c in self.correct]
        try:
            return load_layer_matrix(self.dataset_path.parent / "activations", self.task_ids, layer, labels)
        except PipelineError as exc:
            raise PipelineError(f"HumanEval transfer: {exc}; rerun `{HUMANEVAL_COMMAND}` with the layers MBPP's "
                                "Phase 1 saved") from exc


def no_run_note(data_dir: str | Path) -> str:
    folder = benchmark_data_dir(data_dir, BENCHMARK) / PHASE_DIRS["1"]
    return f"no HumanEval Phase 1 run in {folder}: transfer not measured; run `{HUMANEVAL_COMMAND}` to add it"


def load_transfer_set(data_dir: str | Path, phase1_model: str) -> TransferSet | None:
    """The newest HumanEval Phase 1.0 run, checked; None when there is none.

    Why the model check is an error, not a note: activations of another model
    read through this model's SAEs measure nothing, and a silent skip would
    hide that the run the user made is unusable.
    """
    root = benchmark_data_dir(data_dir, BENCHMARK)
    folder = root / PHASE_DIRS["1"]
    if not folder.is_dir() or not any(folder.glob(PHASE1_DATASET.glob())):
        return None
    path = PHASE1_DATASET.newest(root)
    table = PHASE1_DATASET.read_table(path, needed=("task_id", "passed"))
    if table.empty:
        raise PipelineError(f"{path} holds no tasks; rerun `{HUMANEVAL_COMMAND}`")
    if table["task_id"].duplicated().any():
        raise PipelineError(f"{path} has duplicated task ids")
    meta = read_phase1_metadata(path)
    if meta.get("dataset") not in (None, BENCHMARK):
        raise PipelineError(f"{path}: its metadata says dataset {meta['dataset']!r}, not {BENCHMARK!r}")
    model = str(meta["model"])
    if not same_model(model, phase1_model):
        raise PipelineError(
            f"{path}: the HumanEval run is from model {model!r} but MBPP's Phase 1.0 is from {phase1_model!r}; "
            f"rerun `{HUMANEVAL_COMMAND} --model {phase1_model}`"
        )
    tasks = table[["task_id", "passed"]].assign(task_id=table["task_id"].astype(int), passed=table["passed"].astype(bool))
    return TransferSet(dataset_path=path, meta=meta, tasks=tasks.sort_values("task_id").reset_index(drop=True))


@dataclass
class TransferResults:
    """The transfer section of the validation JSON: one row per latent and best probe, or why there is none."""

    note: str | None = None
    dataset_path: Path | None = None
    sizes: dict[str, int] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    latents: list[dict[str, Any]] = field(default_factory=list)
    probes: list[dict[str, Any]] = field(default_factory=list)
    probe_note: str | None = None
    # The steering half (``transfer_steering.steer_transfer``); None until Phase 3's steering has run.
    steering: dict[str, Any] | None = None
    problems_path: Path | None = None  # the HumanEval file steering rebuilt its tasks from (None: none read, or the hub)

    def input_paths(self) -> dict[str, Path]:
        paths = {} if self.dataset_path is None else {"humaneval_phase1_dataset": self.dataset_path}
        if self.problems_path is not None:
            paths["humaneval_problems"] = self.problems_path
        return paths

    def to_dict(self) -> dict[str, Any]:
        return {
            "benchmark": BENCHMARK, "measured": self.dataset_path is not None, "note": self.note, "rule": RULE,
            "dataset": None if self.dataset_path is None else str(self.dataset_path),
            "model": self.meta.get("model"), "prompt_template_version": self.meta.get("prompt_template_version"),
            "slice": self.meta.get("slice"), "sizes": self.sizes,
            "latents": self.latents, "probes": self.probes, "probe_note": self.probe_note,
            "steering": self.steering or {"measured": False, "note": self.note or STEERING_NOTE},
        }


def _mbpp_validation_row(ev: LatentEvaluation) -> dict[str, Any]:
    return next(r for r in ev.rows if r["split"] == "validation" and r["temperature"] == 0.0)


def _row(identity: dict[str, Any], positive: str, ev: LatentEvaluation, correct: np.ndarray, scores: np.ndarray,
         n_bootstrap: int, seed: int) -> dict[str, Any]:
    """HumanEval metrics at the MBPP threshold, with MBPP's validation AUROC and F1 beside them."""
    metrics = evaluate_at_threshold(positive_labels(correct, positive), scores, ev.threshold, n_bootstrap, seed)
    if ev.threshold_note:
        metrics["note"] = "; ".join(x for x in (ev.threshold_note, metrics["note"]) if x)
    mbpp = _mbpp_validation_row(ev)
    return {
        **identity, "positive_class": positive, "split": BENCHMARK, "temperature": 0.0,
        "threshold_source": THRESHOLD_SOURCE, **metrics,
        "mbpp_validation_auroc": mbpp["auroc"], "mbpp_validation_auroc_ci_lo": mbpp["auroc_ci_lo"],
        "mbpp_validation_auroc_ci_hi": mbpp["auroc_ci_hi"], "mbpp_validation_f1": mbpp["f1"],
        "mbpp_validation_f1_baseline_always_positive": mbpp["f1_baseline_always_positive"],
    }


def transfer_statistics(
    tset: TransferSet | None,
    inputs: Phase3Inputs,
    evaluations: list[LatentEvaluation],
    probes: ProbeResults,
    n_bootstrap: int,
    seed: int,
    data_dir: str | Path,
) -> TransferResults:
    """Score HumanEval with every validated latent and best probe, at their MBPP thresholds."""
    if tset is None:
        note = no_run_note(data_dir)
        logger.info("phase 3: %s", note)
        return TransferResults(note=note)
    correct = tset.correct
    out = TransferResults(
        dataset_path=tset.dataset_path, meta=tset.meta,
        sizes={"n": len(correct), "n_correct": int(correct.sum()), "n_incorrect": int((~correct).sum())},
    )
    if correct.all() or not correct.any():
        out.note = (f"every HumanEval task is {'correct' if correct.all() else 'incorrect'} "
                    f"({out.sizes['n_correct']} of {out.sizes['n']} pass): AUROC undefined, F1 only against its baseline")
    source = inputs.results.sae_source
    for layer in sorted({ev.ref.layer for ev in evaluations if ev.ref is not None}):
        layer_evs = [ev for ev in evaluations if ev.ref is not None and ev.ref.layer == layer]
        sae = load_sae(source, layer, device="cpu")
        encoded = encode(sae, tset.activations(layer))
        del sae
        for ev in layer_evs:
            assert ev.ref is not None
            out.latents.append(_row({**ev.ref.to_dict(), "name": ev.ref.name}, ev.ref.direction, ev, correct,
                                    encoded[:, ev.ref.latent], n_bootstrap, seed))
    order = {(ev.ref.direction, ev.ref.rank): i for i, ev in enumerate(evaluations) if ev.ref is not None}
    out.latents.sort(key=lambda r: order[(r["direction"], r["rank"])])
    if not probes.best:
        out.probe_note = probes.note or "no probe baselines on MBPP: none to transfer"
    for kind, by_class in probes.best.items():
        for positive, layer in by_class.items():
            fitted = probes.fitted[layer]
            sign = 1.0 if positive == "correct" else -1.0
            scores = sign * fitted.scores(kind, tset.activations(layer))
            ev = probes.find(kind, positive, layer)
            out.probes.append(_row({"probe": kind, "layer": layer, "name": f"{kind} probe L{layer}"}, positive, ev,
                                   correct, scores, n_bootstrap, seed))
    for row in out.latents:
        logger.info("transfer to HumanEval: %s-preferring %s AUROC %.3f [%.3f, %.3f] (MBPP validation %.3f)",
                    row["direction"], row["name"], row["auroc"], row["auroc_ci_lo"], row["auroc_ci_hi"],
                    row["mbpp_validation_auroc"])
    return out


def auroc_transfer_flag(row: dict[str, Any], what: str) -> str | None:
    """The read-first line for one HumanEval row, or None when its interval lies above 0.5.

    Two outcomes are flagged, each by its own words: an interval holding 0.5
    ("does not transfer") and an interval entirely below 0.5 ("reverses
    sign": the score predicts the *other* class on HumanEval, which a reader
    of "does not transfer" would not guess).
    """
    lo, hi = row.get("auroc_ci_lo"), row.get("auroc_ci_hi")
    if lo is None or hi is None or lo != lo or hi != hi:
        return None
    interval = f"AUROC {row['auroc']:.3f} [{lo:.3f}, {hi:.3f}]"
    if hi < 0.5:
        return (f"The {what} reverses sign on HumanEval: {interval} lies entirely below 0.5, so on HumanEval it "
                f"predicts the opposite class to the one it was chosen for on MBPP.")
    if lo <= 0.5:
        return f"The {what} does not transfer to HumanEval: {interval} includes 0.5."
    return None


def transfer_flags(transfer: TransferSection | None) -> list[str]:
    """Read-first lines: a rank-1 latent that does not transfer to HumanEval, or whose sign reverses there."""
    if not transfer or not transfer.measured:
        return []
    flags = []
    for row in transfer.latents:
        if row["rank"] != 1:
            continue
        flag = auroc_transfer_flag(row, f"rank-1 {row['direction']}-preferring latent {row['name']}")
        if flag:
            flags.append(flag)
    steering = transfer.steering or {}
    measured = (steering.get("directions") or {}) if steering.get("measured") else {}
    for direction, info in measured.items():
        test = info["control_test"]
        if test["p_vs_controls"] >= 0.05:
            flags.append(f"Steering the {direction}-preferring latent on HumanEval at the MBPP alpha {info['alpha']:g} "
                         f"is not distinguishable from its {test['n_controls']} controls (within-task permutation test "
                         f"p = {test['p_vs_controls']:.3g}): its causal effect is not shown to transfer.")
    return flags
