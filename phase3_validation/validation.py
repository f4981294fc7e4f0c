"""Phase 3: statistical and causal validation of the latents Phase 2 chose (docs/design.md sections 2 and 4).

``run(cfg)`` reads Phase 2's results, validates the top latents as
predictors (``statistical.py``), steers the model along the rank-1 latent of
each direction with controls and an alpha = 0 rerun (``steering_eval.py``),
and writes, under ``data/phase3/`` with one timestamp:

- ``validation_<ts>.json``: everything, machine-readable: the typed, versioned
  result document (docs/outputs.md; the summary is rendered from it);
- ``metrics_<ts>.parquet``: one row per latent x (split, temperature), every
  metric beside its baseline, plus the HumanEval transfer rows (``split ==
  "humaneval"``; likewise ``probe_metrics_<ts>.parquet`` for the probes);
- ``steering_<ts>.parquet``: one row per steered run (latent or control,
  alpha, split) with rates, intervals and tests, the HumanEval steering
  transfer included (rows whose ``split`` is ``"humaneval"``, ``transfer_steering.py``);
- ``steering_outcomes_<ts>.parquet``: one row per (split, direction, run,
  alpha, task) with the label, outcome, degenerate flag and generated text,
  from which every steering p-value can be derived again (docs/steering.md);
- ``roc_<ts>.png``, ``metrics_by_temperature_<ts>.png``,
  ``steering_grid_<ts>.png``;
- ``flipped_examples_<ts>.md``; ``summary_<ts>.md`` and a copy as
  ``summary.md``; ``validation_<ts>_metadata.json``.

Order of work (the steps of ``run``): all inputs are read and checked first
(``_load``), then the cheap statistical part (``_statistics``), then the model
is loaded (``_load_model``) for the reviewer baselines and steering
(``_steer``); the typed result document (``common.datadir.phase3_result.Phase3Result``)
is assembled (``_assemble``) and every output rendered from it (``_render``)
before anything is written (``_write``), so a failure never leaves half an
output. Steering checkpoints and the kept before-generation baselines
(``prompt_confidence.compute_cached``) are removed only after the outputs are written.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import pandas as pd
import torch

from common.config import PipelineConfig, check_option_limits, model_of_phase1
from common.datadir import (
    PHASE3_METADATA,
    PHASE3_OUTPUTS,
    SCHEMA_VERSION,
    Alpha0Check,
    DirectionSteeringResult,
    LatentResult,
    Phase2Null,
    Phase3Configuration,
    Phase3Result,
    ProbeSection,
    RecordCheckpointer,
    RunClock,
    StatisticalSection,
    SteeringSection,
    TopLatent,
    TransferSection,
    build_metadata,
    from_json,
    git_commit,
    json_safe,
    phase3_output_paths,
    phase_dir,
    timestamp,
    to_json,
    write_phase3_result,
)
from common.errors import PipelineError
from common.modeling.generation import GenerationConfig, auto_batch_size
from common.modeling.models import (
    check_gated_access,
    default_dtype,
    load_model_and_tokenizer,
    num_layers,
    resolve_device,
    text_sizes,
)
from common.modeling.steering import transformer_lens_hook_name
from common.prompts import PROMPT_TEMPLATE_VERSION
from common.sandbox.executor import Executor, ExecutorConfig, executor_config_for
from common.tasks import model_slug
from phase3_validation import confounds, plots, prompt_confidence, prompting
from phase3_validation.inputs import Phase3Inputs, SplitTasks, load_inputs
from phase3_validation.probes import MIN_PROBE_CLASS, ProbeResults, evaluate_probes, fit_layer
from phase3_validation.statistical import (
    BASELINE_NOTES,
    MIN_THRESHOLD_CLASS,
    LatentEvaluation,
    split_too_small,
    validate_latents,
)
from phase3_validation.steering_eval import (
    OPPOSITE_RULE,
    SCALE_RULE,
    SELECTION_RULE,
    DirectionSteering,
    SplitBaseline,
    SteeredRun,
    SteeringContext,
    generation_cost,
    outcomes_table,
    rates_with_baselines,
    record_outcomes,
    steer_direction,
    steered_generation,
    steering_row,
)
from phase3_validation.steering_stats import DEGENERATE_RULE, NULL, degenerate_rates
from phase3_validation.summary import render_flipped_examples, render_summary
from phase3_validation.transfer import (
    TransferResults,
    TransferSet,
    load_transfer_set,
    no_run_note,
    transfer_flags,
    transfer_statistics,
)
from phase3_validation.transfer_steering import load_transfer_split, steer_transfer

logger = logging.getLogger(__name__)

DIRECTIONS = ("correct", "incorrect")
CONTROL_TEST_RULE = (f"one-sided within-task permutation test; null: {NULL}; statistic: the target's summed per-task "
                     "effect (+1 moved the predicted way, -1 the other way, 0 unchanged) minus the mean control's; exact "
                     "by convolution (Monte Carlo with its standard error when the effects are not integers); each "
                     "control's own exact paired sign test beside it")
THRESHOLD_RULE = ("best F1 on the hyperparams split among thresholds that split its tasks (predict positive iff "
                  "activation >= threshold); none such: 'no informative threshold', no F1/precision/recall/accuracy")
STEERING_BASELINE = "each split's alpha = 0 rerun (same batches as the steered runs); Phase 1.0 labels beside"
# One rendered output of a run: a table, a page, a figure, or the result document.
Rendered: TypeAlias = pd.DataFrame | str | bytes | Phase3Result


def check_config(cfg: PipelineConfig) -> None:
    """Fail fast, before any input is read or model loaded, on settings Phase 3 cannot use."""
    if not cfg.coefficients:
        raise PipelineError("the steering coefficient grid is empty: give --coefficients, e.g. -1,-0.5,0,0.5,1")
    if len(set(cfg.coefficients)) != len(cfg.coefficients):
        raise PipelineError(f"--coefficients has duplicates: {cfg.coefficients}")
    if not all(np.isfinite(cfg.coefficients)):
        raise PipelineError(f"--coefficients must be finite numbers, got {cfg.coefficients}")
    if not any(a > 0 for a in cfg.coefficients):
        raise PipelineError(f"--coefficients {cfg.coefficients} has no alpha > 0, the sign the hypothesis predicts "
                            "(negative alphas are only the opposite-sign experiment)")
    # The options' own limits (hook point, positions, at least one control, ...) as the config declares them.
    check_option_limits(cfg, "3")


def _split_sizes(split: SplitTasks) -> dict[str, int]:
    correct = split.correct
    return {"n": len(split), "n_correct": int(correct.sum()), "n_incorrect": int((~correct).sum())}


def _require_both_classes(split: SplitTasks) -> None:
    """Thresholds need both classes on hyperparams, every rate needs both on validation (docs/design.md section 7)."""
    sizes = _split_sizes(split)
    for cls in ("correct", "incorrect"):
        if sizes[f"n_{cls}"] == 0:
            raise PipelineError(
                f"the {split.name} split has no {cls} tasks in the Phase 1.0 baseline ({sizes['n_correct']} correct, "
                f"{sizes['n_incorrect']} incorrect of {sizes['n']}): thresholds, AUROC and the "
                f"{'correction' if cls == 'incorrect' else 'corruption'} rate are undefined"
            )


def _latent_entry(ev: LatentEvaluation) -> LatentResult:
    entry = {**ev.latent.to_dict(), "threshold": ev.threshold, "hyperparams_f1": ev.hyperparams_f1, "rows": ev.rows}
    return from_json(LatentResult, entry, ev.latent.name)


def _flags(result: Phase3Result, inputs: Phase3Inputs) -> list[str]:
    """The things a reader must see before any number: null results, failed checks, weak effects."""
    flags = []
    for direction in DIRECTIONS:
        flags += _null_flags(inputs, direction)
    flags += _alpha0_flags(result.steering.alpha0_check)
    for direction, info in result.steering.directions.items():
        flags += _steering_flags(direction, info)
    flags += _degenerate_flags(result)
    flags += [f"{note.capitalize()}." for note in result.small_split_notes]
    flags += transfer_flags(result.transfer)
    probes = result.statistical.probes
    if probes.note and not probes.small_note:
        flags.append(f"Probe baselines: {probes.note}.")
    flags += [f"{flag}." for flag in (result.statistical.reviewer_baselines or {}).get("flags", [])]
    return flags


def _null_flags(inputs: Phase3Inputs, direction: str) -> list[str]:
    """Phase 2's verdict on the direction's rank-1 latent: undecided, beaten by the null, or not recorded."""
    flags = []
    beats = inputs.results.beats_null.get(direction)
    mc = (inputs.results.null_info.get("mc_verdicts") or {}).get(direction) or {}
    if mc.get("decision") == "undecided":
        flags.append(f"Phase 2's rank-1 {direction}-preferring latent is undecided at this number of shuffles "
                     f"(p_family {mc['p']:.3g} +- {mc['mc_se']:.2g}; about {mc.get('more_shuffles_needed')} more "
                     "needed): treat its results as exploratory.")
    elif beats is False:
        flags.append(f"No {direction}-preferring latent beat Phase 2's permutation null: treat its results as exploratory.")
    elif beats is None:
        flags.append(f"Phase 2's results record no permutation-null verdict for {direction}-preferring latents.")
    top = inputs.results.top[direction]
    if top and top[0].separation_score <= 0:
        flags.append(
            f"Phase 2's rank-1 {direction}-preferring latent ({top[0].name}) has separation "
            f"{top[0].separation_score:.3f} <= 0: no latent fires more often on {direction} tasks, "
            f"so this direction has no candidate; its steering is a control, not a test."
        )
    return flags


def _alpha0_flags(checks: dict[str, Alpha0Check]) -> list[str]:
    return [
        f"The alpha = 0 rerun of the {split} split differs from Phase 1.0 in {check.n_programs_changed} "
        f"program(s) and {check.n_label_flips} label(s) of {check.n_tasks} (batching, not steering): "
        "steering rates are measured against the rerun, so these are not counted as effects."
        for split, check in checks.items() if check.n_programs_changed or check.n_label_flips
    ]


def _steering_flags(direction: str, info: DirectionSteeringResult) -> list[str]:
    """A direction's steering on validation: not significant, against the hypothesis, or no better than its controls."""
    flags = []
    v, test = info.validation, info.control_test
    if v["mcnemar_p"] >= 0.05:
        flags.append(f"The {direction}-preferring latent's steering effect on validation is not significant against "
                     f"its alpha = 0 rerun (McNemar p = {v['mcnemar_p']:.3g}).")
    if v["predicted_effect"] < 0:
        flags.append(f"The {direction}-preferring latent's steering on validation goes against the hypothesis "
                     f"(predicted effect {v['predicted_effect']:+.3f}: {v['n_corrected']} corrected, "
                     f"{v['n_corrupted']} corrupted); a small McNemar p here is evidence against it, not for it.")
    if test["p_vs_controls"] >= 0.05:
        flags.append(f"The {direction}-preferring latent's effect on validation is not distinguishable from its "
                     f"{test['n_controls']} random-latent controls at the same alpha and norm (within-task "
                     f"permutation test p = {test['p_vs_controls']:.3g}; it beats {test['n_beaten']} of them on "
                     "the rate difference).")
    if info.grid_hyperparams and max(r["excess_effect"] for r in info.grid_hyperparams) <= 0:
        flags.append(f"No alpha > 0 gave the {direction}-preferring latent an effect above its controls on "
                     "hyperparams: its steering numbers are the least-bad alpha, not an effect.")
    return flags


