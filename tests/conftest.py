"""Session fixtures: artifacts that are expensive to build are built once per test run."""

from __future__ import annotations

from pathlib import Path

import pytest

from transduce.commands.train_demo import train_and_save
from transduce.model.train import TrainConfig


@pytest.fixture(scope="session")
def demo_training(tmp_path_factory) -> tuple[Path, float, float]:
    """The demo model trained with the default recipe: (checkpoint, accuracy, seconds)."""
    directory = tmp_path_factory.mktemp("demo") / "checkpoint"
    accuracy, seconds = train_and_save(directory, TrainConfig(), progress=False)
    return directory, accuracy, seconds


@pytest.fixture(scope="session")
def demo_checkpoint(demo_training) -> Path:
    return demo_training[0]
