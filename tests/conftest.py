"""Session fixtures: artifacts that are expensive to build are built once per test run."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import eos_biased_model

from transduce.commands.train_demo import train_and_save
from transduce.export.onnx_export import onnx_from_model
from transduce.model.precision import FP16
from transduce.model.threads import torch_threads
from transduce.model.train import TrainConfig


@pytest.fixture(scope="session", autouse=True)
def single_torch_thread():
    """Tiny models run faster on one thread (see model/threads.py); training asks for two."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def demo_training(tmp_path_factory) -> tuple[Path, float, float]:
    """The demo model trained with the default recipe: (checkpoint, accuracy, seconds)."""
    directory = tmp_path_factory.mktemp("demo") / "checkpoint"
    with torch_threads(2):
        accuracy, seconds = train_and_save(directory, TrainConfig(), progress=False)
    return directory, accuracy, seconds


@pytest.fixture(scope="session")
def demo_checkpoint(demo_training) -> Path:
    return demo_training[0]


@pytest.fixture(scope="session")
def tiny_exports(tmp_path_factory):
    """(model, {"fp32": dir, "fp16": dir}, {"fp32": manifest, "fp16": manifest}) of a tiny
    pre-norm model whose EOS is likely enough that rows end at different steps."""
    model = eos_biased_model(norm_first=True)
    root = tmp_path_factory.mktemp("tiny-exports")
    dirs = {"fp32": root / "fp32", "fp16": root / "fp16"}
    manifests = {
        "fp32": onnx_from_model(model, dirs["fp32"]),
        "fp16": onnx_from_model(model, dirs["fp16"], precision=FP16),
    }
    return model, dirs, manifests
