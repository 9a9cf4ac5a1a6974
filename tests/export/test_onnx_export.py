"""ONNX export of a tiny model: contract, checks, determinism, layers 1 and 2 of parity.

Run: pytest tests/export/test_onnx_export.py   (exports once per module, about 40 s)
"""

import json

import numpy as np
import onnx
import pytest
from helpers import random_sources

from transduce.export.onnx_export import check_graph, onnx_from_model
from transduce.model.precision import PrecisionPolicy
from transduce.parity import TOLERANCES, compare_graphs
from transduce.runtime.onnxruntime_backend import OnnxRuntimeBackend


@pytest.fixture(scope="module")
def model(tiny_exports):
    return tiny_exports[0]


@pytest.fixture(scope="module")
def exports(tiny_exports):
    _, dirs, manifests = tiny_exports
    return dirs["fp32"].parent, manifests


def _types(path):
    """name -> elem_type of every value in the graph (after shape inference)."""
    inferred = onnx.shape_inference.infer_shapes(onnx.load(path))
    graph = inferred.graph
    values = list(graph.value_info) + list(graph.input) + list(graph.output)
    return {v.name: v.type.tensor_type.elem_type for v in values}


def test_graphs_follow_the_contract(exports, model):
    root, manifests = exports
    decoder = manifests["fp16"]["graphs"]["decoder"]
    inputs = {i["name"]: i for i in decoder["inputs"]}
    outputs = {o["name"]: o for o in decoder["outputs"]}
    H, Dh = model.config.n_heads, model.config.head_dim
    assert inputs["cache_keys.1"]["shape"] == ["batch", H, "capacity", Dh]
    assert inputs["cache_keys.1"]["dtype"] == "float16"
    assert inputs["cross_values.0"]["shape"] == ["batch", H, "src_len", Dh]
    assert inputs["tgt_tokens"] == {"name": "tgt_tokens", "dtype": "int64", "shape": ["batch", 1]}
    assert outputs["log_probs"]["dtype"] == "float32", "log-probabilities stay fp32 in fp16"
    assert outputs["top_ids"]["dtype"] == "int64"
    assert outputs["new_keys.0"]["shape"] == ["batch", H, 1, Dh]
    encoder = manifests["fp32"]["graphs"]["encoder"]
    assert encoder["inputs"] == [
        {"name": "src_tokens", "dtype": "int64", "shape": ["batch", "src_len"]}
    ]
    assert (
        json.loads((root / "fp16" / "manifest.json").read_text())["precision"]["dtype"] == "float16"
    )


def test_fp16_graph_runs_normalization_and_softmax_in_fp32(exports):
    root, _ = exports
    for name in ("encoder.onnx", "decoder.onnx"):
        path = root / "fp16" / name
        types = _types(path)
        nodes = onnx.load(path).graph.node
        for node in nodes:
            if node.op_type in ("LayerNormalization", "Softmax", "LogSoftmax"):
                assert types[node.input[0]] == onnx.TensorProto.FLOAT, f"{name}: {node.name}"
        matmuls = [n for n in nodes if n.op_type == "MatMul"]
        assert any(types[n.input[0]] == onnx.TensorProto.FLOAT16 for n in matmuls)


def test_policy_without_fp32_islands_has_fp16_layer_norm(model, tmp_path):
    policy = PrecisionPolicy(dtype="float16", layer_norm_fp32=False, softmax_fp32=False)
    onnx_from_model(model, tmp_path / "plain16", precision=policy)
    path = tmp_path / "plain16" / "encoder.onnx"
    types = _types(path)
    norms = [n for n in onnx.load(path).graph.node if n.op_type == "LayerNormalization"]
    assert all(types[n.input[0]] == onnx.TensorProto.FLOAT16 for n in norms)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_every_graph_output_matches_torch(exports, model, precision):
    """Parity layers 1 (fp32, tight) and 2 (fp16, per-output table)."""
    root, manifests = exports
    src = random_sources(model, [6, 2, 9, 4], seed=52)
    verdicts = compare_graphs(model, root / precision, manifests[precision], src, steps=5)
    failed = [v.line() for v in verdicts if not v.passed]
    assert not failed, "\n".join(failed)
    # every output of the contract was compared
    assert len(verdicts) == 1 + 4 * model.config.n_decoder_layers + 3


def test_export_is_deterministic(exports, model, tmp_path):
    root, _ = exports
    onnx_from_model(model, tmp_path / "again")
    for name in ("encoder.onnx", "decoder.onnx"):
        assert (tmp_path / "again" / name).read_bytes() == (root / "fp32" / name).read_bytes()


def test_checks_name_the_offending_node(exports, tmp_path):
    root, _ = exports
    graph = onnx.load(root / "fp32" / "encoder.onnx")
    graph.graph.node[3].op_type = "FancyOp"
    graph.graph.node[3].name = "my_fancy_node"
    onnx.save(graph, tmp_path / "bad.onnx")
    names = ([i.name for i in graph.graph.input], [o.name for o in graph.graph.output])
    problems = check_graph(tmp_path / "bad.onnx", names, "10.15")
    assert any("my_fancy_node" in p and "FancyOp" in p for p in problems), problems


def test_runtime_refuses_a_graph_that_does_not_match_its_manifest(exports, tmp_path):
    root, _ = exports
    copy = tmp_path / "copy"
    copy.mkdir()
    for file in (root / "fp32").iterdir():
        copy.joinpath(file.name).write_bytes(file.read_bytes())
    copy.joinpath("decoder.onnx").write_bytes((root / "fp16" / "decoder.onnx").read_bytes())
    with pytest.raises(ValueError, match="decoder graph decoder.onnx does not match the hash"):
        OnnxRuntimeBackend(copy)


def test_top_k_must_fit_the_vocabulary(model, tmp_path):
    with pytest.raises(ValueError, match=r"top_k \(1000\) must be between 1 and the vocabulary"):
        onnx_from_model(model, tmp_path / "x", top_k=1000)
    assert not (tmp_path / "x").exists()


def test_tolerance_table_is_tighter_for_fp32():
    assert TOLERANCES["float32"][""][0] < min(t[0] for t in TOLERANCES["float16"].values() if t[0])
    assert np.isfinite(TOLERANCES["float16"]["log_probs"][0])
