"""The pipeline's configuration: one dataclass, defaults overlaid by the CLI.

Why one flat dataclass: every phase records the *whole* resolved config in its
metadata, so a result file always says exactly what produced it. Precedence is
defaults < environment (``PVA_DATA_DIR``, ``PVA_MBPP_PATH``) < command line,
as in lm-evaluation-harness.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

DEFAULT_MODEL = "google/gemma-2-2b"


@dataclass
class PipelineConfig:
    """Every knob of every phase. Field docs double as ``--help`` texts in run.py."""

    # Global
    data_dir: str = "data"
    mbpp_path: str | None = None
    input: str | None = None
    seed: int = 42
    device: str = "auto"

    # Phase 1.0 / 1.2: generation
    model: str = DEFAULT_MODEL
    start: int | None = None
    end: int | None = None
    layers: list[int] | None = None
    batch_size: int | None = None
    max_new_tokens: int = 512
    workers: int = 4
    timeout_s: float = 30.0
    memory_mb: int = 4096
    temperatures: list[float] = field(default_factory=lambda: [0.3, 0.6, 0.9, 1.2])
    samples_per_task: int = 5
    # Set by multi_gpu_launcher.py: a worker writes its slice's table here, not as a dataset.
    shard_dir: str | None = None
    checkpoint_every: int = 50
    autosave_every: int = 100
    autosave_keep: int = 3

    # Phase 0.1: split
    split_fractions: list[float] = field(default_factory=lambda: [0.5, 0.1, 0.4])
    n_strata: int = 4

    # Phase 2: SAE analysis
    split: str = "sae"
    sae_release: str = "gemma-scope-2b-pt-res-canonical"
    sae_id_template: str = "layer_{layer}/width_{width}/canonical"
    sae_width: str = "16k"
    sae_path: str | None = None
    top_k: int = 20
    permutations: int = 200
    general_corpus: str | None = None
    general_filter: bool = True
    general_filter_threshold: float = 0.02
    general_corpus_samples: int = 200
    general_corpus_tokens: int = 128

    # Phase 3: validation
    coefficients: list[float] = field(
        default_factory=lambda: [-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0]
    )
    hook_point: str = "resid_post"
    steer_positions: str = "all"
    n_random_controls: int = 3
    control_max_separation: float = 0.01
    bootstrap: int = 1000
    top_latents_validated: int = 5
    steering_max_new_tokens: int | None = None

    # Cluster: `run.py sweep` (multi_gpu_launcher.py has the same flags of its own).
    models: list[str] | None = field(default=None, metadata={"help": "sweep: models, comma-separated: presets, model folders or hub ids"})
    backend: str = field(default="local", metadata={"help": "sweep: local (steps in sequence here) or slurm (dependent jobs through submitit)"})
    partition: str | None = field(default=None, metadata={"help": "SLURM partition (default: the cluster's default)"})
    account: str | None = field(default=None, metadata={"help": "SLURM account to charge"})
    slurm_time: str | None = field(default=None, metadata={"help": "SLURM time limit per job, e.g. 12:00:00 (default 1-00:00:00)"})
    mem: str | None = field(default=None, metadata={"help": "SLURM memory per job, e.g. 64G"})
    gpus_per_task: int | None = field(default=None, metadata={"help": "SLURM GPUs per job (default 0: CPU jobs)"})
    cpus_per_task: int | None = field(default=None, metadata={"help": "SLURM CPU cores per job"})
    slurm_extra: list[str] | None = field(default=None, metadata={"help": "any other sbatch option as KEY=VALUE (repeatable)"})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PipelineConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            from common.errors import PipelineError

            raise PipelineError(f"unknown config keys: {', '.join(unknown)}")
        return cls(**values)

    @classmethod
    def from_overrides(cls, overrides: dict[str, Any]) -> PipelineConfig:
        """Defaults, then environment, then the non-None CLI values in ``overrides``."""
        cfg = cls()
        if os.environ.get("PVA_DATA_DIR"):
            cfg.data_dir = os.environ["PVA_DATA_DIR"]
        if os.environ.get("PVA_MBPP_PATH"):
            cfg.mbpp_path = os.environ["PVA_MBPP_PATH"]
        known = {f.name for f in dataclasses.fields(cls)}
        for key, value in overrides.items():
            if key in known and value is not None:
                setattr(cfg, key, value)
        return cfg
