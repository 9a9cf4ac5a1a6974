"""The TensorRT backend's CPU-side logic: copy plans, sizes, profile choice, and the whole
backend on an emulated device (numpy memory, a stand-in tensorrt running the torch graphs).

The emulation checks our bookkeeping (addresses, shapes, slot writes, beam expansion,
reordering, CUDA-graph replay) against the PyTorch reference; it says nothing about TensorRT
itself, which only `tests/engines/test_gpu_engines.py` on a GPU can.
Run: .venv/bin/python -m pytest tests/runtime/test_tensorrt_bookkeeping.py
"""

from __future__ import annotations

import logging
import sys
import threading

import numpy as np
import pytest
import torch
from engine_helpers import (
    FakeDevice,
    FakeMemory,
    export_manifest,
    fake_engine_from_onnx,
    fake_tensorrt,
    write_export_dir,
)
from helpers import random_sources, tiny_model

from transduce.engines import build
from transduce.engines.manifest import BuildSettings, EngineManifestError, Platform
from transduce.engines.profiles import ShapeSpec
from transduce.export.contract import decoder_io, encoder_io
from transduce.export.graphs import DecoderStepGraph, EncoderGraph
from transduce.model.golden import greedy
from transduce.runtime import tensorrt_backend
from transduce.runtime.backend import ModelInfo
from transduce.runtime.tensorrt_backend import TensorRTBackend
from transduce.runtime.tensorrt_plans import (
    Copy2D,
    ProfileLimits,
    TensorSpec,
    align_up,
    axis_sizes,
    binding_problems,
    buffer_bytes,
    expand_copies,
    reorder_copies,
    request_problems,
    row_runs,
    select_profile,
    slot_write_copy,
)

H100 = Platform("10.16.1.11", "NVIDIA H100 80GB HBM3", "9.0")
TOP_K = 4


def apply(dst: np.ndarray, src: np.ndarray, copies: list[Copy2D]) -> None:
    """Run 2D copies between two byte arrays, as cudaMemcpy2DAsync would."""
    for c in copies:
        for row in range(c.height):
            d, s = c.dst_offset + row * c.dst_pitch, c.src_offset + row * c.src_pitch
            dst[d : d + c.width] = src[s : s + c.width]


def as_bytes(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8)


# ---------------------------------------------------------------------------------------------
# plain bookkeeping


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("position", [0, 3, 6])
def test_slot_write_puts_new_keys_in_slot_p(dtype, position: int) -> None:
    rng = np.random.default_rng(position)
    B, H, L, Dh = 3, 2, 7, 5
    cache = rng.standard_normal((B, H, L, Dh)).astype(dtype)
    new = rng.standard_normal((B, H, 1, Dh)).astype(dtype)
    expected = cache.copy()
    expected[:, :, position] = new[:, :, 0]
    copy = slot_write_copy(
        batch=B, n_heads=H, capacity=L, head_dim=Dh, itemsize=cache.itemsize, position=position
    )
    target = as_bytes(cache).copy()
    apply(target, as_bytes(new), [copy])
    np.testing.assert_array_equal(target.view(dtype).reshape(B, H, L, Dh), expected)
    assert copy.height == B * H and copy.dst_pitch == L * Dh * cache.itemsize


def test_slot_write_outside_the_capacity_is_refused() -> None:
    with pytest.raises(ValueError, match=r"position \(7\) must be in \[0, capacity = 7\)"):
        slot_write_copy(batch=1, n_heads=1, capacity=7, head_dim=4, itemsize=2, position=7)


@pytest.mark.parametrize(
    "rows", [[0, 1, 2, 3, 4, 5], [1, 1, 0, 5, 3, 3], [5, 4, 3, 2, 1, 0], [2, 3, 4, 0, 0, 0]]
)
@pytest.mark.parametrize("filled", [1, 4, 9])
def test_reorder_copies_gather_rows_of_the_filled_slots(rows: list[int], filled: int) -> None:
    rng = np.random.default_rng(filled)
    B, H, L, Dh = 6, 3, 9, 4
    cache = rng.standard_normal((B, H, L, Dh)).astype(np.float16)
    copies = reorder_copies(
        np.array(rows), n_heads=H, capacity=L, head_dim=Dh, itemsize=2, filled=filled
    )
    target = np.zeros_like(cache)
    flat = as_bytes(target).copy()
    apply(flat, as_bytes(cache), copies)
    result = flat.view(np.float16).reshape(B, H, L, Dh)
    np.testing.assert_array_equal(result[:, :, :filled], cache[rows][:, :, :filled])
    assert not result[:, :, filled:].any()  # slots past `filled` are not copied
    assert len(copies) == len(row_runs(np.array(rows)))


