"""Phase 0.1: difficulty-stratified sae / hyperparams / validation split (CPU)."""

from phase0_1_splitting.splitting import run

__all__ = ["run"]
