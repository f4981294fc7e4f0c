"""Phase 1.2: sampled solutions at several temperatures on the validation split (GPU)."""

from phase1_2_temperature.temperature_phase import run, task_universe

__all__ = ["run", "task_universe"]
