"""FP16 TensorRT engines on a real GPU: build, per-output parity, token parity, CUDA graphs, edges.

Skipped (with the reason) without an NVIDIA GPU, TensorRT and cuda-python; nothing here has
run yet. `transduce selfcheck` runs this module after building the engines into its workdir
(named by TRANSDUCE_SELFCHECK_DIR); otherwise the engines are built in a temporary folder.
Run: .venv/bin/python -m pytest -m gpu tests/engines/test_gpu_engines.py
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import random_sources

from transduce.commands.selfcheck import (
    DEMO_SPECS,
    TINY_SPECS,
    WORKDIR_VARIABLE,
    demo_reference_model,
    missing_requirements,
    prepare_engines,
    tiny_reference_model,
)
from transduce.engines.manifest import current_platform, read_engine_manifest

MISSING = missing_requirements()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(bool(MISSING), reason="needs a GPU with TensorRT: " + "; ".join(MISSING)),
]

# (atol, rtol) of TensorRT fp16 against torch fp32, per output; starting points taken from
# transduce.parity's FP16 table (measured for ONNX Runtime), not yet measured on any GPU
TOLERANCES = {
    "": (2e-2, 2e-2),
    "log_probs": (5e-2, 1e-2),
    "top_log_probs": (5e-2, 1e-2),
    "src_mask": (0, 0),
}
MAX_NEW_TOKENS = 24


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    given = os.environ.get(WORKDIR_VARIABLE)
    return Path(given) if given else tmp_path_factory.mktemp("gpu-engines")


@pytest.fixture(scope="module")
def tiny(workdir):
    model = tiny_reference_model()
    export_dir, engine_dir, _ = prepare_engines(model, workdir, "tiny", TINY_SPECS)
    return model, export_dir, engine_dir


@pytest.fixture(scope="module")
def demo(workdir):
    model = demo_reference_model()
    export_dir, engine_dir, _ = prepare_engines(model, workdir, "demo", DEMO_SPECS)
    return model, export_dir, engine_dir


def backend_for(artifacts, **kwargs):
    from transduce.runtime.tensorrt_backend import TensorRTBackend

    _, export_dir, engine_dir = artifacts
    return TensorRTBackend(engine_dir, onnx_dir=export_dir, **kwargs)


def assert_outputs_close(graph: str, actual: dict, expected: dict) -> None:
    """Every output within its tolerance; the message lists each failing output's numbers."""
    failures = []
    for name, want in expected.items():
        got = actual[name].astype(np.float64)
        want = want.astype(np.float64)
        key = name.split(".")[0] if name.split(".")[0] in TOLERANCES else name
        atol, rtol = TOLERANCES.get(key, TOLERANCES[""])
        if got.shape != want.shape:
            failures.append(f"{graph}.{name}: shape {got.shape}, expected {want.shape}")
            continue
        diff = np.abs(got - want)
        if np.any(diff > atol + rtol * np.abs(want)):
            where = np.unravel_index(int(np.argmax(diff)), diff.shape)
            failures.append(
                f"{graph}.{name} {got.shape}: max_abs={diff.max():.2e} at {list(where)}, "
                f"mean_abs={diff.mean():.2e}, atol={atol:g}, rtol={rtol:g}"
            )
    assert not failures, f"{len(failures)} outputs outside tolerance (trt fp16 vs torch fp32)\n" + (
        "\n".join(f"  - {f}" for f in failures)
    )


def test_engines_match_this_platform(tiny) -> None:
    _, _, engine_dir = tiny
    manifest = read_engine_manifest(engine_dir)
    assert manifest["platform"] == current_platform().to_dict()
    assert manifest["settings"]["tf32"] is False
    assert len(manifest["engines"]["decoder"]["profiles"]) == len(TINY_SPECS)


