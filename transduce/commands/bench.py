"""Benchmark transduce's backends against CPU peers, on the same weights and the same work.

Fixed-length mode (default): a seeded model of a preset, sources of --src-len ids, exactly
--new-tokens generated per row (EOS suppressed in every engine), greedy at --batches and beam
search at --beam-batches. Demo mode: the trained demo model on its held-out test set, with
exact-match accuracy next to speed. Each engine runs in a worker process of its own; engines
take turns run by run; the report (JSON, markdown, PNG) goes to --output.

Examples:
    transduce bench --output results/bench-base
    transduce bench --mode demo --output results/bench-demo
    transduce bench --preset tiny --runs 1 --engines onnxruntime-fp32 ctranslate2-fp32
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transduce import paths
from transduce.bench_engines import ENGINES, PEER_ENGINES
from transduce.bench_report import (
    decoder_macs_per_token,
    encoder_macs_per_token,
    write_report,
)
from transduce.files import sha256_file

logger = logging.getLogger(__name__)

DEFAULT_BATCHES = (1, 8, 16, 32)
VERIFY_ROWS, VERIFY_TOKENS = 2, 8  # the pre-timing parity check: golden greedy, fp32 engines
# int8 engines are judged on a trained model (the demo task bar), not on random weights
INT8_NOTE = (
    " (expected for int8 on random weights, whose top logits are near ties; the int8 bar is "
    "demo accuracy, see tests/export/test_quantize.py)"
)
STAMP_FILE = "source.json"  # beside a peer model: the checkpoint hash it was converted from


@dataclass(frozen=True)
class Workload:
    name: str
    batch: int  # source rows per request
    beam: int
    batches: list  # the request: batches of source id lists
    new_tokens: int  # max_new_tokens
    min_new_tokens: int

    @property
    def rows(self) -> int:
        return self.batch * self.beam

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "batch": self.batch,
            "beam": self.beam,
            "rows": self.rows,
            "new_tokens": self.new_tokens,
            "min_new_tokens": self.min_new_tokens,
            "requests_per_run": len(self.batches),
        }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mode", choices=["fixed", "demo"], default="fixed", help="workload")
    parser.add_argument("--preset", default="base", help="fixed mode: model preset (base)")
    parser.add_argument("--seed", type=int, default=0, help="weights and sources seed")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="a checkpoint to use instead of the preset (fixed) or the demo model (demo)",
    )
    parser.add_argument("--src-len", type=int, default=32, help="fixed mode: source tokens")
    parser.add_argument("--new-tokens", type=int, default=32, help="generated tokens per row")
    parser.add_argument("--batches", type=int, nargs="+", default=list(DEFAULT_BATCHES))
    parser.add_argument("--beam-size", type=int, default=4, help="beam width (0: no beam runs)")
    parser.add_argument("--beam-batches", type=int, nargs="*", default=[1])
    parser.add_argument("--demo-size", type=int, default=128, help="demo mode: test sentences")
    parser.add_argument(
        "--engines", nargs="+", choices=ENGINES, default=list(ENGINES), help="engines to run"
    )
    parser.add_argument("--runs", type=int, default=5, help="timed runs per engine and workload")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first")
    parser.add_argument("--threads", type=int, default=2, help="threads per engine")
    parser.add_argument("--tensorrt", type=Path, default=None, help="TensorRT engine directory")
    parser.add_argument(
        "--artifacts",
        type=Path,
        default=None,
        help=f"where exports and peer models are cached (default: {paths.home() / 'bench'})",
    )
    parser.add_argument("--output", type=Path, default=Path("bench-results"), help="results")
    parser.add_argument("--no-plots", dest="plots", action="store_false", help="skip the PNGs")
    parser.add_argument("--no-gemm", dest="gemm", action="store_false", help="skip GEMM rates")


# ---------------------------------------------------------------------------------------------
# artifacts: the model, its exports and the peers' conversions, cached by checkpoint hash


def _model_checkpoint(args, artifacts_dir: Path) -> Path:
    """The checkpoint under test: given, the demo model, or a seeded preset model."""
    if args.checkpoint:
        return args.checkpoint
    if args.mode == "demo":
        checkpoint = paths.demo_checkpoint_dir()
        if not (checkpoint / "config.json").is_file():
            from transduce.commands.train_demo import train_and_save
            from transduce.model.train import TrainConfig

            logger.info("No demo checkpoint at %s; training it (about a minute)", checkpoint)
            train_and_save(checkpoint, TrainConfig(), progress=False)
        return checkpoint
    checkpoint = artifacts_dir / f"{args.preset}-seed{args.seed}" / "checkpoint"
    if not (checkpoint / "config.json").is_file():
        import torch

        from transduce.model import Transformer
        from transduce.model.checkpoint import save_checkpoint
        from transduce.model.config import preset

        torch.manual_seed(args.seed)
        save_checkpoint(Transformer(preset(args.preset)).eval(), checkpoint)
    return checkpoint


def _stale(directory: Path, weights_hash: str) -> bool:
    """True unless `directory` was made from the weights with this hash."""
    for name in ("manifest.json", STAMP_FILE):
        path = directory / name
        if path.is_file():
            source = json.loads(path.read_text()).get("source", {})
            return source.get("weights_sha256") != weights_hash
    return True


def prepare_artifacts(args, engines: list[str]) -> tuple[dict, dict]:
    """Build what the engines load; returns (artifact paths, {engine: why unavailable})."""
    from transduce.commands.export import export_checkpoint
    from transduce.model.checkpoint import WEIGHTS_FILE, load_checkpoint
    from transduce.model.precision import FP16, FP32

    root = args.artifacts or paths.home() / "bench"
    checkpoint = _model_checkpoint(args, root)
    weights_hash = sha256_file(checkpoint / WEIGHTS_FILE)
    tag = f"{checkpoint.parent.name}-{weights_hash[:8]}"
    artifacts = {"checkpoint": str(checkpoint)}
    unavailable = {}
    if args.tensorrt:
        artifacts["tensorrt"] = str(args.tensorrt)

    wanted = {e.split("-", 1)[1] for e in engines if e.startswith("onnxruntime-")}
    for variant, policy in (("fp32", FP32), ("fp16", FP16)):
        if variant in wanted or (variant == "fp32" and "int8" in wanted):
            directory = root / f"{tag}-onnx-{variant}"
            if _stale(directory, weights_hash):
                logger.info("Exporting %s (%s); a base model takes minutes", tag, variant)
                export_checkpoint(checkpoint, directory, policy)
            artifacts[f"onnx-{variant}"] = str(directory)
    if "int8" in wanted:
        from transduce.export.quantize import quantize_export

        directory = root / f"{tag}-onnx-int8"
        if _stale(directory, weights_hash):
            quantize_export(Path(artifacts["onnx-fp32"]), directory)
        artifacts["onnx-int8"] = str(directory)

    ct2 = [e for e in engines if e.startswith("ctranslate2-")]
    if ct2:
        from transduce.peers import PeerUnavailable, ctranslate2_from_model

        model = load_checkpoint(checkpoint)
        for engine in ct2:
            variant = engine.split("-", 1)[1]
            directory = root / f"{tag}-ct2-{variant}"
            try:
                if _stale(directory, weights_hash):
                    quantization = {"fp32": "float32", "int8": "int8"}[variant]
                    ctranslate2_from_model(model, directory, quantization=quantization)
                    stamp = {"source": {"weights_sha256": weights_hash}}
                    (directory / STAMP_FILE).write_text(json.dumps(stamp))
                artifacts[f"ct2-{variant}"] = str(directory)
            except PeerUnavailable as error:
                unavailable[engine] = str(error)
    return artifacts, unavailable


# ---------------------------------------------------------------------------------------------
# workers: one process per engine, one request at a time across all of them


class Worker:
    """A `python -m transduce.bench_engines` process speaking JSON lines."""

    def __init__(self, name: str, threads: int) -> None:
        self.name = name
        env = dict(os.environ)
        # equal thread counts: every library's pool gets the same number
        for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[variable] = str(threads)
        env["TRANSDUCE_BENCH_LOG"] = logging.getLevelName(logging.root.level)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "transduce.bench_engines"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    def send(self, message: dict) -> dict:
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            return {"ok": False, "error": f"worker exited with code {self.process.wait()}"}
        return json.loads(line)

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.process.stdin.flush()
                self.process.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()


def start_workers(engines, artifacts, threads, report) -> dict[str, Worker]:
    """Load every engine in its own worker, one after another; record load results."""
    workers = {}
    for engine in engines:
        worker = Worker(engine, threads)
        reply = worker.send(
            {"cmd": "load", "engine": engine, "artifacts": artifacts, "threads": threads}
        )
        entry = report["engines"][engine]
        if reply.get("ok"):
            entry.update(available=True, **{k: v for k, v in reply.items() if k != "ok"})
            workers[engine] = worker
            logger.info(
                "Loaded %s in %.2f s (RSS %.0f MiB)",
                engine,
                reply["load_seconds"],
                reply["rss_mib"],
            )
        else:
            entry.update(available=False, note=reply.get("error"))
            logger.warning("Skipping %s: %s", engine, reply.get("error"))
            worker.close()
    return workers


# ---------------------------------------------------------------------------------------------
# workloads, verification and the timed loop


def fixed_workloads(args, config) -> list[Workload]:
    rng = np.random.default_rng(args.seed)

    def sources(batch: int) -> list[list[int]]:
        # ids from 3 up avoid pad, bos and eos; every row ends with EOS like tokenized text
        body = rng.integers(3, config.src_vocab_size, (batch, args.src_len - 1))
        return [row + [config.eos_id] for row in body.tolist()]

    n = args.new_tokens
    workloads = [Workload(f"greedy b{b}", b, 1, [sources(b)], n, n) for b in args.batches]
    if args.beam_size > 1:
        workloads += [
            Workload(f"beam{args.beam_size} b{b}", b, args.beam_size, [sources(b)], n, n)
            for b in args.beam_batches
        ]
    return workloads


def demo_workloads(args, checkpoint: Path) -> tuple[list[Workload], list[str]]:
    """Workloads over the demo test set, and the reference texts."""
    from transduce.model.demo import demo_pairs
    from transduce.text import load_tokenizer

    tokenizer = load_tokenizer(checkpoint)
    pairs = demo_pairs(args.demo_size, split="test")
    sources = [tokenizer.encode_source(digits) for digits, _ in pairs]

    def chunks(size: int) -> list:
        return [sources[i : i + size] for i in range(0, len(sources), size)]

    n = args.new_tokens
    workloads = [Workload(f"demo greedy b{b}", b, 1, chunks(b), n, 0) for b in args.batches]
    if args.beam_size > 1:
        workloads += [
            Workload(f"demo beam{args.beam_size} b{b}", b, args.beam_size, chunks(b), n, 0)
            for b in args.beam_batches
        ]
    return workloads, [words for _, words in pairs]


def _request(workload: Workload, *, one_token: bool = False, tokens: bool = False) -> dict:
    batches = workload.batches[:1] if one_token else workload.batches
    return {
        "cmd": "run",
        "batches": batches,
        "max_new_tokens": 1 if one_token else workload.new_tokens,
        "min_new_tokens": 1 if one_token and workload.min_new_tokens else workload.min_new_tokens,
        "beam_size": workload.beam,
        "return_tokens": tokens,
    }


def verify(workers: dict, checkpoint: Path, sources: list[list[int]], report: dict) -> None:
    """Greedy tokens of every engine against the golden decoder, before anything is timed."""
    import torch

    from transduce.model.checkpoint import load_checkpoint
    from transduce.model.golden import greedy

    model = load_checkpoint(checkpoint)
    width = max(len(row) for row in sources)
    src = torch.full((len(sources), width), model.config.pad_id, dtype=torch.long)
    for i, row in enumerate(sources):
        src[i, : len(row)] = torch.tensor(row)
    expected = [h.tokens for h in greedy(model, src, VERIFY_TOKENS)]
    message = {
        "cmd": "run",
        "batches": [sources],
        "max_new_tokens": VERIFY_TOKENS,
        "min_new_tokens": 0,
        "beam_size": 1,
        "return_tokens": True,
    }
    for engine, worker in workers.items():
        if engine == "transformers" and model.config.sinusoid_layout != "halves":
            report["engines"][engine]["verify"] = (
                "not compared: Marian computes sinusoids in the 'halves' layout and this model "
                "uses 'interleaved', so outputs differ while the work per token is the same"
            )
            report["engines"][engine]["comparable"] = False
            continue
        reply = worker.send(message)
        if not reply.get("ok"):
            report["engines"][engine]["verify"] = f"verification run failed: {reply.get('error')}"
            continue
        got = reply["tokens"]
        same = sum(
            a == b for e, g in zip(expected, got, strict=True) for a, b in zip(e, g, strict=False)
        )
        total = sum(len(e) for e in expected)
        identical = got == expected
        report["engines"][engine]["verify_identical"] = identical
        report["engines"][engine]["verify"] = (
            f"greedy tokens identical to the golden decoder ({len(sources)} rows x "
            f"{VERIFY_TOKENS} tokens)"
            if identical
            else f"greedy tokens differ from the golden decoder: {same}/{total} positions agree"
            + (INT8_NOTE if engine.endswith("int8") else "")
        )
        log = logger.info if identical else logger.warning
        log("%s: %s", engine, report["engines"][engine]["verify"])


def timed_loop(workers, workloads, args, report, references=None, tokenizer=None) -> None:
    """Warm-up then timed runs; engines take turns within each run, in rotating order."""
    names = list(workers)
    total = args.warmup + args.runs
    for run in range(total):
        timed = run >= args.warmup
        for workload in workloads:
            order = names[run % len(names) :] + names[: run % len(names)]
            for engine in order:
                worker = workers[engine]
                reply = worker.send(_request(workload, tokens=references is not None))
                if reply.get("ok") and workload.new_tokens > 1 and args.mode == "fixed":
                    one = worker.send(_request(workload, one_token=True))
                    reply["one_token_seconds"] = one.get("seconds")
                comparable = report["engines"][engine].get("comparable", True)
                if references is not None and reply.get("ok") and not comparable:
                    reply.pop("tokens")
                elif references is not None and reply.get("ok"):
                    texts = [tokenizer.decode_target(t) for t in reply.pop("tokens")]
                    hits = sum(t == r for t, r in zip(texts, references, strict=True))
                    reply["accuracy"] = hits / len(references)
                if not reply.get("ok"):
                    logger.warning("%s failed on %s: %s", engine, workload.name, reply.get("error"))
                if timed:
                    reply.update(engine=engine, workload=workload.name, run=run - args.warmup)
                    report["runs"].append(reply)
        logger.info("Run %d/%d done (%s)", run + 1, total, "timed" if timed else "warm-up")


def machine_info() -> dict:
    cpu, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == "unknown CPU":
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "isa": ", ".join(isa) or "no AVX2",
        "load_before": f"{os.getloadavg()[0]:.1f}",
    }


def _model_info(checkpoint: Path, src_len: float, new_tokens: int, label: str) -> dict:
    from transduce.model.checkpoint import load_config

    config = load_config(checkpoint).to_dict()
    D, F = config["d_model"], config["d_ff"]
    layers = config["n_encoder_layers"] * (4 * D * D + 2 * D * F)
    layers += config["n_decoder_layers"] * (8 * D * D + 2 * D * F)
    embeddings = config["tgt_vocab_size"] * D * (1 if config["share_embeddings"] else 2)
    return {
        "description": label,
        "config": config,
        "parameters": layers + embeddings,
        "decoder_macs_per_token": decoder_macs_per_token(config, new_tokens / 2, src_len),
        "encoder_macs_per_token": encoder_macs_per_token(config, src_len),
    }


def _own_arguments(argv: list[str]) -> list[str]:
    """The arguments after `bench` (transduce bench ...) or after the script's name."""
    return argv[argv.index("bench") + 1 :] if "bench" in argv else argv[1:]


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse impossible settings before anything is built; every problem at once."""
    problems = []
    for name, low in (("runs", 1), ("warmup", 0), ("threads", 1), ("new_tokens", 1)):
        if getattr(args, name) < low:
            problems.append(
                f"--{name.replace('_', '-')} must be at least {low}, got {getattr(args, name)}"
            )
    if args.mode == "fixed" and args.src_len < 2:
        problems.append(f"--src-len must be at least 2 (ids plus EOS), got {args.src_len}")
    bad = [b for b in [*args.batches, *args.beam_batches] if b < 1]
    if bad:
        problems.append(f"--batches and --beam-batches must be positive, got {bad}")
    if args.beam_size < 0:
        problems.append(f"--beam-size must be 0 (no beam runs) or more, got {args.beam_size}")
    if problems:
        raise ValueError("invalid bench settings:\n" + "\n".join(f"  - {p}" for p in problems))


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    engines = list(dict.fromkeys(args.engines))
    report: dict = {
        "command": "transduce bench " + shlex.join(_own_arguments(sys.argv)),
        "machine": machine_info(),
        "engines": {e: {"available": False} for e in engines},
        "engine_order": engines,
        "runs": [],
    }

    # 1) the model and everything the engines load, cached between invocations
    artifacts, unavailable = prepare_artifacts(args, engines)
    checkpoint = Path(artifacts["checkpoint"])
    for engine, why in unavailable.items():
        report["engines"][engine]["note"] = why
    if args.mode == "demo":
        from transduce.text import load_tokenizer

        workloads, references = demo_workloads(args, checkpoint)
        tokenizer = load_tokenizer(checkpoint)
        src_len = np.mean([len(s) for w in workloads[:1] for b in w.batches for s in b])
        label = f"demo model ({checkpoint})"
        text = f"{args.demo_size} held-out demo sentences, up to {args.new_tokens} tokens"
    else:
        from transduce.model.checkpoint import load_config

        workloads, references, tokenizer = (
            fixed_workloads(args, load_config(checkpoint)),
            None,
            None,
        )
        src_len = args.src_len
        label = (
            f"{args.preset} preset, seed {args.seed}" if not args.checkpoint else str(checkpoint)
        )
        text = f"source {args.src_len} tokens, exactly {args.new_tokens} generated (EOS suppressed)"
    report["model"] = _model_info(checkpoint, src_len, args.new_tokens, label)
    report["workloads"] = [w.to_dict() for w in workloads]
    report["settings"] = {
        **{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "func"},
        "workload_text": text,
        "plot_title": f"{label}: {text}; {args.threads} threads",
    }

    # 2) this machine's matmul rate and the weight-matmul floor of a decoder step
    if args.gemm:
        config = report["model"]["config"]
        gemm = Worker("gemm", args.threads)
        shapes = {
            "d_model": config["d_model"],
            "d_ff": config["d_ff"],
            "vocab": config["tgt_vocab_size"],
            "layers": config["n_decoder_layers"],
            "rows": sorted({w.rows for w in workloads}),
        }
        reply = gemm.send({"cmd": "gemm", "shapes": shapes, "threads": args.threads})
        gemm.close()
        if reply.pop("ok", False):
            report["gemm"] = reply

    # 3) load, verify, then time; workers always end
    candidates = [e for e in engines if e not in unavailable]
    workers = start_workers(candidates, artifacts, args.threads, report)
    report["reference_engine"] = next((e for e in PEER_ENGINES if e in workers), None)
    try:
        widest = max(workloads, key=lambda w: len(w.batches[0]))
        verify_sources = widest.batches[0][:VERIFY_ROWS]
        verify(workers, checkpoint, verify_sources, report)
        start = time.perf_counter()
        timed_loop(workers, workloads, args, report, references, tokenizer)
        report["bench_seconds"] = time.perf_counter() - start
    finally:
        for worker in workers.values():
            worker.close()
    report["machine"]["load_after"] = f"{os.getloadavg()[0]:.1f}"

    written = write_report(report, args.output, plots=args.plots)
    print((args.output / "bench.md").read_text())
    for path in written:
        print(f"wrote {path}")
    return 0
