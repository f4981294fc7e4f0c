"""The pipeline's configuration: one dataclass whose fields are also the CLI's options.

Why one flat dataclass: every phase records the *whole* resolved config in its
metadata, so a result file always says exactly what produced it. Precedence is
defaults < environment (``PVA_DATA_DIR``, ``PVA_MBPP_PATH``, ``PVA_HUMANEVAL_PATH``) < command line,
as in lm-evaluation-harness.

Why each field carries its own help, flag and scope: ``run.py`` builds every
option from these fields, so ``--help``, the flag table in docs/options.md (checked
by a test) and the code cannot disagree, and an option given to a command it means
nothing to (``phase 0 --start 3``) is refused rather than silently ignored.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.benchmarks import BENCHMARKS, get_benchmark
from common.phases import PHASES, phase_keys

DEFAULT_MODEL = "google/gemma-2-2b"

# The commands an option can belong to: the phases (by key, from the registry in common/phases.py) and the tools.
GENERATING_PHASES = tuple(p.key for p in PHASES if p.generates)
ALL_PHASES = phase_keys()
MODEL_PHASES = tuple(p.key for p in PHASES if p.on_model)  # the phases that run on a model (take --model)
EVERY_COMMAND = "*"
# Fewer SAE training tokens leave no whole text to hold out for the held-out FVU and L0 (common/saes/training.py).
MIN_TRAIN_TOKENS = 1000


def option(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    scope: tuple[str, ...] | str,
    flag: str | None = None,
    choices: tuple[str, ...] | None = None,
    minimum: float | None = None,
    above: float | None = None,
    maximum: float | None = None,
    group: str = "",
    default_factory: Callable[[], Any] | None = None,
    repeatable: bool = False,
) -> Any:
    """A config field that is also a command-line option.

    ``scope`` names the commands (phase numbers, tool names, or ``"*"``) where the
    option means something; anywhere else run.py refuses it. ``minimum`` is the
    smallest accepted value of a number (or of each number in a list), ``above``
    a bound the numbers must exceed (for rules like "temperature > 0", so the
    parser's message and the rule say the same); lists must not be empty. ``maximum`` is the largest accepted value
    (applied by :func:`check_option_limits`). ``flag`` overrides the default ``--field-name``. A
    ``repeatable`` option of a list type is given once per value.
    """
    metadata = {
        "help": help,
        "scope": (scope,) if isinstance(scope, str) else tuple(scope),
        "flag": flag,
        "choices": choices,
        "minimum": minimum,
        "above": above,
        "maximum": maximum,
        "group": group,
        "repeatable": repeatable,
    }
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class PipelineConfig:
    """Every knob of every phase; each field's metadata is its command-line option."""

    # Global: every command.
    data_dir: str = option("data", help="data directory for all outputs (env PVA_DATA_DIR)", scope=EVERY_COMMAND)
    mbpp_path: str | None = option(
        None, help="local MBPP file, original jsonl or parquet (env PVA_MBPP_PATH; default: the hub)", scope=EVERY_COMMAND
    )
    humaneval_path: str | None = option(
        None, help="local HumanEval.jsonl.gz or jsonl of the original release (env PVA_HUMANEVAL_PATH; default: the hub; "
        "phase 3's steering transfer: the file the HumanEval Phase 1 run recorded)",
        scope=("1", "1.2", "3", "check-humaneval", "label"), group="benchmarks",
    )
    seed: int = option(42, help="random seed for splits, sampling and shuffles", scope=EVERY_COMMAND, minimum=0)
    device: str = option("auto", help="auto, cpu, cuda or cuda:N", scope=EVERY_COMMAND)

    input: str | None = option(
        None, help="use this earlier-phase output instead of the newest one", scope=ALL_PHASES[1:], group="phases"
    )

    dataset: str = option(
        "mbpp", help="benchmark to generate for (or, for label, to judge against); humaneval writes under "
        "<data dir>/humaneval/ (Phase 3 reads its Phase 1 run for transfer, not its Phase 1.2)",
        scope=("1", "1.2", "label"), choices=tuple(BENCHMARKS), group="benchmarks",
    )

    # Phase 0.1: split
    split_fractions: list[float] = option(
        help="sae,hyperparams,validation fractions", scope="0.1", above=0.0, group="phase 0.1 (split)",
        default_factory=lambda: [0.5, 0.1, 0.4],
    )
    n_strata: int = option(4, help="difficulty strata, quantiles of complexity", scope="0.1", minimum=1, group="phase 0.1 (split)")

    # Phases 1.0 / 1.2: generation (and Phase 3's steered generation)
    model: str = option(
        DEFAULT_MODEL,
        help="preset (see run.py models), hub id or local model folder (Phases 2 and 3: Phase 1's model when left at the default)",
        scope=(*MODEL_PHASES, "test-gpu", "train-saes"), group="generation",
    )
    start: int | None = option(
        None, help="first task position, inclusive: positions count among all tasks sorted by task_id, in every phase "
        "(Phase 1.2 runs the validation tasks inside start..end) (default 0)",
        scope=GENERATING_PHASES, minimum=0, group="generation",
    )
    end: int | None = option(
        None, help="last task position, inclusive, counted as --start (default: the last task)", scope=GENERATING_PHASES, minimum=0,
        group="generation",
    )
    layers: list[int] | None = option(
        None, help="layers to capture, analyse or train SAEs for, e.g. 0,6,12 (default: all, or a preset's SAE layers)",
        scope=("1", "1.2", "2", "train-saes"), minimum=0,
        group="generation",
    )
    batch_size: int | None = option(
        None, help="prompts per batch (default: from free GPU memory; 8 on CPU; test-gpu: 2)",
        scope=("1", "1.2", "3", "test-gpu"), minimum=1, group="generation",
    )
    max_new_tokens: int = option(512, help="generation budget per solution", scope=("1", "1.2", "3"), minimum=1, group="generation")
    workers: int = option(
        4, help="CPU workers that run the tests", scope=("1", "1.2", "3", "check-mbpp", "check-humaneval", "label"), minimum=1, group="generation"
    )
    timeout_s: float = option(
        30.0, help="wall (and CPU) seconds per test program", scope=("1", "1.2", "3", "check-mbpp", "check-humaneval", "label"), flag="--timeout",
        minimum=0.1, group="generation",
    )
    memory_mb: int = option(
        4096, help="address-space limit per test program, MB", scope=("1", "1.2", "3", "check-mbpp", "check-humaneval", "label"), minimum=64,
        group="generation",
    )
    temperatures: list[float] = option(
        help="Phase 1.2 sampling temperatures", scope="1.2", above=0.0, group="generation",
        default_factory=lambda: [0.3, 0.6, 0.9, 1.2],
    )
    samples_per_task: int = option(5, help="Phase 1.2 samples per task and temperature", scope="1.2", minimum=1, group="generation")
    # Set by multi_gpu_launcher.py: a worker writes its slice's table here, not as a dataset.
    shard_dir: str | None = option(
        None, help="(set by multi_gpu_launcher.py) write this slice's table here", scope=GENERATING_PHASES, group="generation"
    )
    checkpoint_every: int = option(
        50, help="records between checkpoints", scope=("1", "1.2", "3"), minimum=1, group="generation"
    )
    autosave_every: int = option(
        100, help="records between full autosaves", scope=("1", "1.2", "3"), minimum=1, group="generation"
    )
    autosave_keep: int = option(3, help="autosaves kept (the newest)", scope=("1", "1.2", "3"), minimum=1, group="generation")

    # run.py label: re-score existing generations (jsonl/parquet with task_id, generated_text)
    generations: str | None = option(
        None, help="jsonl or parquet file with task_id and generated_text to label (required)", scope="label", group="label"
    )
    label_output: str | None = option(
        None, help="where run.py label writes its table (default: <input>_labelled.<ext>; inside a data directory, in its labels/ folder)", scope="label", flag="--output",
        group="label",
    )

    # Phase 2: SAE analysis
    split: str = option(
        "sae", help="which split to analyse", scope="2", choices=("sae", "validation"), group="phase 2 (SAE analysis)"
    )
    sae_release: str = option(
        "gemma-scope-2b-pt-res-canonical", help="SAE Lens release (Phase 3 reads it from the Phase 2 results)", scope="2",
        group="phase 2 (SAE analysis)",
    )
    sae_id_template: str = option(
        "layer_{layer}/width_{width}/canonical", help="SAE id, with {layer} and {width} filled in", scope="2",
        group="phase 2 (SAE analysis)",
    )
    sae_width: str = option("16k", help="SAE width in the id", scope="2", group="phase 2 (SAE analysis)")
    sae_path: str | None = option(
        None, help="local folder with one SAE Lens folder per layer, named layer_{L} (Phase 3: a local copy of the SAEs "
        "Phase 2 used; sweep: {model} is replaced by each model's short name)",
        scope=("2", "3", "sweep"),
        group="phase 2 (SAE analysis)",
    )
    top_k: int = option(20, help="latents ranked per direction", scope="2", minimum=1, group="phase 2 (SAE analysis)")
    permutations: int = option(
        2000, help="label shuffles of the permutation null (2000: Monte Carlo error decides every p outside "
        "0.04-0.06)", scope="2", minimum=1, group="phase 2 (SAE analysis)"
    )
    general_corpus: str | None = option(
        None, help="local .txt or .jsonl for the general-text filter (default: NeelNanda/pile-10k)", scope="2",
        group="phase 2 (SAE analysis)",
    )
    general_filter: bool = option(
        True, help="do not drop latents that fire on general text", scope="2", flag="--no-general-filter",
        group="phase 2 (SAE analysis)",
    )
    general_filter_threshold: float = option(
        0.02, help="drop latents firing on at least this share of general tokens (above 0: at 0 every latent "
        "is dropped; at most 1)", scope="2", above=0.0, maximum=1.0,
        group="phase 2 (SAE analysis)",
    )
    general_corpus_samples: int = option(
        200, help="documents drawn from the general corpus", scope="2", minimum=1, group="phase 2 (SAE analysis)"
    )
    general_corpus_tokens: int = option(
        128, help="tokens kept per general-corpus document", scope="2", minimum=1, group="phase 2 (SAE analysis)"
    )

    # Phase 3: validation
    coefficients: list[float] = option(
        help="steering coefficients in units of the mean residual norm; alpha > 0 is searched, alpha < 0 is the separate "
        "opposite-sign experiment; at least one alpha > 0", scope="3", group="phase 3 (validation)",
        default_factory=lambda: [-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0],
    )
    hook_point: str = option(
        "resid_post", help="where the steering vector is added; alpha is scaled by the mean residual norm measured there "
        "(a forward pass over the hyperparams prompts, last prompt token), at any of the three sites", scope="3",
        choices=("resid_pre", "resid_mid", "resid_post"), group="phase 3 (validation)",
    )
    steer_positions: str = option(
        "all", help="steer prompt tokens only, or every token", scope="3", choices=("prompt", "all"),
        group="phase 3 (validation)",
    )
    n_random_controls: int = option(
        3, help="random near-zero-separation control latents, at least 1: every steering effect is tested "
        "against its controls (docs/design.md rule 8)", scope="3", minimum=1, group="phase 3 (validation)"
    )
    control_max_separation: float = option(
        0.01, help="largest |separation| a random control latent may have", scope="3", minimum=0.0,
        group="phase 3 (validation)",
    )
    bootstrap: int = option(1000, help="bootstrap resamples for AUROC intervals", scope="3", minimum=1, group="phase 3 (validation)")
    top_latents_validated: int = option(
        5, help="top latents per direction given the statistical validation", scope="3", minimum=1,
        group="phase 3 (validation)",
    )
    steering_max_new_tokens: int | None = option(
        None, help="generation budget of steered runs (default: Phase 1's)", scope="3", minimum=1,
        group="phase 3 (validation)",
    )
    keep_generations: bool = option(
        False, help="keep the steered runs' checkpoints and the before-generation baselines after the outputs are "
        "written, so a later rerun with the same settings (after a fix to the statistics, say) reads them back "
        "instead of generating again", scope="3", group="phase 3 (validation)",
    )

    # Model presets and SAE training (common/modeling/model_presets.py, common/saes/training.py)
    model_preset: str | None = option(
        None, help="(derived, not an option) the preset --model named, which chose model, SAEs and layers", scope=(),
    )
    prompt_format: str = option(
        "plain", help="plain prompt, or one user turn of the tokenizer's chat template (a preset sets it; HumanEval: "
        "plain completes the release's prompt, chat is EvalPlus's instruction format); Phase 1.2 "
        "uses the format Phase 1.0 recorded when there is a Phase 1.0 run, Phase 3 always",
        scope=GENERATING_PHASES, choices=("plain", "chat"), group="generation",
    )
    train_output: str | None = option(
        None, help="folder for the layer_{L} SAE folders that --sae-path reads (required)", scope="train-saes",
        flag="--output", group="train-saes",
    )
    train_corpus: list[str] | None = option(
        None, help="local .txt/.jsonl files, comma separated (default: pile-10k from the hub plus MBPP prompts with code)",
        scope="train-saes", flag="--corpus", group="train-saes",
    )
    train_width: int | None = option(
        None, help="latents per SAE (default 4 x d_model)", scope="train-saes", flag="--width", minimum=1, group="train-saes"
    )
    train_tokens: int = option(
        2_000_000, help=f"training tokens per SAE; the corpus is read up to this many and cycled if shorter (at "
        f"least {MIN_TRAIN_TOKENS}, so that whole texts can be held out to measure each SAE)",
        scope="train-saes", flag="--tokens", minimum=MIN_TRAIN_TOKENS, group="train-saes",
    )

    # Cluster: `run.py sweep` (multi_gpu_launcher.py has the same SLURM flags of its own).
    models: list[str] | None = option(
        None, help="models, comma-separated: presets, model folders or hub ids (required)", scope="sweep", group="sweep"
    )
    backend: str = option(
        "local", help="local (steps in sequence here) or slurm (dependent jobs through submitit)", scope="sweep",
        choices=("local", "slurm"), group="sweep",
    )
    partition: str | None = option(None, help="SLURM partition (default: the cluster's default)", scope="sweep", group="sweep")
    account: str | None = option(None, help="SLURM account to charge", scope="sweep", group="sweep")
    slurm_time: str | None = option(
        None, help="SLURM time limit per job, e.g. 12:00:00 (default 1-00:00:00)", scope="sweep", flag="--time", group="sweep"
    )
    mem: str | None = option(None, help="SLURM memory per job, e.g. 64G", scope="sweep", group="sweep")
    gpus_per_task: int | None = option(
        None, help="SLURM GPUs per job (default 0: CPU jobs)", scope="sweep", minimum=0, group="sweep"
    )
    cpus_per_task: int | None = option(None, help="SLURM CPU cores per job", scope="sweep", minimum=1, group="sweep")
    slurm_extra: list[str] | None = option(
        None, help="any other sbatch option as KEY=VALUE (repeatable)", scope="sweep", repeatable=True, group="sweep"
    )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PipelineConfig:
        _refuse_unknown(values)
        return cls(**values)

    @classmethod
    def from_overrides(cls, overrides: dict[str, Any]) -> PipelineConfig:
        """Defaults, then environment, then the non-None CLI values in ``overrides``.

        Unknown keys are refused: a misspelt key silently ignored would run the
        default while the user believes otherwise.
        """
        _refuse_unknown(overrides)
        cfg = cls()
        if os.environ.get("PVA_DATA_DIR"):
            cfg.data_dir = os.environ["PVA_DATA_DIR"]
        if os.environ.get("PVA_MBPP_PATH"):
            cfg.mbpp_path = os.environ["PVA_MBPP_PATH"]
        if os.environ.get("PVA_HUMANEVAL_PATH"):
            cfg.humaneval_path = os.environ["PVA_HUMANEVAL_PATH"]
        for key, value in overrides.items():
            if value is not None:
                setattr(cfg, key, value)
        return cfg


def benchmark_data_dir(data_dir: str | Path, dataset: str) -> Path:
    """Where a benchmark's outputs live (the benchmark says): MBPP in the data directory, HumanEval in ``humaneval/`` inside it.

    Why a folder of its own: every file name and reader of the MBPP study stays
    as it is, and a second benchmark's tables and activations can never be
    mistaken for (or mixed with) MBPP's.
    """
    return get_benchmark(dataset).data_dir(data_dir)


def same_model(a: str, b: str) -> bool:
    """Two model names that mean the same weights: equal ids, or paths to the same folder."""
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def model_of_phase1(given: str, recorded: str | None) -> tuple[str, str]:
    """The model Phases 2 and 3 must load: the one that produced Phase 1's activations.

    ``--model`` left at its default means "Phase 1's model"; a ``--model`` that
    names another model is refused, because reading or steering one model with
    latents found in another's activations measures nothing. Returns the model
    and a sentence for the metadata saying why that one.
    """
    if recorded is None:
        return given, "--model (no Phase 1 metadata names a model)"
    if same_model(given, recorded):
        return given, "--model, the model named in the Phase 1 metadata"
    if given == DEFAULT_MODEL:
        return recorded, f"--model left at its default; the Phase 1 metadata names {recorded}, used instead"
    from common.errors import PipelineError

    raise PipelineError(
        f"--model {given} is not the model that produced the Phase 1 activations ({recorded}); "
        f"leave --model out or pass --model {recorded}"
    )


def _refuse_unknown(values: dict[str, Any]) -> None:
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(PipelineConfig)})
    if unknown:
        from common.errors import PipelineError

        raise PipelineError(f"unknown config keys: {', '.join(unknown)}")