@pytest.mark.parametrize("rows, src_len, steps", [(1, 1, 0), (2, 7, 3), (8, 32, 30)])
def test_every_engine_output_matches_torch(tiny, rows: int, src_len: int, steps: int) -> None:
    """Both engines against the fp32 graphs at the profile edges (batch 1..8, length 1..32)."""
    from transduce.export.contract import decoder_io, encoder_io
    from transduce.export.graphs import DecoderStepGraph, EncoderGraph
    from transduce.parity import graph_feeds

    model = tiny[0]
    n = model.config.n_decoder_layers
    src = random_sources(
        model, [max(1, src_len - r) for r in range(rows)], seed=rows, width=src_len
    )
    encoder_feed, decoder_feed = graph_feeds(model, src, steps)
    with backend_for(tiny) as backend:
        top_k = backend.info.top_k
        for graph, feed, module, names in (
            ("encoder", encoder_feed, EncoderGraph(model), encoder_io(n)),
            ("decoder", decoder_feed, DecoderStepGraph(model, top_k), decoder_io(n)),
        ):
            with torch.no_grad():
                outputs = module(*(torch.from_numpy(feed[name]) for name in names[0]))
            expected = {name: out.numpy() for name, out in zip(names[1], outputs, strict=True)}
            engine_feed = {
                k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in feed.items()
            }
            actual = backend.run_graph(graph, engine_feed)
            if graph == "decoder":
                # near-ties may order differently in fp16: an id is right when the reference
                # gives it the value the engine reports
                picked = np.take_along_axis(expected["log_probs"], actual["top_ids"], axis=-1)
                np.testing.assert_allclose(picked, actual["top_log_probs"], atol=5e-2)
                del expected["top_ids"], actual["top_ids"]
            assert_outputs_close(graph, actual, expected)


@pytest.mark.parametrize("beam_size", [1, 3])
def test_demo_tokens_match_the_golden_decoders(demo, beam_size: int) -> None:
    from transduce.model.demo import demo_pairs, demo_tokenizer
    from transduce.parity import compare_tokens, golden_hypotheses
    from transduce.runtime.generate import GenerationConfig

    model = demo[0]
    tokenizer = demo_tokenizer()
    sources = [tokenizer.encode_source(text) for text, _ in demo_pairs(200, split="test")]
    config = GenerationConfig(max_new_tokens=MAX_NEW_TOKENS, beam_size=beam_size)
    references = golden_hypotheses(model, sources, config)
    with backend_for(demo) as backend:
        # FP16 may flip a near-tie; the FP16 ONNX graphs are held to the same share (99.5 %)
        verdict, _ = compare_tokens(
            model, backend, sources, config, references, min_identical_fraction=0.995
        )
    assert verdict.passed, verdict.line() + "\n" + "\n".join(d.line() for d in verdict.divergences)


def run_fixed_steps(backend, src: np.ndarray, beams: int, steps: int) -> list:
    rng = np.random.default_rng(0)
    session = backend.start(src, beams=beams, capacity=steps)
    results = []
    for position in range(steps):
        if beams > 1 and position:
            session.reorder(rng.integers(0, session.batch, session.batch))
        tokens = rng.integers(3, backend.info.tgt_vocab_size, session.batch)
        results.append(session.step(tokens, position, full=True))
    return results


@pytest.mark.parametrize("beams", [1, 2])
def test_cuda_graphs_give_the_same_numbers(demo, beams: int) -> None:
    from transduce.model.demo import demo_tokenizer
    from transduce.runtime.generate import pad_sources

    tokenizer = demo_tokenizer()
    sources = [tokenizer.encode_source(text) for text in ("80017", "7", "999999")]
    src = pad_sources(sources, tokenizer.pad_id)
    outputs = []
    for cuda_graphs in (False, True):
        with backend_for(demo, cuda_graphs=cuda_graphs) as backend:
            outputs.append(run_fixed_steps(backend, src, beams, steps=12))
    for plain, graphed in zip(*outputs, strict=True):
        np.testing.assert_array_equal(plain.top_ids, graphed.top_ids)
        np.testing.assert_array_equal(plain.top_log_probs, graphed.top_log_probs)
        np.testing.assert_array_equal(plain.log_probs, graphed.log_probs)


def test_profile_edges_and_limits(tiny) -> None:
    model = tiny[0]
    with backend_for(tiny) as backend:
        assert backend.limits() == {"batch": 8, "src_len": 32, "capacity": 32}
        for rows, beams, length, capacity in [(1, 1, 1, 1), (2, 1, 8, 8), (4, 2, 32, 32)]:
            src = random_sources(model, [length] * rows, seed=length).numpy()
            session = backend.start(src, beams=beams, capacity=capacity)
            result = session.step(np.full(rows * beams, model.config.bos_id), capacity - 1)
            assert np.isfinite(result.top_log_probs).all()
        with pytest.raises(ValueError, match=r"request exceeds every engine profile"):
            backend.start(random_sources(model, [4] * 3, seed=1).numpy(), beams=3, capacity=4)
