"""Phase 2: SAE analysis of the saved activations (docs/design.md sections 2 and 4).

``run(cfg)`` is what ``python3 run.py phase 2 --split sae|validation`` calls;
it returns the results JSON that Phase 3 takes as ``--input``.
"""

from phase2_sae_analysis.analysis import run

__all__ = ["run"]