def _degenerate_flags(result: Phase3Result) -> list[str]:
    """A steered validation run whose generations are mostly degenerate broke the model; its corruption is not wrong code."""
    flags = []
    for direction, info in result.steering.directions.items():
        v = info.validation
        if (v.get("degenerate_rate") or 0) >= 0.5:
            flags.append(f"At the chosen alpha {info.chosen_alpha:g}, {v['n_degenerate']} of {v['n_tasks']} "
                         f"{direction}-preferring steered validation generations are degenerate (no program that parses, "
                         "or one short unit repeated): its corruption measures a broken model, not wrong code; "
                         f"without them the corruption rate is {_share(v)}.")
    return flags


def _share(v: dict[str, Any]) -> str:
    n = v.get("n_initially_correct_nondegenerate") or 0
    return f"{v['n_corrupted_nondegenerate']}/{n}" if n else "undefined (no initially-correct task left)"


def _with_rows(table: pd.DataFrame, rows: list[dict[str, Any]]) -> pd.DataFrame:
    """``table`` with ``rows`` appended (columns only one side has are left empty on the other)."""
    if not rows:
        return table
    return pd.concat([table, pd.DataFrame(rows)], ignore_index=True) if len(table) else pd.DataFrame(rows)


def _diff_means_for(inputs: Phase3Inputs, probes: ProbeResults, direction: str, seed: int
                    ) -> tuple[np.ndarray | None, str | None]:
    """The diff-of-means direction of the direction's latent layer (sae split), or None and why."""
    layer = inputs.results.top[direction][0].layer
    if layer in probes.directions:
        return probes.directions[layer], None
    if inputs.sae is None:
        return None, inputs.sae_note
    small = split_too_small(inputs.sae.correct, "sae", MIN_PROBE_CLASS, "fit a difference-of-means direction")
    if small:
        return None, small
    return fit_layer(inputs, layer, seed).diff_means, None


