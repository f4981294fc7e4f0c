"""Session fixtures for the demo tests: the test-size demo model and its SAEs, trained once.

Why session-scoped: training takes about 30 s on 2 cores; every demo test that
needs a trained model (not a random one) shares this one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pytest

from common.benchmarks.mbpp import load_mbpp
from tests.helpers import DEMO_PROBLEMS

if TYPE_CHECKING:  # torch and transformers only load when a test asks for the fixture
    from demo.training import TrainingReport


@dataclass
class TrainedDemo:
    """What ``demo_trained`` gives: the training report, the model folder, and one SAE folder per layer."""

    report: TrainingReport
    model_dir: Path
    sae_dir: Path
    sae_folders: dict[int, Path]


@pytest.fixture(scope="session")
def demo_problems() -> pd.DataFrame:
    return load_mbpp(DEMO_PROBLEMS)


@pytest.fixture(scope="session")
def demo_trained(
    demo_problems: pd.DataFrame, demo_trained_model: TrainingReport, tmp_path_factory: pytest.TempPathFactory
) -> TrainedDemo:
    """The "test" size demo model (tests/conftest.py, trained once per session) and its SAEs (one per layer)."""
    from demo.sae_training import DemoSAEConfig, demo_sae_texts, train_demo_saes

    root = tmp_path_factory.mktemp("demo_trained")
    report = demo_trained_model
    folders = train_demo_saes(
        Path(report.model_dir), demo_sae_texts(demo_problems), list(range(int(report.config["num_hidden_layers"]))),
        root / "saes", DemoSAEConfig.for_size("test"),
    )
    return TrainedDemo(report=report, model_dir=Path(report.model_dir), sae_dir=root / "saes", sae_folders=folders)
