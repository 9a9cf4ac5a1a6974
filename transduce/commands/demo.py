"""Run the demo pipeline: train the demo model once (cached), then translate with it.

Example:
    transduce demo
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

from transduce import paths
from transduce.commands.train_demo import TEST_SET_SIZE, train_and_save
from transduce.model.checkpoint import load_checkpoint
from transduce.model.demo import demo_pairs
from transduce.model.golden import greedy
from transduce.model.train import TrainConfig, exact_match, pad_rows
from transduce.text import VocabTokenizer

logger = logging.getLogger(__name__)

EXAMPLES = ["7", "42", "1905", "80017", "999999", "300000"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help=f"demo checkpoint to use or create (default: {paths.demo_checkpoint_dir()})",
    )
    parser.add_argument(
        "--retrain", action="store_true", help="train again even when a checkpoint exists"
    )


def run(args: argparse.Namespace) -> int:
    checkpoint = args.checkpoint or paths.demo_checkpoint_dir()

    # 1) the model: trained once, then loaded from the cache
    if args.retrain or not (checkpoint / "model.safetensors").is_file():
        logger.info("No demo checkpoint at %s; training one", checkpoint)
        train_and_save(checkpoint, TrainConfig())
    model, tokenizer = load_checkpoint(checkpoint), VocabTokenizer.load(checkpoint)
    logger.info("Loaded demo checkpoint %s", checkpoint)

    # 2) a few translations with the golden greedy decoder
    src = pad_rows([tokenizer.encode_source(text) for text in EXAMPLES], tokenizer.pad_id)
    start = time.perf_counter()
    outputs = greedy(model, src, max_new_tokens=24)
    seconds = time.perf_counter() - start
    for text, hypothesis in zip(EXAMPLES, outputs, strict=True):
        print(f"{text:>8} -> {tokenizer.decode_target(hypothesis.tokens)}")
    print(f"golden greedy (torch, no cache): {len(EXAMPLES)} rows in {1000 * seconds:.1f} ms")

    # 3) the accuracy on the held-out test set
    with torch.no_grad():
        accuracy = exact_match(model, demo_pairs(TEST_SET_SIZE, split="test"), tokenizer)
    print(f"held-out exact match: {100 * accuracy:.2f} % of {TEST_SET_SIZE}")
    return 0
