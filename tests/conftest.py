"""Shared pytest fixtures: seeding, and a tiny random Gemma-2 model folder built once per session.

Why a random tiny model: the real gemma-2-2b can never be fetched here, and
tests must exercise real transformers code paths (eager softcapped attention,
sliding window, tied embeddings, KV cache) in seconds.

Why one torch thread: the machine has 2 cores shared with other processes;
for a 64-wide model the OpenMP threads spend their time waiting on each other
(a tiny matmul took ~3 ms with 2 threads under load, ~10 us with 1).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import TINY_TEXTS

torch.set_num_threads(1)


# MBPP-style text for training the tiny tokenizer: problem statements, asserts and code.



@pytest.fixture(autouse=True)
def seed_everything() -> None:
    """Every test starts from the same random state, whatever ran before it."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny random Gemma-2 folder (2 layers, d_model 64, sliding window 64).

    initializer_range 0.1 gives logits with clear top-1 margins, so greedy
    outputs differ between prompts and do not flip on float noise.
    """
    from demo.tiny_model import build_random_tiny_model

    return build_random_tiny_model(
        tmp_path_factory.mktemp("tiny_gemma2"), TINY_TEXTS, seed=0, vocab_size=512, initializer_range=0.1
    )


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path):
    """(model, tokenizer) loaded through the pipeline's own loader, float32 on CPU."""
    from common.modeling.models import load_model_and_tokenizer

    return load_model_and_tokenizer(str(tiny_model_dir), torch.device("cpu"), torch.float32)


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real pretrained model: SmolLM2-135M-Instruct (Llama, 30 layers, d_model 576), converted once per session."""
    from tests.helpers import smollm2_folder

    return smollm2_folder(tmp_path_factory)


@pytest.fixture(scope="session")
def demo_trained_model(tmp_path_factory: pytest.TempPathFactory):
    """The "test" size demo model (hidden 64, 2 layers) trained on the bundled problems, once per session.

    It solves the problems it was trained on and none of the others, so tests
    that need both labels from a real model (not a random one) get them. Its
    training report is returned; ``report.model_dir`` is the model folder.
    """
    from common.benchmarks.mbpp import load_mbpp
    from demo.training import DemoModelConfig, train_demo_model
    from tests.helpers import DEMO_PROBLEMS

    root = tmp_path_factory.mktemp("demo_model")
    return train_demo_model(load_mbpp(DEMO_PROBLEMS), root / "model", DemoModelConfig.for_size("test"))
