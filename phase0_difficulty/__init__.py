"""Phase 0: cyclomatic complexity of every MBPP reference solution (CPU)."""

from phase0_difficulty.difficulty import run

__all__ = ["run"]