def test_row_runs_merge_consecutive_rows() -> None:
    assert row_runs(np.array([0, 1, 2, 3])) == [(0, 0, 4)]
    assert row_runs(np.array([2, 3, 0, 0, 1])) == [(0, 2, 2), (2, 0, 1), (3, 0, 2)]


@pytest.mark.parametrize("rows, beams", [(1, 1), (1, 4), (3, 2), (2, 5)])
def test_expand_copies_repeat_each_row_for_its_beams(rows: int, beams: int) -> None:
    x = np.arange(rows * 2 * 3 * 4, dtype=np.float32).reshape(rows, 2, 3, 4)
    target = np.zeros(rows * beams * x[0].nbytes, dtype=np.uint8)
    apply(target, as_bytes(x), expand_copies(rows=rows, beams=beams, row_bytes=x[0].nbytes))
    expected = np.repeat(x, beams, axis=0)
    np.testing.assert_array_equal(target.view(np.float32).reshape(expected.shape), expected)


def test_copy_2d_rejects_impossible_pitches() -> None:
    with pytest.raises(ValueError, match=r"need 0 < width <= pitches"):
        Copy2D(dst_offset=0, dst_pitch=8, src_offset=0, src_pitch=16, width=16, height=1)
    with pytest.raises(ValueError, match=r"< 2\*\*31 - 1"):
        Copy2D(dst_offset=0, dst_pitch=2**31, src_offset=0, src_pitch=16, width=16, height=1)


def test_buffers_are_aligned_non_empty_and_sized_for_the_largest_profile() -> None:
    assert [align_up(n) for n in (0, 1, 256, 257)] == [256, 256, 256, 512]
    cache_shape = ("batch", 4, "capacity", 8)
    specs = {
        "cache_keys.0": TensorSpec("cache_keys.0", True, np.dtype("float16"), cache_shape),
        "position": TensorSpec("position", True, np.dtype("int64"), (1,)),
    }
    limits = [ProfileLimits(0, 2, 16, 64), ProfileLimits(1, 16, 8, 8)]
    assert buffer_bytes(specs, limits) == {
        "cache_keys.0": align_up(max(2 * 4 * 64 * 8, 16 * 4 * 8 * 8) * 2),
        "position": 256,
    }


def test_profile_choice_and_the_error_when_none_fits() -> None:
    limits = [ProfileLimits(0, 32, 64, 64), ProfileLimits(1, 4, 64, 64)]
    assert select_profile(limits, batch=4, src_len=64, capacity=1).index == 1
    assert select_profile(limits, batch=5, src_len=1, capacity=64).index == 0
    with pytest.raises(ValueError, match=r"request exceeds every engine profile") as raised:
        select_profile(limits, batch=33, src_len=65, capacity=8)
    message = str(raised.value)
    assert "needs batch 33 (rows including beams), src_len 65 and capacity 8" in message
    assert "[0] batch <= 32, src_len <= 64, capacity <= 64" in message
    assert "rebuild with larger --max-batch" in message


def test_binding_problems_name_null_and_unaligned_addresses() -> None:
    assert binding_problems({"a": 0x1000, "b": 0, "c": 0x1010}) == [
        "b: address 0x0 is null",
        "c: address 0x1010 is not 256-byte aligned",
    ]


def test_request_problems_are_collected() -> None:
    info = ModelInfo(61, 67, 2, 4, 8, 64, TOP_K, 0, 1, 2, "float16")
    bad = np.array([[3, 70]])
    assert request_problems(bad, beams=0, capacity=65, info=info) == [
        "src_tokens must be ids in [0, 61); got values from 3 to 70",
        "beams must be at least 1, got 0",
        "capacity must be in [1, max_positions = 64], got 65",
    ]
    empty = np.zeros((2, 0), dtype=np.int64)
    assert (
        "rows and length must be at least 1"
        in request_problems(empty, beams=1, capacity=4, info=info)[0]
    )
    assert (
        "integer token ids" in request_problems(np.zeros((2, 3)), beams=1, capacity=4, info=info)[0]
    )