def _alpha0_notes(inputs: Phase3Inputs, gen_cfg: GenerationConfig, dtype: str) -> list[str]:
    """Known reasons, other than a bug, why the alpha = 0 rerun could differ from Phase 1.0 (shown if it does)."""
    meta = inputs.phase1_meta
    phase1_gen = meta.get("generation") or {}
    notes = []
    if phase1_gen.get("max_new_tokens") not in (None, gen_cfg.max_new_tokens):
        notes.append(f"steering used max_new_tokens {gen_cfg.max_new_tokens}, Phase 1.0 used "
                     f"{phase1_gen['max_new_tokens']}: programs cut at different lengths differ for that reason alone")
    if meta.get("dtype") and meta["dtype"] != dtype:
        notes.append(f"Phase 1.0 ran in {meta['dtype']}, this run in {dtype}: greedy outputs may differ numerically")
    n_phase1 = (meta.get("slice") or {}).get("n_tasks")
    if phase1_gen.get("batch_size") not in (None, gen_cfg.batch_size) or n_phase1 not in (None, len(inputs.validation)):
        notes.append("batches hold other tasks than in Phase 1.0 (different task set or batch size); with left padding "
                     "outputs agree within float tolerance, which in bf16 can flip a rare greedy token")
    return notes


@dataclass
class _Loaded:
    """Everything read and checked before any model loads: inputs, the HumanEval transfer set, the model to steer."""

    cfg: PipelineConfig  # the model and prompt format replaced by Phase 1.0's
    inputs: Phase3Inputs
    transfer_set: TransferSet | None
    transfer_split: SplitTasks | None
    humaneval_source: str | None
    model_note: str


