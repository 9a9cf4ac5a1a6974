"""Checkpoints: a directory with config.json, model.safetensors and (optionally) vocab.json.

Weights are stored with safetensors, so loading never unpickles anything. Tied weights (the
output projection tied to the target embedding, or one shared embedding table) are stored
once, under the name of the tensor that owns them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from transduce.files import staged_directory
from transduce.model.config import ModelConfig
from transduce.model.transformer import Transformer
from transduce.text import VocabTokenizer

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded; the message lists every problem."""


def _tied_names(config: ModelConfig) -> set[str]:
    """State-dict names that alias another tensor and are therefore not stored."""
    tied = set()
    if config.tie_output:
        tied.add("output_proj.weight")
    if config.share_embeddings:
        tied.add("src_embed.weight")
    return tied


def stored_state(model: Transformer) -> dict[str, torch.Tensor]:
    """The tensors a checkpoint stores: the state dict without aliases, contiguous, on the CPU."""
    tied = _tied_names(model.config)
    return {
        name: tensor.detach().cpu().contiguous()
        for name, tensor in model.state_dict().items()
        if name not in tied
    }


def save_checkpoint(
    model: Transformer, directory: str | Path, tokenizer: VocabTokenizer | None = None
) -> Path:
    """Write the checkpoint; an existing directory is replaced only once the new one is whole."""
    with staged_directory(directory) as staging:
        (staging / CONFIG_FILE).write_text(model.config.to_json())
        save_file(stored_state(model), staging / WEIGHTS_FILE, metadata={"format": "transduce"})
        if tokenizer is not None:
            tokenizer.save(staging)
    logger.info("Saved checkpoint %s", directory)
    return Path(directory)


def load_config(directory: str | Path) -> ModelConfig:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; is {directory} a transduce checkpoint?")
    try:
        return ModelConfig.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path} is not a valid model config: {error}") from error


def load_checkpoint(directory: str | Path) -> Transformer:
    """Load a checkpoint into an eval-mode model, after checking every name and shape."""
    directory = Path(directory)
    config = load_config(directory)
    path = directory / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; the checkpoint has no weights")
    try:
        state = load_file(path)
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path} is not a readable safetensors file: {error}") from error

    model = Transformer(config)
    expected = stored_state(model)
    problems = [
        f"missing weight {name} {tuple(expected[name].shape)}"
        for name in expected
        if name not in state
    ]
    problems += [f"unexpected weight {name}" for name in state if name not in expected]
    problems += [
        f"{name} has shape {tuple(state[name].shape)}, config.json implies "
        f"{tuple(expected[name].shape)}"
        for name in expected
        if name in state and state[name].shape != expected[name].shape
    ]
    problems += [
        f"{name} has dtype {state[name].dtype}, expected {expected[name].dtype}"
        for name in expected
        if name in state and state[name].dtype != expected[name].dtype
    ]
    if problems:
        raise CheckpointError(
            f"checkpoint {directory} does not match its config.json ({len(problems)} problems):\n"
            + "\n".join(f"  - {p}" for p in problems)
        )
    model.load_state_dict(state, strict=False)  # the tied aliases follow their owners
    return model.eval()
