"""What a sweep runs: shared Phases 0 and 0.1, then per model 1, 1.2, 2 (sae, validation) and 3.

Why commands and not function calls: every step is exactly the ``run.py phase``
a user would type, so a step's log, metadata and resume behaviour are those of
a normal run, and phases stay independent of each other (the sweep imports
none of them). Each model gets its own data directory; its ``phase0`` and
``phase0_1`` are links to the shared ones, so every model is split the same way.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from common.config import applies_to, option_fields
from common.datadir import PHASE_DIRS
from common.errors import PipelineError
from common.phases import PHASES

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
# From the phase registry: the model-free phases run once and are shared; the others run per model, once per split.
SHARED_PHASES: tuple[str, ...] = tuple(p.key for p in PHASES if not p.on_model)


def _model_steps() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(step name, ``run.py phase`` arguments) of one model's chain: ``phase1``, ``phase1.2``, ``phase2-sae``, ..."""
    steps: list[tuple[str, tuple[str, ...]]] = []
    for spec in PHASES:
        if not spec.on_model:
            continue
        if not spec.splits:
            steps.append((f"phase{spec.key}", (spec.key,)))
        steps.extend((f"phase{spec.key}-{split}", (spec.key, "--split", split)) for split in spec.splits)
    return tuple(steps)


MODEL_STEPS: tuple[tuple[str, tuple[str, ...]], ...] = _model_steps()
# The phases that take --sae-path (the config's scope of the option says which).
_SAE_PHASES = tuple(p.key for p in PHASES if applies_to(next(f for f in option_fields() if f.name == "sae_path"), p.key))
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class SweepModel:
    """One model of the sweep: what the user typed, its short name, and its own data directory."""

    spec: str
    name: str
    data_dir: Path
    sae_path: str | None = None


@dataclass
class Step:
    """One ``run.py phase`` command; ``after`` names the step it must wait for (SLURM: afterok)."""

    name: str
    args: list[str]
    after: str | None
    log: Path
    model: str | None = None
    extra: dict[str, str] = field(default_factory=dict)


def _known_presets() -> list[str]:
    """Preset names of the model registry (``run.py models``)."""
    from common.modeling.model_presets import PRESETS

    return sorted(PRESETS)


def resolve_models(specs: list[str], data_dir: Path, sae_path: str | None) -> list[SweepModel]:
    """Check every ``--models`` entry before anything runs: a preset, a local model folder, or a hub id.

    Why this order: a preset name wins (it selects weights and SAEs); a folder
    must exist; anything else must look like ``org/name``, since the hub cannot
    be asked offline. ``--sae-path`` may hold ``{model}``, filled with each
    model's short name (every model needs SAEs of its own width).
    """
    if not specs:
        raise PipelineError("--models needs at least one model (comma-separated)")
    presets = _known_presets()
    models, seen = [], set()
    for spec in specs:
        folder = Path(spec).expanduser()
        if spec in presets:
            name = spec
        elif folder.is_dir():
            if not (folder / "config.json").is_file():
                raise PipelineError(f"--models: {spec} is a folder but holds no config.json, so it is no model folder")
            name = folder.resolve().name
            spec = str(folder.resolve())
        elif _HUB_ID.match(spec) and not spec.startswith((".", "/", "~")):
            name = spec.replace("/", "__")
        else:
            known = f"; presets: {', '.join(presets)}"
            raise PipelineError(f"--models: unknown model {spec!r}: not a preset, not a model folder, not a hub id org/name{known}")
        if name in seen:
            raise PipelineError(f"--models: {name!r} appears twice")
        seen.add(name)
        model_sae = sae_path.replace("{model}", name) if sae_path else None
        if model_sae and not Path(model_sae).is_dir():
            raise PipelineError(f"--sae-path for {name}: {model_sae} is not a folder")
        models.append(SweepModel(spec=spec, name=name, data_dir=data_dir / "models" / name, sae_path=model_sae))
    return models


def link_shared_phases(model: SweepModel, data_dir: Path) -> None:
    """``models/<name>/phase0`` and ``phase0_1`` point at the shared folders (relative links, so a copied tree still works)."""
    model.data_dir.mkdir(parents=True, exist_ok=True)
    for phase in SHARED_PHASES:
        target = data_dir / PHASE_DIRS[phase]
        target.mkdir(parents=True, exist_ok=True)
        link = model.data_dir / PHASE_DIRS[phase]
        if link.is_symlink() or not link.exists():
            if link.is_symlink():
                link.unlink()
            link.symlink_to(Path("..") / ".." / PHASE_DIRS[phase], target_is_directory=True)
        elif link.resolve() != target.resolve():
            raise PipelineError(f"{link} exists and is not a link to {target}: move it away and rerun")


def plan_steps(models: list[SweepModel], data_dir: Path, passthrough: dict[str, list[str]], log_dir: Path) -> list[Step]:
    """Every step in dependency order: 0, 0.1, then each model's chain (models independent of each other).

    ``passthrough`` maps a phase number to the user's options that apply to that
    phase (run.py refuses an option given to a phase it means nothing to).
    """
    steps: list[Step] = []
    for key in SHARED_PHASES:
        name = f"phase{key}"
        steps.append(Step(name, ["phase", key, "--data-dir", str(data_dir), *passthrough.get(key, [])],
                          steps[-1].name if steps else None, log_dir / f"{name}.log"))
    shared_last = steps[-1].name if steps else None
    for model in models:
        previous = shared_last
        for step_name, phase_args in MODEL_STEPS:
            args = ["phase", *phase_args, "--data-dir", str(model.data_dir), "--model", model.spec,
                    *passthrough.get(phase_args[0], [])]
            if model.sae_path and phase_args[0] in _SAE_PHASES:
                args += ["--sae-path", model.sae_path]
            name = f"{model.name}/{step_name}"
            steps.append(Step(name, args, previous, log_dir / model.name / f"{step_name}.log", model=model.name))
            previous = name
    return steps
