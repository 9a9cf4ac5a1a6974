"""The TensorRT parser operator matrices and the check of ONNX graphs against them.

Run: .venv/bin/pytest tests/export/test_trt_support.py
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import pytest
from onnx import ModelProto, NodeProto, TensorProto, helper

from transduce.export import trt_support
from transduce.export.trt_support import (
    OPS_DIR,
    SUPPORTED_TRT,
    check_trt_support,
    load_support,
    raise_if_unsupported,
    restrictions_for,
)

ROOT = Path(__file__).resolve().parents[2]
# the only operators.md of 10.x/11.x found: onnx/onnx-tensorrt docs/operators.md at this commit
COMMIT_10_15 = "fa5aa9f61e7781d2ca8f5351d42c1f19525a6124"
TRANSFORMER_OPS = [
    "LayerNormalization", "TopK", "Softmax", "LogSoftmax", "GatherND", "Where", "Range", "Less",
    "Not", "Trilu", "Einsum",
]  # fmt: skip


def make_model(
    nodes: list[NodeProto], *, opset: int = 20, extra_opsets: dict[str, int] | None = None
) -> ModelProto:
    """A float32 graph from x (2, 4) to y (2, 4); the nodes must connect the two."""
    graph = helper.make_graph(
        nodes,
        "sample",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        initializer=[helper.make_tensor("w", TensorProto.FLOAT, [4, 4], [0.5] * 16)],
    )
    opsets = [helper.make_opsetid("", opset)]
    opsets += [helper.make_opsetid(domain, v) for domain, v in (extra_opsets or {}).items()]
    return helper.make_model(graph, opset_imports=opsets)


def attention_block() -> list[NodeProto]:
    return [
        helper.make_node("MatMul", ["x", "w"], ["scores"], name="scores"),
        helper.make_node("Add", ["scores", "x"], ["shifted"], name="shift"),
        helper.make_node("Softmax", ["shifted"], ["y"], name="softmax", axis=-1),
    ]


def load_extractor():
    spec = importlib.util.spec_from_file_location(
        "extract_trt_parser_ops", ROOT / "scripts" / "extract_trt_parser_ops.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("label", SUPPORTED_TRT)
def test_plain_graph_passes(label: str) -> None:
    model = make_model(attention_block())
    assert check_trt_support(model, label) == []
    raise_if_unsupported(model, label, "encoder")


@pytest.mark.parametrize("label", SUPPORTED_TRT)
def test_unknown_op_is_reported_by_node_name(label: str) -> None:
    model = make_model([helper.make_node("FakeOp", ["x"], ["y"], name="mystery")])
    [problem] = check_trt_support(model, label)
    assert problem.startswith(
        f"node 'mystery' (op FakeOp) is not supported by the TensorRT ONNX parser of TRT {label}"
    )
    with pytest.raises(ValueError, match=r"encoder cannot be imported .*\(1 problem\)"):
        raise_if_unsupported(model, label, "encoder")
    with pytest.raises(ValueError, match=r"  - node 'mystery' \(op FakeOp\) is not supported"):
        raise_if_unsupported(model, label, "encoder")


def test_op_marked_n_is_reported() -> None:
    model = make_model([helper.make_node("Unique", ["x"], ["y"], name="dedupe")])
    with pytest.raises(ValueError, match=r"node 'dedupe' \(op Unique\) .* \(marked N in"):
        raise_if_unsupported(model, "10.15", "decoder_step")


def test_opset_outside_range_is_reported() -> None:
    problems = check_trt_support(make_model(attention_block(), opset=26), "10.15")
    assert problems == [
        "model default-domain opset 26 is outside opset 9 to 24, the range the TensorRT ONNX "
        "parser of TRT 10.15 supports; export with an opset in it"
    ]
    with pytest.raises(ValueError, match="model default-domain opset 26 is outside opset 9 to 24"):
        raise_if_unsupported(make_model(attention_block(), opset=26), "10.15", "encoder")


def test_custom_domain_is_reported() -> None:
    node = helper.make_node("FusedGelu", ["x"], ["y"], name="gelu", domain="com.example")
    model = make_model([node], extra_opsets={"com.example": 1})
    with pytest.raises(ValueError, match=r"node 'gelu' \(op com.example::FusedGelu\) is in the "):
        raise_if_unsupported(model, "11.1", "decoder_step")


def test_every_problem_is_listed_once() -> None:
    nodes = [
        helper.make_node("FakeOp", ["x"], ["a"], name="first"),
        helper.make_node("FakeOp", ["a"], ["b"], name="second"),
        helper.make_node("Gelu", ["b"], ["y"], name="gelu", domain="com.example"),
    ]
    problems = check_trt_support(make_model(nodes, opset=8), "10.16")
    assert len(problems) == 4
    assert [p.split(" ")[1] for p in problems[1:]] == ["'first'", "'second'", "'gelu'"]


def test_nodes_inside_subgraphs_are_checked() -> None:
    then_branch = helper.make_graph(
        [helper.make_node("FakeOp", ["x"], ["t"], name="inner")],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2, 4])],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["e"], name="keep")],
        "else",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2, 4])],
    )
    nodes = [
        helper.make_node("Constant", [], ["flag"], name="flag", value_int=1),
        helper.make_node(
            "If", ["flag"], ["y"], name="branch", then_branch=then_branch, else_branch=else_branch
        ),
    ]
    problems = check_trt_support(make_model(nodes), "10.15")
    assert len(problems) == 1
    assert problems[0].startswith("node 'branch/then_branch/inner' (op FakeOp) is not supported")


def test_local_function_calls_are_checked_through_their_body() -> None:
    def model_with_body(op: str) -> ModelProto:
        body = [helper.make_node(op, ["a"], ["b"], name="body")]
        function = helper.make_function(
            "local", "Block", ["a"], ["b"], body, [helper.make_opsetid("", 20)]
        )
        model = make_model(
            [helper.make_node("Block", ["x"], ["y"], name="call", domain="local")],
            extra_opsets={"local": 1},
        )
        model.functions.append(function)
        return model

    assert check_trt_support(model_with_body("Relu"), "10.15") == []
    [problem] = check_trt_support(model_with_body("FakeOp"), "10.15")
    assert problem.startswith("node 'call/body' (op FakeOp) is not supported")


def test_restrictions_of_used_ops_are_returned() -> None:
    nodes = [
        helper.make_node("LayerNormalization", ["x", "w"], ["normed"], name="norm"),
        helper.make_node("MatMul", ["normed", "w"], ["y"], name="project"),
    ]
    assert restrictions_for(make_model(nodes), "10.15") == {
        "LayerNormalization": "Only the first output `Y` is supported."
    }


def test_restrictions_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    nodes = [helper.make_node("LayerNormalization", ["x", "w"], ["y"], name="norm")]
    with caplog.at_level(logging.INFO, logger=trt_support.__name__):
        raise_if_unsupported(make_model(nodes), "10.15", "encoder")
    assert "TensorRT 10.15 restricts LayerNormalization in encoder" in caplog.text


def test_unknown_label_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"label '9.0' has no TensorRT parser operator matrix"):
        check_trt_support(make_model(attention_block()), "9.0")


def test_every_label_has_a_file_and_no_file_lacks_a_label() -> None:
    assert sorted(path.stem for path in OPS_DIR.glob("*.json")) == sorted(SUPPORTED_TRT)


@pytest.mark.parametrize("label", SUPPORTED_TRT)
def test_sources_are_recorded(label: str) -> None:
    support = load_support(label)
    assert support.source["repo"] == "onnx/onnx-tensorrt"
    assert support.source["path"] == "docs/operators.md"
    assert support.source["commit"] == COMMIT_10_15
    assert support.source["header"] == (
        "TensorRT 10.15 supports operators in the inclusive range of opset 9 to opset 24."
    )
    assert (support.opset_min, support.opset_max) == (9, 24)
    # a label that borrows another version's matrix must say why
    assert (support.documented_version != label) == ("note" in support.source)


def test_borrowed_matrix_is_announced(caplog: pytest.LogCaptureFixture) -> None:
    load_support.cache_clear()
    with caplog.at_level(logging.WARNING, logger=trt_support.__name__):
        load_support("11.1")
    assert "TensorRT 11.1 parser support is checked against the operator matrix" in caplog.text
    assert "operator matrix of TensorRT 10.15 (onnx/onnx-tensorrt@fa5aa9f)" in caplog.text


@pytest.mark.parametrize("label", SUPPORTED_TRT)
@pytest.mark.parametrize("op", TRANSFORMER_OPS)
def test_transformer_ops_are_supported(label: str, op: str) -> None:
    assert load_support(label).operators[op].supported


@pytest.mark.parametrize("label", SUPPORTED_TRT)
def test_attention_and_tensor_scatter_follow_the_data(label: str) -> None:
    operators = load_support(label).operators
    # operators.md @ fa5aa9f (10.15): "| Attention | Y | FP32, FP16, BF16, INT8, FP8 | `Q`, `K`,
    # `V` and `attn_mask ` must be 4D. ..."; every label uses that matrix, so every label says Y
    assert operators["Attention"].supported
    assert operators["Attention"].restrictions.startswith("`Q`, `K`, `V` and `attn_mask ` must")
    assert "`past_key`, `past_value` and `nonpad_kv_seqlen` inputs are unsupported" in (
        operators["Attention"].restrictions
    )
    # same file: "| TensorScatter | Y | FP32, FP16, BF16, INT32 | `past_cache` and `update` must
    # be 4D. `axis` must be -2. |"
    assert operators["TensorScatter"].supported
    assert operators["TensorScatter"].types == ("FP32", "FP16", "BF16", "INT32")
    assert operators["TensorScatter"].restrictions == (
        "`past_cache` and `update` must be 4D. `axis` must be -2."
    )


SAMPLE_MD = """\
# Supported ONNX Operators

