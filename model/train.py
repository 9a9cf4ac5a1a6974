"""Teacher-forced training of the reference model (the demo, and fine-tuning experiments)."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from transduce.model.golden import greedy
from transduce.model.transformer import Transformer
from transduce.text import VocabTokenizer

logger = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # src (B, S), tgt_in (B, T), tgt_out (B, T)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 600
    batch_size: int = 128
    learning_rate: float = 2e-3  # peak, after warmup
    warmup_steps: int = 150
    final_lr_fraction: float = 0.02  # cosine decay ends at learning_rate * this
    label_smoothing: float = 0.0
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int) -> torch.Tensor:
    """Right-pad id lists into one (B, N) int64 tensor."""
    width = max(len(row) for row in rows)
    return torch.tensor([list(row) + [pad_id] * (width - len(row)) for row in rows])


def make_batch(pairs: Sequence[tuple[str, str]], tokenizer: VocabTokenizer) -> Batch:
    """Tokenize (source, target) pairs: the decoder reads BOS + target and predicts target + EOS."""
    src = [tokenizer.encode_source(s) for s, _ in pairs]
    tgt = [tokenizer.encode_target(t) for _, t in pairs]
    pad = tokenizer.pad_id
    return (
        pad_rows(src, pad),
        pad_rows([[tokenizer.bos_id] + t for t in tgt], pad),
        pad_rows([t + [tokenizer.eos_id] for t in tgt], pad),
    )


def _learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warmup, then cosine decay to final_lr_fraction of the peak."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    floor = config.final_lr_fraction
    return config.learning_rate * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def train(
    model: Transformer, batches: Iterator[Batch], config: TrainConfig, *, progress: bool = True
) -> list[float]:
    """Train in place for config.steps batches; returns the loss of every step."""
    torch.manual_seed(config.seed)
    model.train()
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=config.learning_rate,
        weight_decay=config.weight_decay,
        betas=(0.9, 0.98),
    )
    losses = []
    bar = tqdm(
        range(config.steps), desc="train", unit="step", disable=not progress, mininterval=1.0
    )
    for step in bar:
        src, tgt_in, tgt_out = next(batches)
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, config)

        logits = model(src, tgt_in)  # (B, T, V)
        loss = F.cross_entropy(
            logits.flatten(0, 1),
            tgt_out.flatten(),
            ignore_index=model.config.pad_id,
            label_smoothing=config.label_smoothing,
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()

        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    model.eval()
    return losses


@torch.no_grad()
def exact_match(
    model: Transformer,
    pairs: Sequence[tuple[str, str]],
    tokenizer: VocabTokenizer,
    *,
    batch_size: int = 250,
    max_new_tokens: int = 24,
) -> float:
    """Fraction of pairs whose golden greedy output equals the target text exactly."""
    model.eval()
    correct = 0
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        src = pad_rows([tokenizer.encode_source(s) for s, _ in chunk], tokenizer.pad_id)
        outputs = greedy(model, src, max_new_tokens)
        correct += sum(
            tokenizer.decode_target(h.tokens) == target
            for h, (_, target) in zip(outputs, chunk, strict=True)
        )
    return correct / len(pairs)