@dataclass
class _Statistics:
    """The cheap CPU part: latents and probes as predictors, the small-split notes, the HumanEval transfer."""

    evaluations: list[LatentEvaluation]
    probes: ProbeResults
    small_notes: list[str]
    transfer: TransferResults


@dataclass
class _Model:
    """The model steered (Phase 1.0's), where it runs, and the greedy generation settings."""

    model: Any
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    gen_cfg: GenerationConfig


@dataclass
class _Steering:
    """Every steered run's results, the alpha = 0 baselines and the prompting baseline."""

    ctx: SteeringContext
    bases: dict[str, SplitBaseline]
    steered: dict[str, DirectionSteering]
    rows: list[dict[str, Any]]
    prompting_result: dict[str, Any]
    prompting_run: SteeredRun


def _load(cfg: PipelineConfig) -> _Loaded:
    """Read and check every input (Phase 1.0/2, the HumanEval run and problems) before any model loads."""
    inputs = load_inputs(cfg)
    for direction in DIRECTIONS:
        if not inputs.results.top[direction]:
            raise PipelineError(f"{inputs.results.path} lists no {direction}-preferring latents: nothing to validate")
    hp, val = inputs.hyperparams, inputs.validation
    _require_both_classes(hp)
    _require_both_classes(val)
    logger.info("phase 3: hyperparams %s, validation %s (from %s)", _split_sizes(hp), _split_sizes(val), inputs.dataset_path)
    phase1_model = inputs.phase1_meta.get("model")
    # The HumanEval run for the transfer section, checked before any work: same model as MBPP's Phase 1.0, or one line.
    transfer_set = load_transfer_set(cfg.data_dir, str(phase1_model))
    # Its problems (test code, entry points) for steering, prompts checked against that run's: before any model loads.
    transfer_split, humaneval_source = (None, None) if transfer_set is None else \
        load_transfer_split(transfer_set, cfg.humaneval_path)
    # Steering must use the model that wrote the Phase 1.0 baseline: the same rule as Phase 2's.
    model_id, model_note = model_of_phase1(cfg.model, None if phase1_model is None else str(phase1_model))
    # Likewise the prompt format: Phase 1.0's, whatever a preset or default put in the config.
    cfg = dataclasses.replace(cfg, model=model_id, prompt_format=val.prompt_format)
    logger.info("phase 3: model %s (%s), %s prompts as Phase 1.0's", model_id, model_note, val.prompt_format)
    return _Loaded(cfg, inputs, transfer_set, transfer_split, humaneval_source, model_note)


