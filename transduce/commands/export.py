"""Export a checkpoint to ONNX: encoder.onnx, decoder.onnx, manifest.json and the tokenizer.

Examples:
    transduce export ~/.cache/transduce/demo/checkpoint --output artifacts/demo-fp32
    transduce export CHECKPOINT --output artifacts/demo-fp16 --precision fp16
    transduce export CHECKPOINT --output artifacts/demo-int8 --quantize int8
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

import transduce
from transduce.export.manifest import MANIFEST_FILE
from transduce.export.onnx_export import DEFAULT_OPSET, DEFAULT_TOP_K, onnx_from_model
from transduce.files import sha256_file
from transduce.model.checkpoint import CONFIG_FILE, WEIGHTS_FILE, load_checkpoint
from transduce.model.precision import PrecisionPolicy
from transduce.text import load_tokenizer

logger = logging.getLogger(__name__)

PRECISIONS = {"fp32": "float32", "fp16": "float16"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = PrecisionPolicy()
    parser.add_argument("checkpoint", type=Path, help="checkpoint directory (config.json, ...)")
    parser.add_argument(
        "--output",
        type=Path,
        required=True,
        help="export directory to write (replaced as a whole when done)",
    )
    parser.add_argument(
        "--precision",
        choices=sorted(PRECISIONS),
        default="fp32",
        help="fp32, or a strongly typed fp16 graph (default: fp32)",
    )
    parser.add_argument(
        "--no-layer-norm-fp32",
        dest="layer_norm_fp32",
        action="store_false",
        default=defaults.layer_norm_fp32,
        help="fp16 only: run LayerNorm in fp16 too (default: fp32 LayerNorm)",
    )
    parser.add_argument(
        "--no-softmax-fp32",
        dest="softmax_fp32",
        action="store_false",
        default=defaults.softmax_fp32,
        help="fp16 only: run the attention softmax in fp16 (default: fp32)",
    )
    parser.add_argument(
        "--top-k",
        type=int,
        default=DEFAULT_TOP_K,
        help=f"width of the decoder's top_ids output; beam search needs 2 x beams "
        f"(default: {DEFAULT_TOP_K})",
    )
    parser.add_argument(
        "--quantize",
        choices=["int8"],
        default=None,
        help="fp32 only: quantize the weights to int8 for the CPU (dynamic quantization); "
        "the output then holds the int8 graphs",
    )
    parser.add_argument(
        "--opset",
        type=int,
        default=DEFAULT_OPSET,
        help=f"ONNX opset (default: {DEFAULT_OPSET}, parses on TensorRT 10 and 11)",
    )


def export_checkpoint(
    checkpoint: Path,
    output: Path,
    policy: PrecisionPolicy,
    *,
    top_k: int = DEFAULT_TOP_K,
    opset: int = DEFAULT_OPSET,
    reuse: bool = False,
) -> dict:
    """Export a checkpoint directory; its tokenizer is copied beside the graphs.

    With `reuse`, an existing export made from the same checkpoint files with the same
    settings and transduce version is kept as it is.
    """
    source = {
        "checkpoint": str(checkpoint),
        "config_sha256": sha256_file(checkpoint / CONFIG_FILE),
        "weights_sha256": sha256_file(checkpoint / WEIGHTS_FILE),
    }
    if reuse and (output / MANIFEST_FILE).is_file():
        manifest = json.loads((output / MANIFEST_FILE).read_text())
        same = (
            {k: manifest["source"].get(k) for k in ("config_sha256", "weights_sha256")}
            == {k: source[k] for k in ("config_sha256", "weights_sha256")}
            and manifest["precision"] == policy.to_dict()
            and (manifest["top_k"], manifest["opset"]) == (top_k, opset)
            and manifest["transduce_version"] == transduce.__version__
        )
        if same:
            logger.info("Reusing %s: made from the same checkpoint and settings", output)
            return manifest

    def copy_tokenizer(directory: Path) -> None:
        try:
            load_tokenizer(checkpoint).save(directory)
        except FileNotFoundError:
            logger.warning("%s has no tokenizer; `transduce generate` will need --ids", checkpoint)

    return onnx_from_model(
        load_checkpoint(checkpoint),
        output,
        precision=policy,
        top_k=top_k,
        opset=opset,
        source=source,
        extras=copy_tokenizer,
    )


def run(args: argparse.Namespace) -> int:
    policy = PrecisionPolicy(
        dtype=PRECISIONS[args.precision],
        layer_norm_fp32=args.layer_norm_fp32,
        softmax_fp32=args.softmax_fp32,
    )
    if args.quantize and policy.dtype != "float32":
        raise ValueError(
            f"--quantize {args.quantize} needs --precision fp32 (got {args.precision}); "
            "int8 weights are made from the fp32 graphs"
        )
    fp32_output = args.output.with_name(f".{args.output.name}.fp32") if args.quantize else None
    manifest = export_checkpoint(
        args.checkpoint, fp32_output or args.output, policy, top_k=args.top_k, opset=args.opset
    )
    if args.quantize:
        from transduce.export.quantize import quantize_export

        manifest = quantize_export(fp32_output, args.output)
        shutil.rmtree(fp32_output)
    for name, graph in manifest["graphs"].items():
        print(f"{name}: {args.output / graph['file']} ({len(graph['operators'])} operator types)")
    return 0
