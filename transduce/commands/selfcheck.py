"""Check TensorRT on this machine: build engines, run the GPU tests and a benchmark, one report.

Needs an NVIDIA GPU, TensorRT (10.15+ or 11.x) and cuda-python (`pip install 'transduce[gpu]'`),
plus torch and onnx to export the models and a source checkout for the GPU tests. It builds
the tiny and demo engines, runs `pytest -m gpu`, times greedy decoding of the demo engines
with and without CUDA graphs, and prints the TensorRT version, GPU, verdicts and latencies.
Without a GPU or TensorRT it prints what is missing and exits with status 1. Example:
    transduce selfcheck --workdir /tmp/transduce-selfcheck
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transduce import paths
from transduce.engines.manifest import BuildSettings
from transduce.engines.profiles import ShapeSpec

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
GPU_TESTS = ROOT / "tests" / "engines" / "test_gpu_engines.py"
# the GPU tests use the engines this command built when this variable names its workdir
WORKDIR_VARIABLE = "TRANSDUCE_SELFCHECK_DIR"
OLDEST_TENSORRT = (10, 15)
# profiles of the two engine sets: tiny gets two, so that profile choice is exercised
TINY_SPECS = [
    ShapeSpec(max_batch=2, max_src_len=8, max_tgt_len=8),
    ShapeSpec(max_batch=8, max_src_len=32, max_tgt_len=32, opt_batch=4, opt_src_len=16),
]
# generate_many (the token parity check) sends up to 64 rows, beams included
DEMO_SPECS = [ShapeSpec(max_batch=64, max_src_len=16, max_tgt_len=32, opt_batch=16, opt_src_len=8)]
BENCHMARK_NUMBERS = [7, 42, 1905, 80017, 999999, 300000, 123456, 555]
BENCHMARK_REPEATS = 20


@dataclass
class Requirement:
    name: str
    detail: str  # the version found, or what went wrong
    ok: bool
    fix: str = ""


@dataclass
class Report:
    requirements: list[Requirement] = field(default_factory=list)
    builds: dict[str, str] = field(default_factory=dict)
    tests: list[tuple[str, str]] = field(default_factory=list)  # (test id, outcome)
    benchmark: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return (
            all(r.ok for r in self.requirements)
            and not self.errors
            and bool(self.tests)
            and all(outcome == "passed" for _, outcome in self.tests)
        )


def _version_of(module: Any) -> str:
    return str(getattr(module, "__version__", "unknown version"))


def probe_requirements(device: int = 0) -> list[Requirement]:
    """What the self-check needs, each with the version found or the reason it is unusable."""
    found = []
    try:
        import tensorrt as trt

        version = tuple(int(p) for p in trt.__version__.split(".")[:2])
        supported = version >= OLDEST_TENSORRT
        found.append(
            Requirement(
                "tensorrt",
                trt.__version__ + ("" if supported else " (older than 10.15)"),
                supported,
                "pip install 'transduce[gpu]' (tensorrt-cu13)",
            )
        )
    except Exception as error:  # an ImportError, or an OSError for a missing libnvinfer
        found.append(
            Requirement(
                "tensorrt", f"not importable: {error}", False, "pip install 'transduce[gpu]'"
            )
        )

    try:
        import cuda.bindings
        from cuda.bindings import runtime as cudart

        found.append(Requirement("cuda-python", _version_of(cuda.bindings), True))
        error, count = cudart.cudaGetDeviceCount()
        if error != cudart.cudaError_t.cudaSuccess:
            _, text = cudart.cudaGetErrorString(error)
            detail = f"none usable ({error.name}: {text.decode()})"
            found.append(Requirement("GPU", detail, False, "an NVIDIA GPU and driver"))
        elif count <= device:
            found.append(Requirement("GPU", f"device {device} of {count}", False, "--device"))
        else:
            error, props = cudart.cudaGetDeviceProperties(device)
            if error != cudart.cudaError_t.cudaSuccess:
                found.append(Requirement("GPU", f"device {device}: {error.name}", False))
            else:
                name = props.name.split(b"\0", 1)[0].decode()
                detail = f"{name} (compute capability {props.major}.{props.minor})"
                found.append(Requirement("GPU", detail, True))
    except ImportError as error:
        found.append(
            Requirement("cuda-python", f"not importable: {error}", False, "pip install cuda-python")
        )
        found.append(Requirement("GPU", "unknown without cuda-python", False))

    for module, fix in (
        ("torch", "pip install 'transduce[torch]' (exports the models)"),
        ("onnx", "pip install 'transduce[torch]'"),
        ("pytest", "pip install pytest (runs the GPU tests)"),
    ):
        try:
            found.append(Requirement(module, _version_of(importlib.import_module(module)), True))
        except ImportError as error:
            found.append(Requirement(module, f"not importable: {error}", False, fix))
    found.append(
        Requirement(
            "GPU tests",
            str(GPU_TESTS.relative_to(ROOT)) if GPU_TESTS.is_file() else f"{GPU_TESTS} missing",
            GPU_TESTS.is_file(),
            "run from a source checkout of transduce",
        )
    )
    return found


def missing_requirements(device: int = 0) -> list[str]:
    """One line per unmet requirement (empty when the GPU checks can run)."""
    return [
        f"{r.name}: {r.detail}" + (f"; fix: {r.fix}" if r.fix else "")
        for r in probe_requirements(device)
        if not r.ok
    ]


def tiny_reference_model(seed: int = 0) -> Any:
    """The seeded tiny-preset model that the GPU tests and this command use."""
    import torch

    from transduce.model import Transformer
    from transduce.model.config import preset

    torch.manual_seed(seed)
    return Transformer(preset("tiny")).eval()


def demo_reference_model() -> Any:
    """The demo model: the cached checkpoint, trained first (about a minute) when missing."""
    from transduce.commands.train_demo import train_and_save
    from transduce.model.checkpoint import load_checkpoint
    from transduce.model.train import TrainConfig

    checkpoint = paths.demo_checkpoint_dir()
    if not (checkpoint / "model.safetensors").is_file():
        logger.info("No demo checkpoint at %s; training one", checkpoint)
        train_and_save(checkpoint, TrainConfig(), progress=False)
    return load_checkpoint(checkpoint).eval()


def prepare_engines(
    model: Any, workdir: Path, name: str, specs: list[ShapeSpec], *, device: int = 0
) -> tuple[Path, Path, float]:
    """Export `model` in FP16 and build its engines under `workdir`; rebuild only if stale.

    Returns:
        (export dir, engine dir, seconds spent).
    """
    from transduce.engines.build import build_engines
    from transduce.export.onnx_export import onnx_from_model
    from transduce.model.precision import FP16

    start = time.perf_counter()
    export_dir, engine_dir = workdir / f"{name}-fp16", workdir / f"{name}-trt"
    onnx_from_model(model, export_dir, precision=FP16)
    build_engines(
        export_dir,
        engine_dir,
        specs,
        BuildSettings(),
        timing_cache=workdir / "timing.cache",
        device=device,
        progress=False,
    )
    return export_dir, engine_dir, time.perf_counter() - start


def run_gpu_tests(workdir: Path) -> list[tuple[str, str]]:
    """Run `pytest -m gpu` on the GPU tests; (test id, outcome) per test."""
    junit = workdir / "gpu-tests.xml"
    env = {**os.environ, WORKDIR_VARIABLE: str(workdir)}
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", f"--junitxml={junit}"]
    subprocess.run([*command, str(GPU_TESTS)], cwd=ROOT, env=env, check=False)
    return junit_outcomes(junit)


def junit_outcomes(path: Path) -> list[tuple[str, str]]:
    """(test name, passed|failed|error|skipped) for each test case of a JUnit XML report."""
    if not path.is_file():
        return []
    outcomes = []
    for case in ElementTree.parse(path).iter("testcase"):
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            if case.find(tag) is not None:
                outcome = "failed" if tag == "failure" else tag
        outcomes.append((case.get("name", "?"), outcome))
    return outcomes


def benchmark(engine_dir: Path, export_dir: Path, device: int = 0) -> list[str]:
    """Median latency of greedy decoding of a few demo numbers, CUDA graphs off and on."""
    import numpy as np

    from transduce.model.demo import demo_tokenizer
    from transduce.runtime.generate import GenerationConfig, generate, pad_sources
    from transduce.runtime.tensorrt_backend import TensorRTBackend

    tokenizer = demo_tokenizer()
    sources = [tokenizer.encode_source(str(n)) for n in BENCHMARK_NUMBERS]
    src = pad_sources(sources, tokenizer.pad_id)
    config = GenerationConfig(max_new_tokens=24)
    lines = []
    for cuda_graphs in (False, True):
        with TensorRTBackend(
            engine_dir, onnx_dir=export_dir, device=device, cuda_graphs=cuda_graphs
        ) as backend:
            for _ in range(3):  # warm-up: contexts, buffers, graph capture
                generate(backend, src, config)
            request_ms, step_ms, encode_ms = [], [], []
            for _ in range(BENCHMARK_REPEATS):
                result = generate(backend, src, config)
                request_ms.append(1000 * result.timings.total_seconds)
                encode_ms.append(1000 * result.timings.encode_seconds)
                step_ms.append(1000 * float(np.median(result.timings.step_seconds)))
        lines.append(
            f"demo greedy, {len(sources)} rows, CUDA graphs {'on ' if cuda_graphs else 'off'}: "
            f"{statistics.median(request_ms):.2f} ms per request, "
            f"{statistics.median(encode_ms):.2f} ms encoder, "
            f"{statistics.median(step_ms):.3f} ms per decoder step "
            f"(medians of {BENCHMARK_REPEATS})"
        )
    return lines


def print_report(report: Report) -> None:
    print("transduce selfcheck")
    for requirement in report.requirements:
        mark = "ok     " if requirement.ok else "MISSING"
        print(f"  {mark} {requirement.name:<12} {requirement.detail}")
        if not requirement.ok and requirement.fix:
            print(f"          {'':<12} fix: {requirement.fix}")
    for name, line in report.builds.items():
        print(f"  engines {name:<8} {line}")
    if report.tests:
        counts: dict[str, int] = {}
        for _, outcome in report.tests:
            counts[outcome] = counts.get(outcome, 0) + 1
        print("  GPU tests: " + ", ".join(f"{n} {outcome}" for outcome, n in counts.items()))
        for name, outcome in report.tests:
            print(f"    {outcome.upper():<7} {name}")
    for line in report.benchmark:
        print(f"  benchmark {line}")
    for error in report.errors:
        print(f"  ERROR {error}")
    print(f"verdict: {'PASS' if report.passed else 'FAIL'}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help=f"where exports, engines and reports go (default: {paths.home() / 'selfcheck'})",
    )
    parser.add_argument("--device", type=int, default=0, help="CUDA device index (default: 0)")
    parser.add_argument("--skip-benchmark", action="store_true", help="no benchmark")


def run(args: argparse.Namespace) -> int:
    report = Report(requirements=probe_requirements(args.device))
    if not all(r.ok for r in report.requirements):
        print_report(report)
        return 1
    workdir = args.workdir or paths.home() / "selfcheck"
    workdir.mkdir(parents=True, exist_ok=True)

    # 1) the engines, once (the GPU tests reuse them through WORKDIR_VARIABLE)
    built = {}
    for name, make_model, specs in (
        ("tiny", tiny_reference_model, TINY_SPECS),
        ("demo", demo_reference_model, DEMO_SPECS),
    ):
        try:
            export_dir, engine_dir, seconds = prepare_engines(
                make_model(), workdir, name, specs, device=args.device
            )
        except Exception as error:  # report every stage, even after one fails
            logger.exception("Building the %s engines failed", name)
            report.errors.append(f"{name} engines: {error}")
            continue
        built[name] = (export_dir, engine_dir)
        report.builds[name] = f"ready in {seconds:.1f} s ({engine_dir})"

    # 2) the GPU tests, 3) the benchmark
    report.tests = run_gpu_tests(workdir)
    if not report.tests:
        report.errors.append("the GPU tests produced no results; run them with pytest -m gpu")
    if not args.skip_benchmark and "demo" in built:
        try:
            report.benchmark = benchmark(built["demo"][1], built["demo"][0], args.device)
        except Exception as error:
            logger.exception("The benchmark failed")
            report.errors.append(f"benchmark: {error}")
    print_report(report)
    return 0 if report.passed else 1
