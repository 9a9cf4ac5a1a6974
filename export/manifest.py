"""The export manifest: what the graphs were made from, how, and their I/O tables."""

from __future__ import annotations

import json
from pathlib import Path

import onnx

import transduce
from transduce.files import sha256_file, write_text_atomic
from transduce.model.config import ModelConfig
from transduce.model.precision import PrecisionPolicy

FORMAT = "transduce-onnx/1"
MANIFEST_FILE = "manifest.json"

_ONNX_DTYPES = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.BOOL: "bool",
}


def _io_table(values) -> list[dict]:
    table = []
    for value in values:
        tensor = value.type.tensor_type
        shape = [d.dim_param or d.dim_value for d in tensor.shape.dim]
        dtype = _ONNX_DTYPES.get(tensor.elem_type, onnx.TensorProto.DataType.Name(tensor.elem_type))
        table.append({"name": value.name, "dtype": dtype, "shape": shape})
    return table


def graph_entry(path: Path) -> dict:
    """File name, hash and I/O table of one exported graph."""
    model = onnx.load(path, load_external_data=False)
    return {
        "file": path.name,
        "sha256": sha256_file(path),
        "inputs": _io_table(model.graph.input),
        "outputs": _io_table(model.graph.output),
        "operators": sorted({node.op_type for node in model.graph.node}),
    }


def _tool_versions() -> dict[str, str]:
    import onnxruntime
    import onnxscript
    import torch

    return {
        "transduce": transduce.__version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxscript": onnxscript.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def make_manifest(
    *,
    config: ModelConfig,
    precision: PrecisionPolicy,
    opset: int,
    top_k: int,
    graphs: dict[str, dict],
    source: dict,
    trt_target: str,
) -> dict:
    return {
        "format": FORMAT,
        "transduce_version": transduce.__version__,
        "source": source,
        "model": config.to_dict(),
        "precision": precision.to_dict(),
        "opset": opset,
        "top_k": top_k,
        "trt_parser_checked": trt_target,
        "tools": _tool_versions(),
        "graphs": graphs,
    }


def write_manifest(directory: Path, manifest: dict) -> Path:
    path = directory / MANIFEST_FILE
    write_text_atomic(path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path