def _statistics(loaded: _Loaded) -> _Statistics:
    """Latents and probes as predictors, and their HumanEval transfer (CPU, cheap)."""
    cfg, inputs = loaded.cfg, loaded.inputs
    evaluations = validate_latents(inputs, cfg.top_latents_validated, cfg.bootstrap, cfg.seed)
    probes = evaluate_probes(inputs, cfg.bootstrap, cfg.seed)
    small_notes = [note for note in (split_too_small(inputs.hyperparams.correct, "hyperparams", MIN_THRESHOLD_CLASS,
                                                     "choose a threshold"), probes.small_note) if note]
    for note in small_notes:
        logger.warning("%s; everything else is still computed", note)
    transfer = transfer_statistics(loaded.transfer_set, inputs, evaluations, probes, cfg.bootstrap, cfg.seed, cfg.data_dir)
    transfer.problems_path = None if loaded.humaneval_source is None else Path(loaded.humaneval_source)
    return _Statistics(evaluations, probes, small_notes, transfer)


def _load_model(loaded: _Loaded) -> _Model:
    """The Phase 1.0 model, checked against the latents' layers, and the greedy generation settings."""
    cfg, inputs = loaded.cfg, loaded.inputs
    phase1_gen = _phase1_generation(inputs)
    max_new_tokens = cfg.steering_max_new_tokens or phase1_gen.get("max_new_tokens") or cfg.max_new_tokens
    device = resolve_device(cfg.device)
    dtype = default_dtype(device)
    check_gated_access(cfg.model)  # a gated preset model with no token nor cached copy: the gated line, not "unreachable"
    model, tokenizer = load_model_and_tokenizer(cfg.model, device, dtype)
    for direction in DIRECTIONS:
        layer = inputs.results.top[direction][0].layer
        if not 0 <= layer < num_layers(model):
            raise PipelineError(f"the {direction}-preferring latent's layer {layer} is not a layer of {cfg.model}")
    batch_size = cfg.batch_size or phase1_gen.get("batch_size") or auto_batch_size(model, device)
    gen_cfg = GenerationConfig(max_new_tokens=int(max_new_tokens), batch_size=int(batch_size), temperature=0.0, seed=cfg.seed)
    return _Model(model, tokenizer, device, dtype, gen_cfg)


def _phase1_generation(inputs: Phase3Inputs) -> dict[str, Any]:
    """Phase 1.0's recorded generation settings (empty when it recorded none)."""
    return inputs.phase1_meta.get("generation") or {}


def _checkpoint_root(cfg: PipelineConfig) -> Path:
    """Where Phase 3 keeps what a rerun after a kill reads back: steered runs and the before-generation baselines."""
    return phase_dir(cfg.data_dir, "3") / "checkpoints" / model_slug(cfg.model)


def _reviewer_baselines(loaded: _Loaded, stats: _Statistics, m: _Model) -> dict[str, Any]:
    """The reviewer baselines, with the confidence baselines known before generation (one prompt-only pass)."""
    cfg = loaded.cfg
    prompt_time = prompt_confidence.compute_cached(m.model, m.tokenizer, loaded.inputs, m.gen_cfg.batch_size,
                                                   _checkpoint_root(cfg), cfg.model)
    return confounds.evaluate(loaded.inputs, stats.probes, stats.evaluations, cfg.bootstrap, cfg.seed, prompt_time)


def _steer(loaded: _Loaded, stats: _Statistics, m: _Model, executor_cfg: ExecutorConfig) -> _Steering:
    """Every steered run: the alpha = 0 reruns, both directions, the HumanEval transfer, the prompting baseline."""
    cfg, inputs = loaded.cfg, loaded.inputs
    with Executor(executor_cfg) as executor:
        ctx = SteeringContext(
            model=m.model, tokenizer=m.tokenizer, executor=executor, gen_cfg=m.gen_cfg, hook_point=cfg.hook_point,
            positions=cfg.steer_positions, model_id=cfg.model,
            checkpoint_root=_checkpoint_root(cfg),
            checkpoint_every=cfg.checkpoint_every, autosave_every=cfg.autosave_every, autosave_keep=cfg.autosave_keep,
        )
        zero_layer = _zero_layer(inputs)
        bases = _alpha0_reruns(ctx, inputs, zero_layer, torch.zeros(text_sizes(m.model).d_model))
        steered, rows = _steer_directions(ctx, loaded, stats.probes, bases)
        # Steering transfer: the same vectors, alphas, scales and controls on HumanEval, nothing re-chosen.
        stats.transfer.steering, transfer_rows = steer_transfer(
            ctx, loaded.transfer_split, loaded.transfer_set, steered, zero_layer, str(m.dtype),
            stats.transfer.note or no_run_note(cfg.data_dir))
        rows += transfer_rows
        # Prompting baseline: the same validation problems with a fixed instruction asking for care, no steering.
        prompting_result, prompting_run = prompting.prompting_baseline(ctx, bases["validation"])
        record_outcomes(ctx, "validation", "none", "prompting", 0.0, prompting_run, zero_layer, None, 0.0)
        rows.append(steering_row("prompting", "none", "instruction", zero_layer, None, 0.0, "validation",
                                 prompting_result["rates"], prompting_result["changes_vs_alpha0"], prompting_run,
                                 bases["validation"].correct))
    return _Steering(ctx, bases, steered, rows, prompting_result, prompting_run)