def test_axis_sizes_from_input_shapes() -> None:
    specs = {
        "src_tokens": TensorSpec("src_tokens", True, np.dtype("int64"), ("batch", "src_len")),
        "src_mask": TensorSpec("src_mask", False, np.dtype("bool"), ("batch", "src_len")),
    }
    assert axis_sizes(specs, {"src_tokens": (2, 5)}) == {"batch": 2, "src_len": 5}
    with pytest.raises(ValueError, match=r"src_mask is not an input of this engine"):
        axis_sizes(specs, {"src_tokens": (2, 5), "src_mask": (2, 5)})


# ---------------------------------------------------------------------------------------------
# the backend on an emulated device


def torch_functions(model, top_k: int) -> dict:
    """The engines' stand-ins: the exportable torch modules, on numpy inputs by name."""
    n = model.config.n_decoder_layers

    def wrap(module, names):
        inputs, outputs = names

        def function(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            with torch.no_grad():
                results = module(*(torch.from_numpy(arrays[name]) for name in inputs))
            return {name: r.numpy() for name, r in zip(outputs, results, strict=True)}

        return function

    return {
        "encoder": wrap(EncoderGraph(model), encoder_io(n)),
        "decoder": wrap(DecoderStepGraph(model, top_k), decoder_io(n)),
    }


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=3)


@pytest.fixture
def make_backend(tmp_path, monkeypatch, model):
    """A factory of TensorRTBackends on the emulated device, with engines for `specs`."""
    config = model.config
    manifest = export_manifest(
        n_layers=config.n_decoder_layers,
        heads=config.n_heads,
        head_dim=config.head_dim,
        top_k=TOP_K,
        dtype="float32",
        vocab=(config.src_vocab_size, config.tgt_vocab_size),
        max_positions=config.max_positions,
    )
    export_dir = write_export_dir(tmp_path / "export", manifest)
    memory = FakeMemory()
    monkeypatch.setattr(build, "engine_from_onnx", fake_engine_from_onnx)
    trt = fake_tensorrt(memory, torch_functions(model, TOP_K), H100.tensorrt_version)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(tensorrt_backend, "current_platform", lambda device=0: H100)
    # the precision check of build_engines wants float16; the emulation computes in float32
    monkeypatch.setattr(build, "_check_export", lambda *args: None)
    backends = []

    def make(specs=None, cuda_graphs=False, platform=H100):
        specs = specs or [ShapeSpec(max_batch=8, max_src_len=16, max_tgt_len=24)]
        engine_dir = tmp_path / f"engines{len(backends)}"
        build.build_engines(export_dir, engine_dir, specs, BuildSettings(), platform=platform)
        backend = TensorRTBackend(
            engine_dir,
            onnx_dir=export_dir,
            cuda_graphs=cuda_graphs,
            device_factory=lambda index: FakeDevice(memory),
        )
        backends.append(backend)
        return backend

    yield make
    for backend in backends:
        backend.close()


def reference_log_probs(model, src: torch.Tensor, beams: int, tokens_and_orders):
    """(B, V) log-probabilities per step from the reference cache, with the same reorders."""
    src = src.repeat_interleave(beams, dim=0)
    cross_kv = model.cross_keys_values(model.encode(src))
    src_mask, cache = model.source_mask(src), model.new_cache()
    results = []
    with torch.no_grad():
        for tokens, rows in tokens_and_orders:
            if rows is not None:
                cache.reorder(torch.from_numpy(rows))
            log_probs = model.decode_step(
                torch.from_numpy(tokens)[:, None], cross_kv, src_mask, cache
            )
            results.append(log_probs[:, -1].numpy())
    return results


def run_steps(session, model, beams: int, steps: int, seed: int):
    """Feed random tokens with random reorders; returns the plan and each step's result."""
    rng = np.random.default_rng(seed)
    plan, results = [], []
    for position in range(steps):
        rows = None
        if beams > 1 and position > 0:
            rows = rng.integers(0, session.batch, session.batch)
            session.reorder(rows)
        tokens = rng.integers(3, model.config.tgt_vocab_size, session.batch)
        plan.append((tokens, rows))
        results.append(session.step(tokens, position, full=True))
    return plan, results


