"""INT8 weights for the CPU: dynamic quantization of an FP32 export into a new export directory.

quantize_export("artifacts/demo-fp32", "artifacts/demo-int8")

ONNX Runtime's dynamic quantization stores every weight matrix of a MatMul as int8 with one
scale (per tensor, or per output channel) and quantizes the activations to uint8 at run time,
row by row of each call; the graph I/O stays float32, so the runtime binds the same tensors.
Only MatMuls with a constant weight are touched: the attention products, LayerNorm, softmax
and the output log-softmax stay in float32.

What runs where (onnxruntime 1.32, CPU provider): the quantized products become
`DynamicQuantizeMatMul` (or `MatMulInteger` with `DynamicQuantizeLinear`), executed by MLAS's
u8 x s8 integer GEMM, which dispatches on the CPU's ISA: AVX-512 VNNI or AVX-VNNI (vpdpbusd)
when present, AMX on CPUs that have it, else AVX2 (vpmaddubsw, whose int16 intermediate sums
can saturate; `reduce_range` keeps 7-bit weights to avoid that).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import onnx

from transduce.export.manifest import MANIFEST_FILE, graph_entry, write_manifest
from transduce.files import staged_directory

logger = logging.getLogger(__name__)

QUANTIZATIONS = ("int8-dynamic",)


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    # WORKAROUND: onnxruntime.quantization 1.32 logs one INFO line per activation tensor and a
    # pre-processing hint at WARNING, all on the root logger. We raise the root level to ERROR
    # while it runs. Remove when its messages move to a named logger.
    level = logging.root.level
    logging.root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logging.root.setLevel(level)


def fold_weight_transposes(model: onnx.ModelProto) -> int:
    """Replace Transpose(initializer) feeding a MatMul by a transposed initializer, in place.

    The export writes a tied output layer as MatMul(x, Transpose(embedding)): the weight is
    not a constant of the graph file, so quantizers (which take only constant MatMul weights)
    would leave the largest matrix of the model in float32. The embedding itself stays for
    its Gather. Returns the number of folded Transposes.
    """
    from onnx import numpy_helper

    initializers = {i.name: i for i in model.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    folded = []
    for node in model.graph.node:
        if node.op_type != "Transpose" or node.input[0] not in initializers:
            continue
        users = consumers.get(node.output[0], [])
        if not users or any(u.op_type != "MatMul" or u.input[1] != node.output[0] for u in users):
            continue
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        weight = numpy_helper.to_array(initializers[node.input[0]])
        transposed = weight.transpose(perm) if perm else weight.T
        model.graph.initializer.append(numpy_helper.from_array(transposed.copy(), node.output[0]))
        folded.append(node)
    for node in folded:
        model.graph.node.remove(node)
    return len(folded)


def quantize_export(
    fp32_dir: str | Path,
    output_dir: str | Path,
    *,
    per_channel: bool = True,
    reduce_range: bool = False,
) -> dict:
    """Quantize the graphs of an FP32 export directory into `output_dir` (replaced when done).

    Args:
        fp32_dir: a directory written by `transduce export` with precision fp32.
        output_dir: the INT8 export directory: graphs, manifest and the tokenizer files.
        per_channel: one weight scale per output channel (more accurate) instead of one per
            matrix.
        reduce_range: 7-bit weights, for CPUs without VNNI whose AVX2 kernel could saturate.

    Returns:
        The new manifest: the FP32 one with new graph entries, `precision.quantization` set
        and a `quantized_from` record; `precision.dtype` stays "float32" (the I/O dtype).

    Raises:
        ValueError: the input is not an FP32 export.
    """
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32_dir, output_dir = Path(fp32_dir), Path(output_dir)
    manifest = json.loads((fp32_dir / MANIFEST_FILE).read_text())
    precision = manifest["precision"]
    if precision.get("dtype") != "float32" or precision.get("quantization"):
        raise ValueError(
            f"{fp32_dir} is a {precision.get('quantization') or precision.get('dtype')} "
            "export, not fp32; quantize an fp32 export (transduce export CHECKPOINT "
            "--precision fp32)"
        )

    start = time.perf_counter()
    with staged_directory(output_dir) as staging:
        graphs = {}
        for name, graph in manifest["graphs"].items():
            graph_model = onnx.load(fp32_dir / graph["file"])
            logger.debug("Folded %d weight transposes", fold_weight_transposes(graph_model))
            with _quiet_root_logger():
                quantize_dynamic(
                    graph_model,
                    staging / graph["file"],
                    op_types_to_quantize=["MatMul"],
                    per_channel=per_channel,
                    reduce_range=reduce_range,
                    weight_type=QuantType.QInt8,
                    extra_options={"MatMulConstBOnly": True},
                )
            onnx.checker.check_model(str(staging / graph["file"]))
            graphs[name] = graph_entry(staging / graph["file"])
        # the tokenizer and anything else beside the graphs travel along
        for path in fp32_dir.iterdir():
            known = {MANIFEST_FILE, *(g["file"] for g in manifest["graphs"].values())}
            if path.is_file() and path.name not in known:
                shutil.copy2(path, staging / path.name)

        manifest = {
            **manifest,
            "graphs": graphs,
            "precision": {**precision, "quantization": "int8-dynamic"},
            "quantization": {
                "method": "onnxruntime.quantization.quantize_dynamic",
                "op_types": ["MatMul"],
                "weight_type": "int8",
                "activations": "uint8, quantized per call",
                "per_channel": per_channel,
                "reduce_range": reduce_range,
                "onnxruntime": onnxruntime.__version__,
            },
            "quantized_from": {
                "directory": str(fp32_dir),
                "graphs": {n: g["sha256"] for n, g in manifest["graphs"].items()},
            },
            "tools": {**manifest.get("tools", {}), "onnxruntime": onnxruntime.__version__},
        }
        write_manifest(staging, manifest)
    logger.info(
        "Quantized %s into %s (int8 dynamic, per_channel=%s) in %.1f s",
        fp32_dir.name,
        output_dir.name,
        per_channel,
        time.perf_counter() - start,
    )
    return manifest