def _zero_layer(inputs: Phase3Inputs) -> int:
    """The layer the zero vector (alpha = 0 reruns, prompting baseline) is added at: the correct latent's."""
    return inputs.results.top["correct"][0].layer


def _alpha0_reruns(ctx: SteeringContext, inputs: Phase3Inputs, zero_layer: int, zero: torch.Tensor
                   ) -> dict[str, SplitBaseline]:
    """The primary baseline: each split rerun at alpha = 0 with exactly the batches its steered runs use."""
    bases = {split.name: SplitBaseline(split, steered_generation(ctx, split, zero_layer, zero, "alpha0"))
             for split in (inputs.hyperparams, inputs.validation)}
    for name, base in bases.items():
        record_outcomes(ctx, name, "none", "alpha0", 0.0, base.rerun, zero_layer, None, 0.0)
    return bases


def _steer_directions(ctx: SteeringContext, loaded: _Loaded, probes: ProbeResults, bases: dict[str, SplitBaseline]
                      ) -> tuple[dict[str, DirectionSteering], list[dict[str, Any]]]:
    """Each direction's rank-1 latent over the alpha grid with its controls (and its diff-of-means baseline)."""
    cfg, inputs = loaded.cfg, loaded.inputs
    steered: dict[str, DirectionSteering] = {}
    rows: list[dict[str, Any]] = []
    for direction in DIRECTIONS:
        dm_direction, dm_note = _diff_means_for(inputs, probes, direction, cfg.seed)
        result, direction_rows = steer_direction(
            ctx, inputs, bases, direction, list(cfg.coefficients), cfg.n_random_controls,
            cfg.control_max_separation, cfg.seed, dm_direction, dm_note,
        )
        rows += direction_rows
        steered[direction] = result
    return steered, rows


def _unsteered_degenerate(steering: _Steering) -> dict[str, dict[str, Any]]:
    """Degenerate outputs without any steering: the floor every steered run's count is read against."""
    bases, run = steering.bases, steering.prompting_run
    unsteered = {f"{name} alpha = 0 rerun": degenerate_rates(base.correct, base.correct, base.rerun.degenerate)
                 for name, base in bases.items()}
    unsteered["validation prompting baseline"] = degenerate_rates(bases["validation"].correct, run.correct, run.degenerate)
    return unsteered


def _alpha0_checks(steering: _Steering, notes: list[str], zero_layer: int) -> dict[str, dict[str, Any]]:
    """How each split's alpha = 0 rerun differs from Phase 1.0; its steering-table row is appended as well."""
    checks: dict[str, dict[str, Any]] = {}
    for name, base in steering.bases.items():
        changes = base.versus_phase1()
        checks[name] = {**changes, "notes": notes}
        zero_rates = rates_with_baselines(base.correct, base.split.correct, base.correct, f"{name} split, alpha 0")
        steering.rows.append(steering_row("alpha0", "none", "zero", zero_layer, None, 0.0, name, zero_rates,
                                          changes, base.rerun, base.correct))
    return checks