@pytest.mark.parametrize("rows, beams", [(1, 1), (3, 1), (2, 3)])
def test_steps_match_the_reference_cache_with_reorders(make_backend, model, rows, beams) -> None:
    backend = make_backend()
    src = random_sources(model, [5, 3, 7][:rows], seed=rows)
    session = backend.start(src.numpy(), beams=beams, capacity=9)
    assert (session.batch, session.capacity) == (rows * beams, 9)
    plan, results = run_steps(session, model, beams, steps=8, seed=beams)
    expected = reference_log_probs(model, src, beams, plan)
    for step, (result, want) in enumerate(zip(results, expected, strict=True)):
        np.testing.assert_allclose(result.log_probs, want, atol=2e-5, err_msg=f"step {step}")
        top = np.sort(want, axis=-1)[:, ::-1][:, :TOP_K]
        np.testing.assert_allclose(result.top_log_probs, top, atol=2e-5, err_msg=f"step {step}")
        picked = np.take_along_axis(want, result.top_ids, axis=-1)
        np.testing.assert_allclose(picked, result.top_log_probs, atol=2e-5)


def test_greedy_tokens_equal_the_golden_decoder(make_backend, model) -> None:
    backend = make_backend()
    src = random_sources(model, [6, 2, 9, 4], seed=11)
    golden = greedy(model, src, max_new_tokens=12)
    session = backend.start(src.numpy(), beams=1, capacity=12)
    tokens = np.full(4, model.config.bos_id)
    produced = [[] for _ in range(4)]
    for position in range(12):
        result = session.step(tokens, position)
        assert result.log_probs is None
        tokens = result.top_ids[:, 0]
        for row, token in enumerate(tokens):
            if not produced[row] or produced[row][-1] != model.config.eos_id:
                produced[row].append(int(token))
    assert produced == [hypothesis.tokens for hypothesis in golden]


def test_cuda_graphs_replay_gives_identical_results(make_backend, model) -> None:
    src = random_sources(model, [4, 6], seed=5).numpy()
    outputs = []
    for cuda_graphs in (False, True):
        backend = make_backend(cuda_graphs=cuda_graphs)
        session = backend.start(src, beams=2, capacity=10)
        _, results = run_steps(session, model, beams=2, steps=9, seed=7)
        outputs.append(results)
        device = backend._workers[0].device
        if cuda_graphs:
            # the first step only warms up; reorders alternate the cache buffers: 2 graphs
            assert device.counts["capture"] == 2 and device.counts["launch"] == 8
        else:
            assert device.counts["launch"] == 0
    for plain, graphed in zip(*outputs, strict=True):
        np.testing.assert_array_equal(plain.top_ids, graphed.top_ids)
        np.testing.assert_array_equal(plain.top_log_probs, graphed.top_log_probs)
        np.testing.assert_array_equal(plain.log_probs, graphed.log_probs)


def test_a_refused_capture_falls_back_with_one_warning(make_backend, model, caplog) -> None:
    src = random_sources(model, [4], seed=5).numpy()
    backend = make_backend(cuda_graphs=True)
    session = backend.start(src, beams=1, capacity=6)
    backend._workers[0].contexts["decoder"].refuse_capture = True
    reference = make_backend().start(src, beams=1, capacity=6)
    with caplog.at_level(logging.WARNING):
        for position in range(5):
            tokens = np.full(1, 3 + position)
            got, want = session.step(tokens, position), reference.step(tokens, position)
            np.testing.assert_array_equal(got.top_ids, want.top_ids)
    warnings = [r for r in caplog.records if "capture" in r.getMessage()]
    assert len(warnings) == 1 and "running without CUDA graphs" in warnings[0].getMessage()
    assert backend._workers[0].device.counts["launch"] == 0


def test_several_profiles_limits_and_profile_switches(make_backend, model) -> None:
    small, large = ShapeSpec(2, 8, 8), ShapeSpec(8, 16, 24)
    backend = make_backend(specs=[small, large])
    assert backend.limits() == {"batch": 8, "src_len": 16, "capacity": 24}
    context = None
    for rows, length, profile in [(2, 8, 0), (3, 8, 1), (1, 16, 1), (1, 4, 0)]:
        src = random_sources(model, [length] * rows, seed=rows).numpy()
        session = backend.start(src, beams=1, capacity=8)
        context = backend._workers[0].contexts["decoder"]
        assert context.profile == profile
        session.step(np.full(rows, 1), 0)
    with pytest.raises(ValueError, match=r"needs batch 9 \(rows including beams\), src_len 4"):
        backend.start(random_sources(model, [4] * 3, seed=0).numpy(), beams=3, capacity=8)
    assert context is not None