TensorRT 12.3 supports operators in the inclusive range of opset 9 to opset 26. More below.

## Operator Support Matrix

| Operator  | Supported  | Supported Types | Restrictions |
|-----------|------------|-----------------|--------------|
| Add       | Y          | FP32, FP16, INT64 |
| Hardmax   | Y          | FP32, FP16, BF16 | `axis` must be a build-time constant
| Det       | N          |
| Quantize  | N          | Not supported. Compose it from other ops.
| Selu      | Y          | FP32, FP16, |
"""


def test_extractor_parses_rows_of_every_shape() -> None:
    parsed = load_extractor().parse_operators_md(SAMPLE_MD)
    assert parsed["header"] == (
        "TensorRT 12.3 supports operators in the inclusive range of opset 9 to opset 26."
    )
    assert (parsed["trt_version"], parsed["opset_min"], parsed["opset_max"]) == ("12.3", 9, 26)
    assert parsed["operators"] == {
        "Add": {"supported": True, "types": ["FP32", "FP16", "INT64"], "restrictions": ""},
        "Hardmax": {
            "supported": True,
            "types": ["FP32", "FP16", "BF16"],
            "restrictions": "`axis` must be a build-time constant",
        },
        "Det": {"supported": False, "types": [], "restrictions": ""},
        "Quantize": {
            "supported": False,
            "types": [],
            "restrictions": "Not supported. Compose it from other ops.",
        },
        "Selu": {"supported": True, "types": ["FP32", "FP16"], "restrictions": ""},
    }


def test_extractor_rejects_a_file_without_the_range_header() -> None:
    with pytest.raises(ValueError, match="operators.md has no header sentence"):
        load_extractor().parse_operators_md("TensorRT 8.5 supports operators up to Opset 17.")


@pytest.mark.parametrize("label", SUPPORTED_TRT)
def test_files_are_in_the_extractor_layout(label: str) -> None:
    text = (OPS_DIR / f"{label}.json").read_text()
    document = json.loads(text)
    assert document["label"] == label
    assert load_extractor().render(document) == text