def _configuration(loaded: _Loaded, stats: _Statistics, m: _Model, executor_cfg: ExecutorConfig,
                   reviewer: dict[str, Any]) -> Phase3Configuration:
    """What the run used (also the metadata's extra fields)."""
    cfg, inputs = loaded.cfg, loaded.inputs
    top = inputs.results.top
    layers = sorted({ev.latent.layer for ev in stats.evaluations} | {top[d][0].layer for d in DIRECTIONS})
    phase1_gen = _phase1_generation(inputs)
    return Phase3Configuration(
        model=cfg.model, model_choice=loaded.model_note, phase1_model=inputs.phase1_meta.get("model"),
        device=str(m.device), dtype=str(m.dtype), sae_source=inputs.results.sae_source.to_dict(),
        sae_ids={str(layer): inputs.results.sae_source.describe(layer) for layer in layers},
        split_sizes={"hyperparams": _split_sizes(inputs.hyperparams), "validation": _split_sizes(inputs.validation)},
        seed=cfg.seed, bootstrap=cfg.bootstrap, top_latents_validated=cfg.top_latents_validated,
        coefficients=list(cfg.coefficients), hook_point=cfg.hook_point,
        hook_names={d: transformer_lens_hook_name(top[d][0].layer, cfg.hook_point) for d in DIRECTIONS},
        steer_positions=cfg.steer_positions, n_random_controls=cfg.n_random_controls,
        control_max_separation=cfg.control_max_separation, max_new_tokens=m.gen_cfg.max_new_tokens,
        phase1_max_new_tokens=phase1_gen.get("max_new_tokens"), batch_size=m.gen_cfg.batch_size,
        phase1_batch_size=phase1_gen.get("batch_size"), prompt_template_version=PROMPT_TEMPLATE_VERSION,
        prompt_format=inputs.validation.prompt_format, executor=executor_cfg.to_dict(), git_commit=git_commit(),
        prompting_instruction=prompting.INSTRUCTION,
        # The question behind the self-assessment baseline (a confidence baseline known before generation).
        self_assessment_prompt=(reviewer.get("prompt_time") or {}).get("self_assessment_template"),
    )


def _statistical_section(loaded: _Loaded, stats: _Statistics, reviewer: dict[str, Any]) -> StatisticalSection:
    temperature = loaded.inputs.temperature
    return StatisticalSection(
        threshold_rule=THRESHOLD_RULE, baselines=BASELINE_NOTES, temperatures=temperature.temperatures,
        temperature_note=temperature.note, latents=[_latent_entry(ev) for ev in stats.evaluations],
        probes=from_json(ProbeSection, stats.probes.to_dict(), "probes"), reviewer_baselines=reviewer,
    )


def _steering_section(cfg: PipelineConfig, steering: _Steering, alpha0_check: dict[str, dict[str, Any]]
                      ) -> SteeringSection:
    return SteeringSection(
        selection_rule=SELECTION_RULE, opposite_sign_rule=OPPOSITE_RULE, baseline=STEERING_BASELINE,
        scale_rule=SCALE_RULE, control_test_rule=CONTROL_TEST_RULE, degenerate_rule=DEGENERATE_RULE,
        position_policy=cfg.steer_positions,
        directions={d: from_json(DirectionSteeringResult, s.to_dict(), d) for d, s in steering.steered.items()},
        alpha0_check={name: from_json(Alpha0Check, check, name) for name, check in alpha0_check.items()},
        prompting_baseline=steering.prompting_result, unsteered_degenerate=_unsteered_degenerate(steering),
    )


def _assemble(loaded: _Loaded, stats: _Statistics, steering: _Steering, alpha0_check: dict[str, dict[str, Any]],
              configuration: Phase3Configuration, reviewer: dict[str, Any], stamp: str, paths: dict[str, Path]
              ) -> Phase3Result:
    """The typed result document (values as computed, before ``json_safe``), its read-first flags included."""
    inputs = loaded.inputs
    results = inputs.results
    result = Phase3Result(
        schema_version=SCHEMA_VERSION, phase="3", timestamp=stamp, configuration=configuration,
        inputs={k: str(v) for k, v in _input_paths(loaded, stats).items()},
        phase2_null=Phase2Null({**results.null_info, "beats_null": results.beats_null}),
        phase2_top={d: (from_json(TopLatent, results.top[d][0].to_dict(), d) if results.top[d] else None)
                    for d in DIRECTIONS},
        statistical=_statistical_section(loaded, stats, reviewer), small_split_notes=stats.small_notes,
        transfer=from_json(TransferSection, stats.transfer.to_dict(), "transfer"),
        steering=_steering_section(loaded.cfg, steering, alpha0_check),
        outputs={k: str(v) for k, v in paths.items() if k != "metadata"},
    )
    result.flags = _flags(result, inputs)
    return result


def _input_paths(loaded: _Loaded, stats: _Statistics) -> dict[str, Path]:
    return {**loaded.inputs.input_paths(), **stats.transfer.input_paths()}