def test_edges_of_the_profile_are_accepted(make_backend, model) -> None:
    backend = make_backend(specs=[ShapeSpec(max_batch=4, max_src_len=16, max_tgt_len=24)])
    for rows, beams, length, capacity in [(1, 1, 1, 1), (2, 2, 16, 24), (4, 1, 16, 1)]:
        src = random_sources(model, [length] * rows, seed=length).numpy()
        session = backend.start(src, beams=beams, capacity=capacity)
        result = session.step(np.full(rows * beams, 1), capacity - 1)
        assert result.top_ids.shape == (rows * beams, TOP_K)


def test_invalid_requests_and_steps_are_refused(make_backend, model) -> None:
    backend = make_backend()
    src = random_sources(model, [3, 4], seed=2).numpy()
    with pytest.raises(ValueError, match=r"invalid request:\n  - beams must be at least 1"):
        backend.start(src, beams=0, capacity=4)
    session = backend.start(src, beams=1, capacity=4)
    with pytest.raises(ValueError, match=r"position \(4\) must be in \[0, capacity = 4\)"):
        session.step(np.array([1, 1]), 4)
    with pytest.raises(ValueError, match=r"tokens must be \(2,\) integer ids"):
        session.step(np.array([1, 1, 1]), 0)
    with pytest.raises(ValueError, match=r"tokens must be ids in \[0, 67\)"):
        session.step(np.array([1, 99]), 0)
    with pytest.raises(ValueError, match=r"rows must be in \[0, 2\)"):
        session.reorder(np.array([0, 2]))


def test_a_session_belongs_to_its_thread_and_ends_with_the_next(make_backend, model) -> None:
    backend = make_backend()
    src = random_sources(model, [3], seed=2).numpy()
    first = backend.start(src, beams=1, capacity=4)
    errors = []

    def other_thread() -> None:
        try:
            first.step(np.array([1]), 0)
        except RuntimeError as error:
            errors.append(str(error))

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join()
    assert errors and "used from another thread" in errors[0]
    backend.start(src, beams=1, capacity=4)
    with pytest.raises(RuntimeError, match=r"session has ended: a later start\(\)"):
        first.step(np.array([1]), 0)


def test_threads_get_their_own_workers(make_backend, model) -> None:
    backend = make_backend()
    src = random_sources(model, [5, 3], seed=9).numpy()
    results = {}

    def decode(name: str) -> None:
        session = backend.start(src, beams=1, capacity=6)
        results[name] = [session.step(np.array([1, 4]), p).top_ids for p in range(4)]

    threads = [threading.Thread(target=decode, args=(name,)) for name in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(backend._workers) == 2
    for a, b in zip(results["a"], results["b"], strict=True):
        np.testing.assert_array_equal(a, b)


def test_run_graph_returns_every_output(make_backend, model) -> None:
    backend = make_backend()
    src = random_sources(model, [5, 2], seed=4)
    outputs = backend.run_graph("encoder", {"src_tokens": src.numpy()})
    with torch.no_grad():
        expected = model.cross_keys_values(model.encode(src))
    np.testing.assert_array_equal(outputs["src_mask"], model.source_mask(src).numpy())
    np.testing.assert_allclose(outputs["cross_values.1"], expected[1][1].numpy(), atol=1e-6)


def test_the_manifest_is_checked_before_any_plan_is_read(make_backend, monkeypatch) -> None:
    engine_dir = make_backend().engine_dir
    other = Platform("10.16.1.11", "NVIDIA L4", "8.9")
    monkeypatch.setattr(tensorrt_backend, "current_platform", lambda device=0: other)

    def no_deserialization(*args):
        raise AssertionError("deserialized a plan built for another GPU")

    runtime_class = sys.modules["tensorrt"].Runtime
    monkeypatch.setattr(runtime_class, "deserialize_cuda_engine", no_deserialization)
    with pytest.raises(EngineManifestError, match=r"GPU compute capability differs"):
        TensorRTBackend(engine_dir, device_factory=lambda index: None)
