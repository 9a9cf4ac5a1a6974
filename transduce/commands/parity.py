"""Check a checkpoint's exported graphs and runtime against the reference, layer by layer.

Exports FP32 and FP16 graphs (or uses the given ones), then prints one verdict line per graph
output (layers 1 and 2) and per decoding mode (layer 3), with the first divergent step of any
token mismatch. Exits non-zero when any verdict fails. Example:
    transduce parity ~/.cache/transduce/demo/checkpoint --work-dir artifacts/parity
"""

from __future__ import annotations

import argparse
import logging
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from transduce.commands.export import export_checkpoint
from transduce.model.checkpoint import load_checkpoint
from transduce.model.demo import demo_pairs, demo_tokenizer
from transduce.model.precision import FP16, FP32
from transduce.model.transformer import Transformer
from transduce.parity import (
    OutputVerdict,
    TokenVerdict,
    compare_graphs,
    compare_tokens,
    golden_hypotheses,
)
from transduce.runtime.generate import GenerationConfig
from transduce.runtime.onnxruntime_backend import OnnxRuntimeBackend
from transduce.text import load_tokenizer

logger = logging.getLogger(__name__)

FP16_MIN_IDENTICAL = 0.995  # share of sequences the FP16 graph must decode exactly as fp32
FP16_MAX_ACCURACY_DROP = 0.002  # task accuracy the FP16 graph may lose (0.2 points)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="checkpoint directory")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="where the FP32 and FP16 exports go (default: a temporary dir)",
    )
    parser.add_argument(
        "--test-size",
        type=int,
        default=2_000,
        help="sources for the token layer (default: 2000, the demo test set)",
    )
    parser.add_argument("--beam", type=int, default=4, help="beam size of the beam check")
    parser.add_argument(
        "--beam-test-size",
        type=int,
        default=None,
        help="sources for the beam check, the first of the test set (default: "
        "all; the golden beam search is slow: about 0.1 s per source)",
    )
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=24,
        help="generated tokens per source at most (default: 24)",
    )


@dataclass
class ParityReport:
    outputs: list[OutputVerdict] = field(default_factory=list)
    tokens: list[TokenVerdict] = field(default_factory=list)
    accuracy: dict[str, float] = field(default_factory=dict)  # task exact match per backend
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return (
            all(v.passed for v in self.outputs)
            and all(v.passed for v in self.tokens)
            and not self.problems
        )

    def lines(self) -> list[str]:
        lines = [v.line() for v in self.outputs]
        for verdict in self.tokens:
            lines.append(verdict.line())
            lines += [f"    first divergence: {d.line()}" for d in verdict.divergences]
        lines += [f"accuracy {name}: {100 * value:.2f} %" for name, value in self.accuracy.items()]
        lines += [f"FAILED {p}" for p in self.problems]
        return lines


def parity_sources(model: Transformer, checkpoint: Path, count: int):
    """(sources, targets or None): the demo test set for the demo model, else random ids."""
    try:
        tokenizer = load_tokenizer(checkpoint)
    except FileNotFoundError:
        tokenizer = None
    if tokenizer is not None and getattr(tokenizer, "tokens", None) == demo_tokenizer().tokens:
        pairs = demo_pairs(count, split="test")
        return [tokenizer.encode_source(s) for s, _ in pairs], [t for _, t in pairs], tokenizer
    rng = random.Random(0)
    config = model.config
    sources = []
    for _ in range(count):
        length = rng.randint(1, min(24, config.max_positions - 1))
        sources.append(
            [rng.randrange(3, config.src_vocab_size) for _ in range(length)] + [config.eos_id]
        )
    return sources, None, tokenizer


def run_parity(
    checkpoint: Path,
    work_dir: Path,
    *,
    test_size: int,
    beam: int,
    max_new_tokens: int,
    beam_test_size: int | None = None,
    reuse_exports: bool = False,
    progress: bool = False,
) -> ParityReport:
    model = load_checkpoint(checkpoint)
    report = ParityReport()
    sources, targets, tokenizer = parity_sources(model, checkpoint, test_size)

    # layers 1 and 2: each graph output against torch fp32, on a padded batch mid-decoding
    exports = {}
    for label, policy in (("fp32", FP32), ("fp16", FP16)):
        exports[label] = work_dir / f"onnx-{label}"
        manifest = export_checkpoint(checkpoint, exports[label], policy, reuse=reuse_exports)
        width = max(len(s) for s in sources[:8])
        src = torch.tensor([s + [model.config.pad_id] * (width - len(s)) for s in sources[:8]])
        report.outputs += [
            _labelled(v, label) for v in compare_graphs(model, exports[label], manifest, src)
        ]

    # layer 3: tokens against the golden decoders, greedy and beam
    for mode_beam in (1, beam):
        config = GenerationConfig(max_new_tokens=max_new_tokens, beam_size=mode_beam)
        mode_sources = sources if mode_beam == 1 else sources[:beam_test_size]
        start = time.perf_counter()
        references = golden_hypotheses(model, mode_sources, config)
        logger.info(
            "Golden %s on %d sources in %.1f s",
            "greedy" if mode_beam == 1 else f"beam {mode_beam}",
            len(mode_sources),
            time.perf_counter() - start,
        )
        for label, minimum in (("fp32", 1.0), ("fp16", FP16_MIN_IDENTICAL)):
            backend = OnnxRuntimeBackend(exports[label])
            verdict, outputs = compare_tokens(
                model,
                backend,
                mode_sources,
                config,
                references,
                min_identical_fraction=minimum,
                progress=progress,
            )
            report.tokens.append(verdict)
            if targets is not None and mode_beam == 1:
                report.accuracy[backend.name] = _exact_match(outputs, targets, tokenizer)
                report.accuracy.setdefault(
                    "golden", _exact_match([h.tokens for h in references], targets, tokenizer)
                )
    if targets is not None:
        drop = report.accuracy["golden"] - report.accuracy["onnxruntime-fp16"]
        if drop > FP16_MAX_ACCURACY_DROP:
            report.problems.append(
                f"FP16 loses {100 * drop:.2f} points of accuracy "
                f"(allowed {100 * FP16_MAX_ACCURACY_DROP:.1f})"
            )
    return report


def _labelled(verdict: OutputVerdict, label: str) -> OutputVerdict:
    return OutputVerdict(
        f"{label}.{verdict.graph}",
        verdict.name,
        verdict.shape,
        verdict.max_abs,
        verdict.mean_abs,
        verdict.atol,
        verdict.rtol,
        verdict.passed,
    )


def _exact_match(outputs: list[list[int]], targets: list[str], tokenizer) -> float:
    hits = sum(tokenizer.decode_target(o) == t for o, t in zip(outputs, targets, strict=True))
    return hits / len(targets)


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="transduce-parity-") as scratch:
        work_dir = args.work_dir or Path(scratch)
        report = run_parity(
            args.checkpoint,
            work_dir,
            test_size=args.test_size,
            beam=args.beam,
            max_new_tokens=args.max_new_tokens,
            beam_test_size=args.beam_test_size,
            progress=True,
        )
    for line in report.lines():
        print(line)
    print("parity PASSED" if report.passed else "parity FAILED")
    return 0 if report.passed else 1
