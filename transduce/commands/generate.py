"""Generate: read sources (arguments or stdin, one per line) and print their translations.

Examples:
    transduce generate artifacts/demo-fp32 1905 80017
    printf '7\n42\n' | transduce generate artifacts/demo-fp16 --beam 4
    transduce generate artifacts/demo-fp32 --ids "7 8 2"      # token ids in, ids out
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from transduce.runtime.generate import GenerationConfig, generate
from transduce.text import load_tokenizer

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = GenerationConfig()
    parser.add_argument(
        "model",
        type=Path,
        help="an export directory (manifest.json), or a checkpoint with --backend torch",
    )
    parser.add_argument("sources", nargs="*", help="source texts; read from stdin when none")
    parser.add_argument(
        "--backend",
        choices=["onnxruntime", "torch"],
        default="onnxruntime",
        help="onnxruntime (an export directory) or torch (a checkpoint)",
    )
    parser.add_argument(
        "--ids", action="store_true", help="sources are space-separated token ids; print ids"
    )
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=defaults.max_new_tokens,
        help=f"generated tokens per row at most (default: {defaults.max_new_tokens})",
    )
    parser.add_argument(
        "--beam", type=int, default=defaults.beam_size, help="beam size; 1 is greedy (default: 1)"
    )
    parser.add_argument(
        "--length-penalty",
        type=float,
        default=defaults.length_penalty,
        help="beam ranking: score / length ** this (default: 1.0)",
    )
    parser.add_argument(
        "--n-best",
        type=int,
        default=defaults.n_best,
        help="hypotheses printed per source with beam search (default: 1)",
    )
    parser.add_argument("--sample", action="store_true", help="sample instead of the best token")
    parser.add_argument(
        "--temperature",
        type=float,
        default=defaults.temperature,
        help="sampling temperature (default: 1.0)",
    )
    parser.add_argument(
        "--top-k",
        type=int,
        default=defaults.top_k,
        help="sample among the k most likely tokens; 0 is all (default: 0)",
    )
    parser.add_argument(
        "--top-p",
        type=float,
        default=defaults.top_p,
        help="sample within this probability mass (default: 1.0)",
    )
    parser.add_argument("--seed", type=int, default=None, help="sampling seed")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="ONNX Runtime intra-op threads (default: ONNX Runtime's choice)",
    )
    parser.add_argument(
        "--stream",
        action="store_true",
        help="print tokens as they are generated (one source, greedy/sampling)",
    )


def load_backend(kind: str, path: Path, threads: int | None = None):
    if kind == "torch":
        from transduce.model.checkpoint import load_checkpoint
        from transduce.model.torch_backend import TorchBackend

        return TorchBackend(load_checkpoint(path))
    from transduce.runtime.onnxruntime_backend import OnnxRuntimeBackend

    return OnnxRuntimeBackend(path, threads=threads)


def run(args: argparse.Namespace) -> int:
    lines = args.sources or [line.strip() for line in sys.stdin if line.strip()]
    if not lines:
        raise ValueError("no sources given: pass them as arguments or on stdin")
    backend = load_backend(args.backend, args.model, args.threads)
    tokenizer = None if args.ids else load_tokenizer(args.model)
    sources = [
        [int(t) for t in line.split()] if tokenizer is None else tokenizer.encode_source(line)
        for line in lines
    ]
    config = GenerationConfig(
        max_new_tokens=args.max_new_tokens,
        beam_size=args.beam,
        length_penalty=args.length_penalty,
        n_best=args.n_best,
        sample=args.sample,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
    )

    def show(tokens: list[int]) -> str:
        return " ".join(map(str, tokens)) if tokenizer is None else tokenizer.decode_target(tokens)

    if args.stream:
        if len(sources) != 1:
            raise ValueError(f"--stream takes one source, got {len(sources)}")

        def on_step(event) -> None:
            # pad and EOS print as nothing in text mode (specials are skipped)
            print(show([int(event.tokens[0])]), end=" ", flush=True)

        result = generate(backend, sources, config, on_step=on_step)
        print()
    else:
        start = time.perf_counter()
        result = generate(backend, sources, config)
        for line, hypotheses in zip(lines, result.hypotheses, strict=True):
            for h in hypotheses:
                print(f"{line}\t{show(h.tokens)}\t{h.normalized_score:.4f}")
        logger.info(
            "Generated %d rows in %.1f ms", len(lines), 1000 * (time.perf_counter() - start)
        )
    timings = result.timings
    steps = timings.step_seconds
    logger.info(
        "encode %.2f ms, first token %.2f ms, %d steps, median step %.2f ms",
        1000 * timings.encode_seconds,
        1000 * timings.first_token_seconds,
        len(steps),
        1000 * sorted(steps)[len(steps) // 2] if steps else 0.0,
    )
    return 0
