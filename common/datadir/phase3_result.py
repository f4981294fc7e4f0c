"""Phase 3's result document (``validation_<ts>.json``) as typed, versioned dataclasses (docs/outputs.md).

Why typed: the summary, the figures, the sweep's table and the study report
all read this one document. When each read it by string keys, a key renamed
on the writing side broke a reader only when that reader ran (the sweep, days
later, on a cluster). Here the skeleton every reader relies on is declared
once; reading a file checks it against that skeleton and its schema version,
so a stale or foreign file is one line, before any reader looks inside.

Why it lives in ``common/``: the sweep and the study report import no phase
package, and they read this document too.

What is typed and what is not: every section with fixed keys is a dataclass.
The parts whose keys depend on what was measured (one row of metrics, a
steering grid row, the reviewer baselines, Phase 2's null section as Phase 2
wrote it) stay JSON objects (``JsonObject``); their fields are those of the
tables and modules that make them, described in docs/outputs.md.

On disk the document is exactly ``to_json(result)`` after ``json_safe`` (NaN
and infinities as null), with the fields in declaration order, so the JSON
is the document Phase 3 wrote before it was typed, plus ``schema_version``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Union

# Version 1: the document as Phase 3 wrote it when the version field was added. A file without
# ``schema_version`` (written before) is read as version 1 when its keys are version 1's.
SCHEMA_VERSION = 1

JsonObject = dict[str, Any]


class Phase3ResultError(ValueError):
    """A JSON object that is not a Phase 3 result document of this schema (the reader turns it into one line)."""


@dataclass
class TopLatent:
    """A latent as Phase 2 ranked it (``phase2_top``, a steering target)."""

    direction: str
    rank: int
    layer: int
    latent: int
    separation_score: float
    p_family: float | None
    f_correct: float
    f_incorrect: float


@dataclass
class LatentResult(TopLatent):
    """One validated latent: Phase 2's ranking (the fields of :class:`TopLatent`), the hyperparams threshold,
    and its metric rows."""

    threshold: float | None
    hyperparams_f1: float | None
    rows: list[JsonObject]  # one row per split x temperature: the columns of metrics_<ts>.parquet

    def validation_row(self) -> JsonObject | None:
        """The validation split's row at temperature 0 (the reported one), or None when absent."""
        return validation_row(self.rows)


@dataclass
class ProbeEntry:
    """One probe (kind, layer, positive class) with its threshold and metric rows."""

    probe: str
    layer: int
    positive_class: str
    threshold: float | None
    threshold_note: str | None
    rows: list[JsonObject]  # the columns of probe_metrics_<ts>.parquet

    def validation_row(self) -> JsonObject | None:
        return validation_row(self.rows)


@dataclass
class ProbeSection:
    """The raw-residual probe baselines: rules, the best layer per kind and class, every probe."""

    rules: dict[str, str]
    best_layer_rule: str
    note: str | None
    small_note: str | None
    best_layer: dict[str, dict[str, int]]  # probe kind -> positive class -> layer (chosen on hyperparams)
    chosen_c: dict[str, float]  # layer (as text) -> the logistic probe's C
    probes: list[ProbeEntry]

    def find(self, kind: str, positive: str, layer: int) -> ProbeEntry | None:
        return next((p for p in self.probes if (p.probe, p.positive_class, p.layer) == (kind, positive, layer)), None)


@dataclass
class StatisticalSection:
    """Section 2: latents and probes as predictors, and the reviewer baselines."""

    threshold_rule: str
    baselines: dict[str, str]
    temperatures: list[float]
    temperature_note: str | None
    latents: list[LatentResult]
    probes: ProbeSection
    reviewer_baselines: JsonObject  # phase3_validation/confounds.py: predictors, confounds, coverage, verdicts, flags


@dataclass
class TransferSection:
    """The HumanEval transfer: MBPP's latents, thresholds and probes scored unchanged, and its steering half."""

    benchmark: str
    measured: bool
    note: str | None
    rule: str
    dataset: str | None
    model: str | None
    prompt_template_version: str | None
    slice: JsonObject | None
    sizes: dict[str, int]
    latents: list[JsonObject]
    probes: list[JsonObject]
    probe_note: str | None
    steering: JsonObject  # {"measured": false, "note": ...} or phase3_validation/transfer_steering.py's section


@dataclass
class DirectionSteeringResult:
    """One direction's steering: the rank-1 latent, its alpha grid, validation numbers and controls."""

    target: TopLatent
    hypothesis: str
    hook_name: str
    residual_norm: float
    scale_layer: int | None
    saved_layer_norm: float | None
    scale_rule: str
    selection_rule: str
    chosen_alpha: float
    grid_hyperparams: list[JsonObject]
    validation: JsonObject
    control_test: JsonObject
    opposite_sign: JsonObject
    diff_means: JsonObject | None
    diff_means_note: str | None
    control_selection: JsonObject
    flipped_example_task_ids: dict[str, list[int]]


@dataclass
class Alpha0Check:
    """How a split's alpha = 0 rerun differs from Phase 1.0 (the baseline of every steering rate)."""

    n_programs_changed: int
    n_generations_changed: int
    n_label_flips: int
    n_label_flips_same_program: int
    changed_task_ids: list[int]
    n_tasks: int
    notes: list[str]


