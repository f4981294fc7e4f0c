"""One way to derive seeds: every seeded step names its place in the run.

Why one function: a sampled batch must get the same seed whether the run was
interrupted or not, whichever phase or slice runs it; with one derivation,
"seed 42, temperature 2, batch 7" always means the same random stream.
numpy's SeedSequence mixes the parts so that neighbouring paths (batch 7 and
8) give unrelated streams. The result fits torch.manual_seed and 32-bit
seeds everywhere.
"""

from __future__ import annotations

import numpy as np


def derive_seed(*parts: int) -> int:
    """The seed for the step at ``parts`` (a root seed, then indices such as temperature and batch)."""
    if not parts:
        raise ValueError("derive_seed needs at least a root seed")
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] % (2**31 - 1))
