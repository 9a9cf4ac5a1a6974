"""Export a model to the two ONNX graphs of the contract, check them, write the manifest.

onnx_from_model(model, "artifacts/demo-fp16", precision=FP16)
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import onnx
import torch

from transduce.export import contract
from transduce.export.graphs import DecoderStepGraph, EncoderGraph
from transduce.export.manifest import graph_entry, make_manifest, write_manifest
from transduce.export.trt_support import check_trt_support
from transduce.files import staged_directory
from transduce.model.precision import FP32, PrecisionPolicy, with_precision
from transduce.model.transformer import Transformer

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 20  # parses on TensorRT 10.x and 11.x (decomposed attention)
DEFAULT_TOP_K = 8  # beam search needs 2 * beams candidates per row: up to 4 beams
# the oldest TensorRT the graphs must parse on (export/trt_parser_ops/ has the tables)
DEFAULT_TRT_TARGET = "10.15"
ENCODER_FILE, DECODER_FILE = "encoder.onnx", "decoder.onnx"


class ExportError(RuntimeError):
    """The export or one of its checks failed; the message lists every problem."""


def _example_inputs(model: Transformer, dtype: torch.dtype, top_k: int):
    """Distinct example tensors for every input (one tensor passed twice traces as one)."""
    config = model.config
    B, S, L = 2, 5, 3
    H, Dh, n = config.n_heads, config.head_dim, config.n_decoder_layers
    src = torch.full((B, S), config.pad_id, dtype=torch.long)
    src[:, :3] = torch.arange(3, 6) % config.src_vocab_size
    src[1, 3] = config.eos_id
    generator = torch.Generator().manual_seed(0)

    def kv(length: int) -> torch.Tensor:
        return torch.randn(B, H, length, Dh, generator=generator).to(dtype)

    decoder_args = (
        torch.full((B, 1), config.bos_id, dtype=torch.long),
        torch.tensor([1]),
        src != config.pad_id,
        *(kv(S) for _ in range(2 * n)),
        *(kv(L) for _ in range(2 * n)),
    )
    return (src,), decoder_args


def _dynamic_shapes(model: Transformer):
    config = model.config
    Dim = torch.export.Dim
    batch = Dim(contract.BATCH, min=1, max=4096)
    src_len = Dim(contract.SRC_LEN, min=1, max=config.max_positions)
    capacity = Dim(contract.CAPACITY, min=1, max=config.max_positions)
    n = config.n_decoder_layers
    cross = {0: batch, 2: src_len}
    cache = {0: batch, 2: capacity}
    encoder = ({0: batch, 1: src_len},)
    decoder = ({0: batch}, None, {0: batch, 1: src_len}, (*[cross] * (2 * n), *[cache] * (2 * n)))
    return encoder, decoder


def _export(module, args, dynamic_shapes, names, path: Path, opset: int) -> None:
    inputs, outputs = names
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter, not ours
        program = torch.onnx.export(
            module,
            args,
            input_names=inputs,
            output_names=outputs,
            dynamic_shapes=dynamic_shapes,
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    model = program.model_proto
    _make_deterministic(model)
    onnx.save(model, path)


def _make_deterministic(model: onnx.ModelProto) -> None:
    """Drop what differs between two exports of the same weights (stack traces, file names)."""
    model.doc_string = ""
    model.graph.doc_string = ""
    del model.metadata_props[:]
    for node in model.graph.node:
        node.doc_string = ""
        del node.metadata_props[:]
    for function in model.functions:
        for node in function.node:
            node.doc_string = ""
            del node.metadata_props[:]


def check_graph(path: Path, names: tuple[list[str], list[str]], trt_target: str) -> list[str]:
    """Problems with an exported graph: the ONNX checker with full shape inference, the I/O
    names of the contract, and operators the targeted TensorRT ONNX parser cannot read."""
    problems = []
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        problems.append(f"{path.name}: onnx.checker failed: {error}")
    model = onnx.load(path, load_external_data=False)
    expected_in, expected_out = names
    actual_in = [i.name for i in model.graph.input]
    actual_out = [o.name for o in model.graph.output]
    if actual_in != expected_in:
        problems.append(f"{path.name}: inputs {actual_in} differ from the contract {expected_in}")
    if actual_out != expected_out:
        problems.append(
            f"{path.name}: outputs {actual_out} differ from the contract {expected_out}"
        )
    problems += [f"{path.name}: {p}" for p in check_trt_support(model, trt_target)]
    return problems


def onnx_from_model(
    model: Transformer,
    output_dir: str | Path,
    *,
    precision: PrecisionPolicy = FP32,
    top_k: int = DEFAULT_TOP_K,
    opset: int = DEFAULT_OPSET,
    source: dict | None = None,
    trt_target: str = DEFAULT_TRT_TARGET,
    extras: Callable[[Path], None] | None = None,
) -> dict:
    """Export encoder.onnx and decoder.onnx with manifest.json into `output_dir`.

    Args:
        model: the reference model (fp32); it is not modified.
        output_dir: replaced as a whole once everything is written and checked.
        precision: FP32 or an FP16 policy (model/precision.py).
        top_k: width of the decoder's top_ids / top_log_probs outputs.
        opset: ONNX opset of both graphs.
        source: what the model was loaded from (recorded in the manifest).
        trt_target: the TensorRT version whose ONNX parser must accept every operator.
        extras: writes more files (a tokenizer) into the directory before it is published.

    Returns:
        The manifest.

    Raises:
        ExportError: a check failed; every problem is listed.
    """
    config = model.config
    if not 1 <= top_k <= config.tgt_vocab_size:
        raise ValueError(
            f"top_k ({top_k}) must be between 1 and the vocabulary size ({config.tgt_vocab_size})"
        )
    exportable = with_precision(model, precision)
    encoder_args, decoder_args = _example_inputs(model, precision.torch_dtype, top_k)
    encoder_shapes, decoder_shapes = _dynamic_shapes(model)
    n = config.n_decoder_layers

    output_dir = Path(output_dir)
    with staged_directory(output_dir) as staging:
        start = time.perf_counter()
        graphs = {
            "encoder": (
                EncoderGraph(exportable),
                encoder_args,
                encoder_shapes,
                contract.encoder_io(n),
                ENCODER_FILE,
            ),
            "decoder": (
                DecoderStepGraph(exportable, top_k),
                decoder_args,
                decoder_shapes,
                contract.decoder_io(n),
                DECODER_FILE,
            ),
        }
        problems, entries = [], {}
        for name, (module, args, shapes, names, file) in graphs.items():
            _export(module.eval(), args, shapes, names, staging / file, opset)
            problems += check_graph(staging / file, names, trt_target)
            entries[name] = graph_entry(staging / file)
        if problems:
            raise ExportError(
                f"export to {output_dir} failed {len(problems)} checks:\n"
                + "\n".join(f"  - {p}" for p in problems)
            )
        manifest = make_manifest(
            config=config,
            precision=precision,
            opset=opset,
            top_k=top_k,
            graphs=entries,
            source=source or {},
            trt_target=trt_target,
        )
        write_manifest(staging, manifest)
        if extras is not None:
            extras(staging)
        logger.info(
            "Exported %s (%s, opset %d) in %.1f s",
            output_dir.name,
            precision.dtype,
            opset,
            time.perf_counter() - start,
        )
    return manifest
