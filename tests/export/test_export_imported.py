"""An imported Marian model goes through export and the runtime like any other model.

Run: pytest tests/export/test_export_imported.py
"""

import pytest

pytest.importorskip("transformers", reason="transformers is a test dependency")

from marian_helpers import PAD, marian_model, padded_sources  # noqa: E402

from transduce.export.onnx_export import onnx_from_model  # noqa: E402
from transduce.model.golden import beam_search, greedy  # noqa: E402
from transduce.model.import_marian import model_from_marian  # noqa: E402
from transduce.model.precision import FP16  # noqa: E402
from transduce.parity import compare_graphs  # noqa: E402
from transduce.runtime.generate import GenerationConfig, generate  # noqa: E402
from transduce.runtime.onnxruntime_backend import OnnxRuntimeBackend  # noqa: E402


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("marian")
    marian_model(seed=7).save_pretrained(root / "hf")
    model = model_from_marian(root / "hf")
    manifests = {
        "fp32": onnx_from_model(model, root / "fp32"),
        "fp16": onnx_from_model(model, root / "fp16", precision=FP16),
    }
    return model, root, manifests


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_graph_outputs_match_torch(imported, precision):
    model, root, manifests = imported
    src = padded_sources([7, 3, 11, 5], PAD, seed=8)
    verdicts = compare_graphs(model, root / precision, manifests[precision], src, steps=4)
    assert not [v.line() for v in verdicts if not v.passed]


def test_runtime_tokens_equal_the_golden_decoders(imported):
    model, root, _ = imported
    src = padded_sources([7, 3, 11, 1, 5, 9], PAD, seed=9)
    backend = OnnxRuntimeBackend(root / "fp32")
    expected = greedy(model, src, max_new_tokens=10)
    assert generate(backend, src.numpy(), GenerationConfig(10)).tokens == [
        h.tokens for h in expected
    ]
    expected_beam = beam_search(model, src, beam_size=4, max_new_tokens=10, length_penalty=0.6)
    config = GenerationConfig(10, beam_size=4, length_penalty=0.6)
    assert generate(backend, src.numpy(), config).tokens == [row[0].tokens for row in expected_beam]
