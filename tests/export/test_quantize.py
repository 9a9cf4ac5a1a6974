"""INT8 dynamic quantization of an FP32 export: the manifest, the graphs and demo accuracy.

Run: pytest tests/export/test_quantize.py   (trains the demo model once per session, ~1 min)
"""

import json

import pytest

from transduce.export.manifest import MANIFEST_FILE
from transduce.export.onnx_export import onnx_from_model
from transduce.export.quantize import quantize_export
from transduce.files import sha256_file
from transduce.model.checkpoint import load_checkpoint
from transduce.model.demo import demo_pairs
from transduce.model.precision import FP16
from transduce.runtime.generate import GenerationConfig, generate_many
from transduce.runtime.onnxruntime_backend import OnnxRuntimeBackend
from transduce.text import load_tokenizer

TEST_SIZE = 1_000  # held-out demo numbers; one miss is 0.1 point
MAX_LOSS = 0.005  # the parity bar: at most 0.5 points of exact-match accuracy lost


@pytest.fixture(scope="module")
def demo_exports(demo_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("quantize")
    model = load_checkpoint(demo_checkpoint)
    fp32 = root / "fp32"
    onnx_from_model(model, fp32)
    load_tokenizer(demo_checkpoint).save(fp32)
    int8 = root / "int8"
    quantize_export(fp32, int8)
    return fp32, int8


def _accuracy(directory, checkpoint) -> float:
    tokenizer = load_tokenizer(checkpoint)
    pairs = demo_pairs(TEST_SIZE, split="test")
    backend = OnnxRuntimeBackend(directory, threads=1)
    sources = [tokenizer.encode_source(digits) for digits, _ in pairs]
    results = generate_many(backend, sources, GenerationConfig(max_new_tokens=24), max_rows=128)
    texts = [tokenizer.decode_target(row[0].tokens) for row in results]
    return sum(t == words for t, (_, words) in zip(texts, pairs, strict=True)) / len(pairs)


def test_manifest_says_int8_with_new_graph_hashes(demo_exports):
    fp32, int8 = demo_exports
    before = json.loads((fp32 / MANIFEST_FILE).read_text())
    after = json.loads((int8 / MANIFEST_FILE).read_text())
    assert after["precision"]["dtype"] == "float32"  # the I/O the runtime binds
    assert after["precision"]["quantization"] == "int8-dynamic"
    assert after["quantized_from"]["graphs"] == {
        name: graph["sha256"] for name, graph in before["graphs"].items()
    }
    for name, graph in after["graphs"].items():
        assert graph["sha256"] == sha256_file(int8 / graph["file"])
        assert graph["sha256"] != before["graphs"][name]["sha256"]
        assert graph["inputs"] == before["graphs"][name]["inputs"]
        assert graph["outputs"] == before["graphs"][name]["outputs"]
        assert {"DynamicQuantizeMatMul", "MatMulInteger"} & set(graph["operators"]), name
    assert (int8 / "vocab.json").is_file(), "the tokenizer travels with the graphs"
    assert OnnxRuntimeBackend(int8).name == "onnxruntime-int8"


def test_int8_loses_at_most_half_a_point_on_the_demo_task(demo_exports, demo_checkpoint):
    fp32, int8 = demo_exports
    reference = _accuracy(fp32, demo_checkpoint)
    quantized = _accuracy(int8, demo_checkpoint)
    assert reference >= 0.99
    assert quantized >= reference - MAX_LOSS, f"fp32 {reference:.4f}, int8 {quantized:.4f}"


def test_only_fp32_exports_are_quantized(demo_exports, demo_checkpoint, tmp_path):
    _, int8 = demo_exports
    with pytest.raises(
        ValueError, match="is a int8-dynamic export, not fp32; quantize an fp32 export"
    ):
        quantize_export(int8, tmp_path / "again")
    fp16 = tmp_path / "fp16"
    onnx_from_model(load_checkpoint(demo_checkpoint), fp16, precision=FP16)
    with pytest.raises(ValueError, match="is a float16 export, not fp32"):
        quantize_export(fp16, tmp_path / "int8")
