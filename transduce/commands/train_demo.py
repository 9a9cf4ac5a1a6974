"""Train the demo model (digits -> English words) and report its held-out accuracy.

The full run takes about a minute on 2 CPU cores. Example:
    transduce train-demo --output ~/.cache/transduce/demo/checkpoint
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path

import torch

from transduce import paths
from transduce.model import Transformer
from transduce.model.checkpoint import save_checkpoint
from transduce.model.demo import demo_batches, demo_config, demo_pairs, demo_tokenizer
from transduce.model.threads import torch_threads
from transduce.model.train import TrainConfig, exact_match, train

logger = logging.getLogger(__name__)

TEST_SET_SIZE = 2_000
ACCURACY_BAR = 0.99


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = TrainConfig()
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help=f"checkpoint directory to write (default: {paths.demo_checkpoint_dir()})",
    )
    parser.add_argument("--steps", type=int, default=defaults.steps, help="optimizer steps")
    parser.add_argument(
        "--batch-size", type=int, default=defaults.batch_size, help="pairs per step"
    )
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed for weights and data")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )


def train_and_save(
    output: Path, train_config: TrainConfig, *, progress: bool = True
) -> tuple[float, float]:
    """Train the demo model, save it to `output`; returns (test accuracy, training seconds)."""
    tokenizer = demo_tokenizer()
    torch.manual_seed(train_config.seed)
    model = Transformer(demo_config())
    n_params = sum(p.numel() for p in model.parameters())
    logger.info(
        "Training the demo model (%s parameters) for %d steps", f"{n_params:,}", train_config.steps
    )

    start = time.perf_counter()
    batches = demo_batches(tokenizer, train_config.batch_size, seed=train_config.seed)
    train(model, batches, train_config, progress=progress)
    seconds = time.perf_counter() - start

    test_pairs = demo_pairs(TEST_SET_SIZE, split="test")
    with torch_threads(1):
        accuracy = exact_match(model, test_pairs, tokenizer)
    logger.info(
        "Trained in %.1f s; exact match on %d held-out numbers: %.2f %%",
        seconds,
        len(test_pairs),
        100 * accuracy,
    )
    save_checkpoint(model, output, tokenizer)
    return accuracy, seconds


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    config = dataclasses.replace(
        TrainConfig(), steps=args.steps, batch_size=args.batch_size, seed=args.seed
    )
    output = args.output or paths.demo_checkpoint_dir()
    accuracy, seconds = train_and_save(output, config)
    print(f"accuracy {100 * accuracy:.2f} % exact match on {TEST_SET_SIZE} held-out numbers")
    print(f"training time {seconds:.1f} s on {torch.get_num_threads()} threads")
    print(f"checkpoint {output}")
    return 0 if accuracy >= ACCURACY_BAR else 1
