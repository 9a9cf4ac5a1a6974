"""Builders shared by the tests: tiny seeded models and padded random sources."""

from __future__ import annotations

import torch

from transduce.model import Transformer
from transduce.model.config import preset


def tiny_model(seed: int = 0, **overrides) -> Transformer:
    """A seeded eval-mode model of the tiny preset, with fields replaced by `overrides`."""
    torch.manual_seed(seed)
    return Transformer(preset("tiny", **overrides)).eval()


def random_sources(
    model: Transformer, lengths: list[int], seed: int = 0, width: int | None = None
) -> torch.Tensor:
    """(B, S) right-padded source ids with the given real lengths, each ending in EOS."""
    config = model.config
    generator = torch.Generator().manual_seed(seed)
    rows = torch.full((len(lengths), width or max(lengths)), config.pad_id, dtype=torch.long)
    for row, length in enumerate(lengths):
        # ids from 3 up avoid pad, bos and eos inside the sentence
        body = torch.randint(3, config.src_vocab_size, (length - 1,), generator=generator)
        rows[row, : length - 1] = body
        rows[row, length - 1] = config.eos_id
    return rows


def eos_biased_model(seed: int = 51, factor: float = 1.3, **overrides) -> Transformer:
    """A tiny model whose EOS logit is inflated, so rows end at different steps."""
    model = tiny_model(seed=seed, **overrides)
    with torch.no_grad():
        model.output_proj.weight[model.config.eos_id] *= factor
    return model