def option_fields() -> list[dataclasses.Field]:
    """The config fields in declaration order (all of them are options)."""
    return list(dataclasses.fields(PipelineConfig))


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata["flag"] or "--" + f.name.replace("_", "-")


def applies_to(f: dataclasses.Field, command: str) -> bool:
    scope = f.metadata["scope"]
    return EVERY_COMMAND in scope or command in scope


def default_of(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def limit_error(f: dataclasses.Field, value: Any) -> str | None:
    """What breaks the field's declared limits (``choices``, ``minimum``, ``above``) in ``value``; None when nothing.

    Why here: an option's limits are stated once, on its field. The parser
    applies them to what a user types; a phase applies them, through
    :func:`check_option_limits`, to a config built in Python (the demo, the
    tests), so no phase restates a bound, let alone another one.
    """
    meta = f.metadata
    if value is None or isinstance(value, bool):
        return None
    if meta["choices"] and value not in meta["choices"]:
        return f"must be one of {', '.join(meta['choices'])}, got {value!r}"
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if meta["minimum"] is not None and any(v < meta["minimum"] for v in numbers):
        return f"must be at least {meta['minimum']:g}, got {value}"
    if meta.get("above") is not None and any(v <= meta["above"] for v in numbers):
        return f"must be greater than {meta['above']:g}, got {value}"
    if meta.get("maximum") is not None and any(v > meta["maximum"] for v in numbers):
        return f"must be at most {meta['maximum']:g}, got {value}"
    return None


def check_option_limits(cfg: PipelineConfig, command: str) -> None:
    """Every option of ``command`` within its declared limits; else one line, worded as the parser words it."""
    from common.errors import PipelineError

    for f in option_fields():
        if applies_to(f, command) and (problem := limit_error(f, getattr(cfg, f.name))):
            raise PipelineError(f"{flag_of(f)}: {problem}")


def options_markdown() -> str:
    """The table of every option in docs/options.md, built from the fields (a test keeps that page equal to it)."""
    rows = ["| flag | commands | meaning (default) |", "| --- | --- | --- |"]
    for f in option_fields():
        scope = f.metadata["scope"]
        if not scope:
            continue  # derived fields are not options
        where = "all" if EVERY_COMMAND in scope else ", ".join(scope)
        default = default_of(f)
        if isinstance(default, list):
            default = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in default)
        shown = "" if default is None or isinstance(default, bool) else f" ({default})"
        choices = f" `{'/'.join(f.metadata['choices'])}`" if f.metadata["choices"] else ""
        meaning = (f.metadata["help"] + shown).replace("|", "\\|")
        rows.append(f"| `{flag_of(f)}`{choices} | {where} | {meaning} |")
    return "\n".join(rows) + "\n"
