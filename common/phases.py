"""Every phase of the pipeline, declared once.

Why one list: the phases used to be listed in seven places (the dispatcher, the
folder and command maps, the config's scopes, the launcher, the sweep, the
demo, clean_data), and a new phase or a renamed folder had to be changed in all
of them. Everything that needs to know the phases reads :data:`PHASES`.

Why strings for the code: ``common/`` knows no phase. A spec names its phase's
package (``module``) and the launcher's module (``shard_module``) as text; the
caller imports them when it runs the phase, so ``run.py phase 0`` does not pay
for torch and no phase imports another.

The artifacts a phase writes and reads are the keys of the declarations in
``common/datadir/artifacts.py`` (``Artifact.key``); a test checks that every key exists
and that ``writes`` is exactly what the artifacts declare as this phase's.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.errors import PipelineError


@dataclass(frozen=True)
class PhaseSpec:
    """One phase: how it is named, where it writes, how it runs and what files it exchanges."""

    key: str  # the number `run.py phase` takes, and the name everything else uses
    title: str  # a few words, for help texts and errors
    folder: str  # its folder under the data directory
    module: str  # the package whose ``run(cfg)`` runs it
    aliases: tuple[str, ...] = ()  # other spellings of ``key`` (the docs say "Phase 1.0")
    example: str = ""  # options shown in the command an error message suggests
    # The launcher's module (task list, run settings, publish) for a phase that generates with --model;
    # such a phase can be split across workers, and loads the model itself (its access is checked first).
    shard_module: str | None = None
    # Runs on a model: torch work, and one run per model in a sweep. A phase without it
    # depends on the benchmark alone, so every model of a sweep shares its outputs.
    on_model: bool = True
    splits: tuple[str, ...] = ()  # a full study runs it once per --split value (the sweep, the demo)
    writes: tuple[str, ...] = ()  # artifact keys (common/datadir/artifacts.py)
    reads: tuple[str, ...] = ()  # artifact keys of earlier phases

    @property
    def entry(self) -> str:
        """``module:function`` of the phase's run function."""
        return f"{self.module}:run"

    @property
    def command(self) -> str:
        """The command a user runs to produce this phase's outputs (named in "missing input" errors)."""
        return f"python3 run.py phase {self.key}" + (f" {self.example}" if self.example else "")

    @property
    def generates(self) -> bool:
        return self.shard_module is not None


_PHASE1_FILES = ("phase1_dataset", "phase1_metadata", "phase1_activation")
_TEMPERATURE_FILES = ("temperature_table", "temperature_metadata", "temperature_activation")
_PHASE3_FILES = (
    "phase3_validation", "phase3_metrics", "phase3_steering", "steering_outcomes", "phase3_probe_metrics",
    "phase3_roc_png", "phase3_metrics_by_temperature_png", "phase3_steering_grid_png", "phase3_flipped_examples",
    "phase3_summary", "phase3_summary_latest", "phase3_metadata", "phase3_coverage_png",
)

PHASES: tuple[PhaseSpec, ...] = (
    PhaseSpec("0", "difficulty", "phase0", "phase0_difficulty", on_model=False, writes=("difficulty", "difficulty_metadata")),
    PhaseSpec("0.1", "split", "phase0_1", "phase0_1_splitting", on_model=False,
              writes=("split", "split_metadata"), reads=("difficulty",)),
    PhaseSpec("1", "generation", "phase1_0", "phase1_0_generation", aliases=("1.0",), example="--model google/gemma-2-2b",
              shard_module="phase1_0_generation.generation_phase", writes=_PHASE1_FILES, reads=("difficulty",)),
    PhaseSpec("1.2", "temperatures", "phase1_2", "phase1_2_temperature", example="--model google/gemma-2-2b",
              shard_module="phase1_2_temperature.temperature_phase", writes=_TEMPERATURE_FILES,
              reads=("split", "phase1_dataset", "phase1_metadata")),
    PhaseSpec("2", "SAE analysis", "phase2", "phase2_sae_analysis", example="--split sae", splits=("sae", "validation"),
              writes=("phase2_results", "phase2_metadata", "phase2_top", "phase2_scores"),
              reads=("split", *_PHASE1_FILES, *_TEMPERATURE_FILES)),
    PhaseSpec("3", "validation", "phase3", "phase3_validation", writes=_PHASE3_FILES,
              reads=("split", *_PHASE1_FILES, *_TEMPERATURE_FILES, "phase2_results", "phase2_scores")),
)

_BY_NAME: dict[str, PhaseSpec] = {name: p for p in PHASES for name in (p.key, *p.aliases)}


def phase_keys() -> tuple[str, ...]:
    """Every phase's key, in running order."""
    return tuple(p.key for p in PHASES)


def canonical(text: str) -> str:
    """The key of a phase as typed (``1.0`` -> ``1``); text naming no phase comes back stripped, for argparse to refuse."""
    spec = _BY_NAME.get(text.strip())
    return spec.key if spec else text.strip()


def phase(name: str) -> PhaseSpec:
    """The spec of a phase by key or alias; a one-line error naming the known phases otherwise."""
    spec = _BY_NAME.get(name.strip())
    if spec is None:
        raise PipelineError(f"unknown phase {name!r}; known: {', '.join(phase_keys())}")
    return spec
