"""Run the demo pipeline: train (once), export, generate with ONNX Runtime, check parity.

Every stage is cached under $TRANSDUCE_HOME/demo (default ~/.cache/transduce/demo) and redone
only when its input changed. Example:
    transduce demo
"""

from __future__ import annotations

import argparse
import logging
import statistics
from pathlib import Path

from transduce import paths
from transduce.commands.parity import run_parity
from transduce.commands.train_demo import train_and_save
from transduce.model.checkpoint import load_checkpoint
from transduce.model.torch_backend import TorchBackend
from transduce.model.train import TrainConfig
from transduce.runtime.generate import GenerationConfig, generate
from transduce.runtime.onnxruntime_backend import OnnxRuntimeBackend
from transduce.text import VocabTokenizer

logger = logging.getLogger(__name__)

EXAMPLES = ["7", "42", "1905", "80017", "999999", "300000"]
LATENCY_RUNS = 20


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
    parser.add_argument(
        "--beam-test-size",
        type=int,
        default=200,
        help="test sources for the beam parity check (default: 200; greedy "
        "parity always uses the whole test set)",
    )


def _latency(backend, sources: list[list[int]]) -> dict[str, float]:
    """Median time to first token and per-step time (ms) of greedy decoding, batch 1."""
    first, steps = [], []
    for run in range(LATENCY_RUNS):
        result = generate(backend, [sources[run % len(sources)]], GenerationConfig(24))
        first.append(result.timings.first_token_seconds)
        steps += result.timings.step_seconds
    return {"first_ms": 1000 * statistics.median(first), "step_ms": 1000 * statistics.median(steps)}


def run(args: argparse.Namespace) -> int:
    checkpoint = args.checkpoint or paths.demo_checkpoint_dir()
    work_dir = checkpoint.parent

    # 1) the model: trained once, then loaded from the cache
    if args.retrain or not (checkpoint / "model.safetensors").is_file():
        logger.info("No demo checkpoint at %s; training one", checkpoint)
        train_and_save(checkpoint, TrainConfig())

    # 2) export (FP32 and FP16, reused when up to date) and parity, every layer
    report = run_parity(
        checkpoint,
        work_dir,
        test_size=2_000,
        beam=4,
        max_new_tokens=24,
        beam_test_size=args.beam_test_size,
        reuse_exports=True,
        progress=True,
    )

    # 3) translations with the ONNX Runtime backend
    tokenizer = VocabTokenizer.load(work_dir / "onnx-fp32")
    backends = {
        "onnxruntime-fp32": OnnxRuntimeBackend(work_dir / "onnx-fp32"),
        "onnxruntime-fp16": OnnxRuntimeBackend(work_dir / "onnx-fp16"),
        "torch (reference)": TorchBackend(load_checkpoint(checkpoint)),
    }
    sources = [tokenizer.encode_source(text) for text in EXAMPLES]
    result = generate(backends["onnxruntime-fp32"], sources, GenerationConfig(24))
    print("translations (onnxruntime-fp32, greedy):")
    for text, tokens in zip(EXAMPLES, result.tokens, strict=True):
        print(f"  {text:>8} -> {tokenizer.decode_target(tokens)}")

    print("parity:")
    for line in report.lines():
        print(f"  {line}")
    print(f"latency, greedy, batch 1 (median of {LATENCY_RUNS} requests):")
    for name, backend in backends.items():
        latency = _latency(backend, sources)
        print(
            f"  {name:<18} first token {latency['first_ms']:6.2f} ms, "
            f"per step {latency['step_ms']:6.2f} ms"
        )
    print("demo PASSED" if report.passed else "demo FAILED: parity failed")
    return 0 if report.passed else 1