@dataclass
class SteeringSection:
    """Section 3: the rules, each direction's steering, the alpha = 0 checks, the prompting baseline."""

    selection_rule: str
    opposite_sign_rule: str
    baseline: str
    scale_rule: str
    control_test_rule: str
    degenerate_rule: str
    position_policy: str
    directions: dict[str, DirectionSteeringResult]
    alpha0_check: dict[str, Alpha0Check]
    prompting_baseline: JsonObject
    unsteered_degenerate: dict[str, JsonObject]


@dataclass
class Phase2Null:
    """Phase 2's permutation-null section exactly as Phase 2 wrote it (its keys are Phase 2's), read by name here."""

    document: JsonObject

    @property
    def beats_null(self) -> dict[str, bool | None]:
        return self.document.get("beats_null") or {}

    @property
    def mc_verdicts(self) -> dict[str, JsonObject | None]:
        return self.document.get("mc_verdicts") or {}

    @property
    def n_permutations(self) -> Any:
        return self.document.get("n_permutations")

    @property
    def n_latents_in_family(self) -> Any:
        return self.document.get("n_latents_in_family")

    @property
    def seed(self) -> Any:
        return self.document.get("seed")

    @property
    def verdict(self) -> str | None:
        return self.document.get("verdict")

    def to_json_object(self) -> JsonObject:
        return self.document

    @classmethod
    def from_json_object(cls, value: Any, where: str) -> Phase2Null:
        if not isinstance(value, dict):
            raise Phase3ResultError(f"{where} is not a JSON object")
        return cls(value)


@dataclass
class Phase3Configuration:
    """What the run used: model, SAEs, split sizes, seeds, grid, hook, generation settings, commit."""

    model: str
    model_choice: str
    phase1_model: str | None
    device: str
    dtype: str
    sae_source: JsonObject
    sae_ids: dict[str, dict[str, str]]  # layer (as text) -> the SAE's description
    split_sizes: dict[str, dict[str, int]]
    seed: int
    bootstrap: int
    top_latents_validated: int
    coefficients: list[float]
    hook_point: str
    hook_names: dict[str, str]
    steer_positions: str
    n_random_controls: int
    control_max_separation: float
    max_new_tokens: int
    phase1_max_new_tokens: int | None
    batch_size: int
    phase1_batch_size: int | None
    prompt_template_version: str
    prompt_format: str
    executor: JsonObject
    git_commit: str | None
    prompting_instruction: str
    self_assessment_prompt: str | None


@dataclass
class Phase3Result:
    """The whole ``validation_<ts>.json``: everything machine-readable; the summary is rendered from it."""

    schema_version: int
    phase: str
    timestamp: str
    configuration: Phase3Configuration
    inputs: dict[str, str]
    phase2_null: Phase2Null
    phase2_top: dict[str, TopLatent | None]
    statistical: StatisticalSection
    small_split_notes: list[str]
    transfer: TransferSection
    steering: SteeringSection
    outputs: dict[str, str]
    flags: list[str] = field(default_factory=list)


def validation_row(rows: list[JsonObject]) -> JsonObject | None:
    """The validation split's temperature-0 row of a metric-row list (the reported one), or None."""
    return next((r for r in rows if r.get("split") == "validation" and r.get("temperature") == 0.0), None)


# --------------------------------------------------------------------------- JSON <-> dataclasses


def to_json(value: Any) -> Any:
    """The JSON form: dataclasses as objects with their fields in declaration order (NaN left for ``json_safe``)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        custom = getattr(value, "to_json_object", None)
        if custom is not None:
            return to_json(custom())
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    return value


T = typing.TypeVar("T")


def from_json(cls: type[T], value: Any, where: str = "the document") -> T:
    """``cls`` built from its JSON form; every dataclass level must have exactly its declared keys."""
    return typing.cast(T, _convert(cls, value, where))


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _convert(options[0], value, where)
    if dataclasses.is_dataclass(tp):
        return _dataclass(tp, value, where)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise Phase3ResultError(f"{where} is not a JSON list")
        (item,) = typing.get_args(tp)
        return [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise Phase3ResultError(f"{where} is not a JSON object")
        _, item = typing.get_args(tp)
        return {k: _convert(item, v, f"{where}.{k}") for k, v in value.items()}
    return value  # a JSON leaf or a free-form JSON object, kept as it is


def _dataclass(cls: Any, value: Any, where: str) -> Any:
    custom = getattr(cls, "from_json_object", None)
    if custom is not None:
        return custom(value, where)
    if not isinstance(value, dict):
        raise Phase3ResultError(f"{where} is not a JSON object")
    fields = dataclasses.fields(cls)
    names = [f.name for f in fields]
    missing = [n for n in names if n not in value]
    unexpected = [k for k in value if k not in names]
    if missing or unexpected:
        what = f"lacks {missing[0]!r}" if missing else f"has an unexpected key {unexpected[0]!r}"
        raise Phase3ResultError(f"{where} {what}")
    hints = typing.get_type_hints(cls)
    return cls(**{n: _convert(hints[n], value[n], f"{where}.{n}") for n in names})
