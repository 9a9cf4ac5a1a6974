"""Build FP16 TensorRT engines from an FP16 export directory (needs a GPU and TensorRT).

Only stale engines are rebuilt (changed ONNX, TensorRT, GPU, shapes or flags). Each shape
option takes one value per optimization profile, or one value for all of them.
Examples:
    transduce build artifacts/demo-fp16 --output artifacts/demo-trt --max-batch 16
    transduce build EXPORT --output ENGINES --max-batch 4 64 --max-src-len 128 --opt-batch 1 16
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import re
import sys
from pathlib import Path

from transduce.engines.build import EngineBuildError, build_engines
from transduce.engines.manifest import PLAN_FILES, BuildSettings
from transduce.engines.profiles import ShapeSpec

logger = logging.getLogger(__name__)

# --workspace units; a bare number means MiB
UNITS = {"": 2**20, "b": 1, "k": 2**10, "kib": 2**10, "m": 2**20, "mib": 2**20}
UNITS |= {"g": 2**30, "gib": 2**30, "kb": 10**3, "mb": 10**6, "gb": 10**9}
SHAPE_OPTIONS = [field.name for field in dataclasses.fields(ShapeSpec)]


def parse_bytes(text: str) -> int:
    """'4GiB', '512M', '1073741824B' or '2048' (MiB) -> bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if match is None or match.group(2).lower() not in UNITS:
        raise argparse.ArgumentTypeError(
            f"workspace size {text!r} is not a number with an optional unit (B, KiB, MiB, GiB)"
        )
    return int(float(match.group(1)) * UNITS[match.group(2).lower()])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    shapes, settings = ShapeSpec(), BuildSettings()
    parser.add_argument("export_dir", type=Path, help="export directory made with --precision fp16")
    parser.add_argument("--output", type=Path, required=True, help="engine directory to write")
    help_texts = {
        "max_batch": f"largest rows per request, beams included (default: {shapes.max_batch})",
        "max_src_len": "largest source length (default: the model's max_positions)",
        "max_tgt_len": "cache capacity: target positions (default: the model's max_positions)",
        "opt_batch": "typical rows TensorRT tunes for (default: --max-batch)",
        "opt_src_len": "typical source length (default: --max-src-len)",
        "opt_tgt_len": "typical capacity (default: --max-tgt-len)",
    }
    for name in SHAPE_OPTIONS:
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=int, nargs="+", default=None, help=help_texts[name]
        )
    parser.add_argument(
        "--workspace",
        type=parse_bytes,
        default=settings.workspace_bytes,
        help="workspace memory limit, such as 4GiB (default: TensorRT's, all device memory)",
    )
    parser.add_argument(
        "--opt-level",
        type=int,
        default=settings.optimization_level,
        help=f"builder optimization level 0..5 (default: {settings.optimization_level})",
    )
    parser.add_argument(
        "--timing-cache",
        type=Path,
        default=None,
        help="timing cache (default: OUTPUT/timing.cache)",
    )
    parser.add_argument(
        "--tf32",
        action=argparse.BooleanOptionalAction,
        default=settings.tf32,
        help="allow TF32 in the FP32 parts (normalization, softmax) (default: off)",
    )
    parser.add_argument(
        "--hardware-compatible",
        action="store_true",
        help="one plan for every GPU from Ampere on (slower kernels)",
    )
    parser.add_argument(
        "--version-compatible",
        action="store_true",
        help="plans also load on newer TensorRT of the same major version",
    )
    parser.add_argument("--force", action="store_true", help="rebuild even up-to-date engines")
    parser.add_argument("--device", type=int, default=0, help="CUDA device index (default: 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def specs_from_args(args: argparse.Namespace) -> list[ShapeSpec]:
    """One ShapeSpec per profile: each option gives one value per profile, or one for all.

    Raises:
        ValueError: When options give different numbers of profiles.
    """
    given = {name: getattr(args, name) for name in SHAPE_OPTIONS if getattr(args, name)}
    counts = {len(values) for values in given.values()} - {1}
    if len(counts) > 1:
        raise ValueError(
            "shape options give different numbers of profiles "
            + ", ".join(f"--{n.replace('_', '-')}: {len(v)}" for n, v in given.items())
            + "; give each option one value per profile, or one value for all"
        )
    n_profiles = counts.pop() if counts else 1
    return [
        ShapeSpec(**{n: v[i] if len(v) > 1 else v[0] for n, v in given.items()})
        for i in range(n_profiles)
    ]


def settings_from_args(args: argparse.Namespace) -> BuildSettings:
    return BuildSettings(
        tf32=args.tf32,
        optimization_level=args.opt_level,
        workspace_bytes=args.workspace,
        hardware_compatible=args.hardware_compatible,
        version_compatible=args.version_compatible,
    )


def run(args: argparse.Namespace) -> int:
    try:
        manifest = build_engines(
            args.export_dir,
            args.output,
            specs_from_args(args),
            settings_from_args(args),
            timing_cache=args.timing_cache,
            force=args.force,
            device=args.device,
            progress=not args.no_progress,
        )
    except ImportError as error:
        logger.error(
            "TensorRT engines need tensorrt and cuda-python (%s); install them with "
            "pip install 'transduce[gpu]' on a machine with an NVIDIA GPU",
            error,
        )
        return 1
    except EngineBuildError as error:
        logger.error("%s", error)
        return 1

    platform = manifest["platform"]
    print(f"engines {args.output}")
    print(f"tensorrt {platform['tensorrt_version']} on {platform['gpu_name']}")
    for graph, entry in manifest["engines"].items():
        state = "built" if graph in manifest["built"] else "up to date"
        print(f"  {PLAN_FILES[graph]:<13} {entry['bytes'] / 2**20:8.1f} MiB  {state}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`transduce build` as a script (scripts/build_engines.py); -v may come anywhere."""
    from transduce.cli import main as cli_main

    argv = sys.argv[1:] if argv is None else argv
    verbose = [arg for arg in argv if arg in ("-v", "--verbose")]
    return cli_main([*verbose, "build", *(arg for arg in argv if arg not in verbose)])
