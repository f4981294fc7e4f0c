"""Phase 3: statistical and causal validation of the latents Phase 2 chose (``run.py phase 3``)."""

from phase3_validation.validation import run

__all__ = ["run"]