def _render(raw: Phase3Result, result: Phase3Result, stats: _Statistics, steering: _Steering,
            paths: dict[str, Path]) -> dict[str, Rendered]:
    """Every output, rendered before anything is written: a failure here leaves no partial output."""
    evaluations, transfer = stats.evaluations, stats.transfer
    metrics = pd.DataFrame([row for ev in evaluations for row in ev.rows])
    probe_metrics = pd.DataFrame([row for ev in stats.probes.evaluations for row in ev.rows])
    # The HumanEval transfer rows (split "humaneval") beside MBPP's, for readers of the tables.
    metrics = _with_rows(metrics, transfer.latents)
    probe_metrics = _with_rows(probe_metrics, transfer.probes)
    figures = {
        "roc_png": plots.roc_curves(evaluations),
        "metrics_by_temperature_png": plots.metrics_by_temperature(metrics),
        "steering_grid_png": plots.steering_grid(raw.steering.directions),  # the values as computed, NaN included
    }
    if "coverage_png" in paths:
        figures["coverage_png"] = plots.coverage_accuracy(result.statistical.reviewer_baselines["coverage"])
    flipped_text = render_flipped_examples(result, {d: s.flipped for d, s in steering.steered.items()})
    summary_text = render_summary(result)
    return {
        "metrics": metrics, "steering": pd.DataFrame(steering.rows), "steering_outcomes": outcomes_table(steering.ctx),
        "probe_metrics": probe_metrics, **figures, "flipped_examples": flipped_text, "validation": result,
        "summary": summary_text, "summary_latest": summary_text,
    }


def _write(clock: RunClock, loaded: _Loaded, stats: _Statistics, m: _Model, steering: _Steering,
           rendered: dict[str, Rendered], raw: Phase3Result, paths: dict[str, Path]) -> None:
    """Write every output (each atomically), then the metadata with the configuration as computed."""
    for name, content in rendered.items():
        if isinstance(content, Phase3Result):
            write_phase3_result(paths[name], content)
        else:
            PHASE3_OUTPUTS[name].write(content, paths[name])
    meta = build_metadata(
        "3", loaded.cfg, clock, inputs=_input_paths(loaded, stats),
        outputs={k: v for k, v in paths.items() if k != "metadata"},
        extra={**to_json(raw.configuration), "generation": dataclasses.asdict(m.gen_cfg), "flags": raw.flags,
               "generation_cost": generation_cost(steering.ctx)},
    )
    PHASE3_METADATA.write(meta, paths["metadata"])


def _clear_checkpoints(ctx: SteeringContext) -> None:
    """Steering checkpoints go only once the outputs are written (a crash before keeps them for the rerun)."""
    for folder in sorted(ctx.folders):
        RecordCheckpointer(folder).clear()
    prompt_confidence.clear_cache(ctx.checkpoint_root)
    for folder in (ctx.checkpoint_root, ctx.checkpoint_root.parent):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def run(cfg: PipelineConfig) -> Path:
    """Run Phase 3; return the path of the summary written."""
    clock = RunClock()
    check_config(cfg)
    loaded = _load(cfg)
    stats = _statistics(loaded)
    m = _load_model(loaded)
    reviewer = _reviewer_baselines(loaded, stats, m)
    executor_cfg = executor_config_for(loaded.cfg)
    steering = _steer(loaded, stats, m, executor_cfg)
    notes = _alpha0_notes(loaded.inputs, m.gen_cfg, str(m.dtype))
    alpha0_check = _alpha0_checks(steering, notes, _zero_layer(loaded.inputs))
    stamp = timestamp()
    paths = phase3_output_paths(loaded.cfg.data_dir, stamp, coverage=bool(reviewer.get("coverage")))
    configuration = _configuration(loaded, stats, m, executor_cfg, reviewer)
    raw = _assemble(loaded, stats, steering, alpha0_check, configuration, reviewer, stamp, paths)
    # The document as it is written (NaN as null): the summary and the file say the same thing.
    result = from_json(Phase3Result, json_safe(to_json(raw)))
    rendered = _render(raw, result, stats, steering, paths)
    _write(clock, loaded, stats, m, steering, rendered, raw, paths)
    if loaded.cfg.keep_generations:
        logger.info("phase 3: generations kept for a rerun (--keep-generations) in %s", steering.ctx.checkpoint_root)
    else:
        _clear_checkpoints(steering.ctx)
    logger.info("phase 3: summary -> %s", paths["summary"])
    return paths["summary"]
