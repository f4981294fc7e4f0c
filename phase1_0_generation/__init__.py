"""Phase 1.0: greedy solutions, test verdicts and residual-stream activations (GPU)."""

from phase1_0_generation.generation_phase import run, task_universe

__all__ = ["run", "task_universe"]
