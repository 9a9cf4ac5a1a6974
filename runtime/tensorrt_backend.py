"""The TensorRT backend: the FP16 encoder and decoder engines, run with tensorrt and cuda-python.

No torch: tensorrt, cuda-python (`cuda.bindings.runtime`) and numpy. Everything the engines
read or write lives in device buffers allocated once, for the largest profile; tensors are
bound by name; all work goes to one non-default CUDA stream per thread. Per step, only the
chosen ids and scores (and, on request, the full log-probabilities) are copied to pinned
host memory; the cache stays on the device:

- the decoder engine outputs this step's keys and values (`new_keys.i`, `new_values.i`,
  (B, H, 1, Dh)); one 2D copy per tensor writes them into cache slot P, since the cache
  (B, H, L, Dh) is B*H rows of L*Dh elements and slot P is one Dh-wide column of each row;
- beam reordering copies row blocks into a second cache buffer, which then becomes current;
- with beams, each source row's encoder results are copied to its K beam rows once, with K
  2D copies per tensor.

The bookkeeping (shapes, buffer sizes, copy plans, profile choice, checks) is plain Python in
`runtime/tensorrt_plans.py`, tested on the CPU; `CudaDevice` (`runtime/cuda_device.py`) is
the thin layer of CUDA runtime calls. `TensorRTBackend` and `TensorRTSession`, here, join the
two with the engines.

Threads: each thread that starts a session gets its own execution contexts, stream and
buffers (a "worker"), created on first use; the engines are shared. A thread runs one
session at a time: `start` ends the thread's previous session, whose methods then raise.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from transduce.engines.manifest import (
    EngineManifestError,
    check_engine_manifest,
    current_platform,
    read_engine_manifest,
    tensorrt_logger,
)
from transduce.runtime.backend import Backend, DecodeSession, ModelInfo, StepResult
from transduce.runtime.cuda_device import CudaDevice
from transduce.runtime.tensorrt_plans import (
    BATCH,
    CAPACITY,
    SRC_LEN,
    ProfileLimits,
    TensorSpec,
    axis_sizes,
    binding_problems,
    buffer_bytes,
    cache_partner,
    expand_copies,
    profile_limits,
    reorder_copies,
    request_problems,
    row_runs,
    select_profile,
    slot_write_copy,
    tensor_specs,
)

logger = logging.getLogger(__name__)

# instantiated CUDA graphs kept per thread; beam search alternates between two cache buffers
GRAPH_CACHE_SIZE = 8

_warned: set[str] = set()
SRC_TOKENS, TGT_TOKENS, POSITION = "src_tokens", "tgt_tokens", "position"
LOG_PROBS, TOP_LOG_PROBS, TOP_IDS = "log_probs", "top_log_probs", "top_ids"
GRAPHS = ("encoder", "decoder")


def _warn_once(key: str, message: str) -> None:
    """Log a WARNING the first time `key` comes up in this process."""
    if key not in _warned:
        _warned.add(key)
        logger.warning(message)


@dataclass
class _Engine:
    """One deserialized engine and its I/O table."""

    graph: str
    engine: Any  # trt.ICudaEngine
    specs: dict[str, TensorSpec]
    sizes: dict[str, int]  # bytes per tensor buffer


class _Worker:
    """What one thread needs to run the engines: contexts, a stream, buffers, CUDA graphs."""

    def __init__(self, backend: TensorRTBackend) -> None:
        self.backend = backend
        self.device = backend._device_factory(backend.device_index)
        self.contexts = {}
        for graph, loaded in backend._engines.items():
            context = loaded.engine.create_execution_context()
            if context is None:
                raise RuntimeError(
                    f"TensorRT could not create an execution context for the {graph} engine "
                    "(out of device memory?)"
                )
            self.contexts[graph] = context
        self.profiles = {graph: 0 for graph in GRAPHS}  # a new context starts on profile 0
        self.shapes: dict[str, tuple] = {graph: () for graph in GRAPHS}
        self.session: TensorRTSession | None = None

        # device buffers, by engine and tensor name; the spare caches for reorder come on
        # first use.
        # NOTE: the decoder has its own src_mask and cross_* buffers besides the encoder's
        # outputs, used only with beams (each source row repeated K times). Greedy requests
        # bind the encoder's outputs directly, and the copy costs its memory only.
        self.buffers = {
            graph: {name: self.device.malloc(size) for name, size in loaded.sizes.items()}
            for graph, loaded in backend._engines.items()
        }
        self.extra: dict[str, int] = {}

        # pinned host staging for everything that crosses per step
        decoder = backend._engines["decoder"]
        encoder = backend._engines["encoder"]
        self.pinned = {
            name: self.device.pinned(decoder.sizes[name])
            for name in (TGT_TOKENS, POSITION, TOP_LOG_PROBS, TOP_IDS, LOG_PROBS)
        }
        self.pinned[SRC_TOKENS] = self.device.pinned(encoder.sizes[SRC_TOKENS])

        # CUDA graphs of the decode step, by binding signature
        self.graphs: OrderedDict[tuple, Any] = OrderedDict()
        self.warm_shapes: tuple | None = None  # decoder shapes of the last eager run
        self.graphs_refused = False

    def extra_buffer(self, key: str, nbytes: int) -> int:
        """A buffer made on first use and kept, zeroed when made."""
        if key not in self.extra:
            self.extra[key] = self.device.malloc(nbytes)
            self.device.memset(self.extra[key], nbytes)
        return self.extra[key]

    def use_profile(self, graph: str, index: int) -> None:
        if self.profiles[graph] != index:
            context = self.contexts[graph]
            context.set_optimization_profile_async(index, self.device.stream)
            self.profiles[graph] = index
            self.shapes[graph] = ()

    def set_shapes(self, graph: str, shapes: dict[str, tuple[int, ...]]) -> None:
        """Set the dynamic input shapes of `graph` (skipped when they are already set).

        Static inputs (the decoder's `position`, (1,)) have their shape in the engine already.
        """
        specs = self.backend._engines[graph].specs
        shapes = {
            n: s for n, s in shapes.items() if not all(isinstance(d, int) for d in specs[n].shape)
        }
        key = (self.profiles[graph], tuple(sorted(shapes.items())))
        if self.shapes[graph] == key:
            return
        context = self.contexts[graph]
        if graph == "decoder":
            self.warm_shapes = None  # the next enqueue initializes: not one to capture
        refused = [
            name for name, shape in shapes.items() if not context.set_input_shape(name, shape)
        ]
        missing = context.infer_shapes()
        if refused or missing:
            raise RuntimeError(
                f"{graph} engine refused input shapes {refused} (profile {self.profiles[graph]}); "
                f"unset: {list(missing)}; shapes: {shapes}"
            )
        self.shapes[graph] = key

    def bind(self, graph: str, addresses: dict[str, int]) -> None:
        problems = binding_problems(addresses)
        if problems:
            raise RuntimeError(f"{graph} bindings: " + "; ".join(problems))
        context = self.contexts[graph]
        for name, address in addresses.items():
            context.set_tensor_address(name, address)

    def execute(self, graph: str) -> None:
        context = self.contexts[graph]
        if not context.execute_async_v3(self.device.stream):
            raise RuntimeError(f"TensorRT could not enqueue the {graph} engine; see its log")

    def drop_graphs(self) -> None:
        for executable in self.graphs.values():
            self.device.destroy_graph(executable)
        self.graphs.clear()

    def close(self) -> None:
        self.drop_graphs()
        for buffers in self.buffers.values():
            for address in buffers.values():
                self.device.free(address)
        for address in self.extra.values():
            self.device.free(address)
        for array in self.pinned.values():
            self.device.free_pinned(array)
        self.pinned.clear()  # the arrays would point at freed memory
        self.extra.clear()
        self.buffers.clear()
        self.contexts.clear()
        self.device.close()


class TensorRTBackend(Backend):
    """Runs the FP16 encoder and decoder engines of one engine directory on one GPU.

    Loading checks the engine manifest against the running TensorRT and GPU (and, when
    `onnx_dir` is given, against the ONNX graphs) before any plan is deserialized. Buffers
    are allocated per thread on its first session, for the largest profile.

    It does not choose tokens, track finished rows or rank beams: that is the loop's job.
    """

    name = "tensorrt"

    def __init__(
        self,
        engine_dir: str | Path,
        *,
        onnx_dir: str | Path | None = None,
        device: int = 0,
        cuda_graphs: bool = False,
        device_factory: Callable[[int], CudaDevice] | None = None,
    ) -> None:
        """Load and check the engines.

        Args:
            engine_dir: A directory written by `transduce build`.
            onnx_dir: The export directory; when given, the engines must come from its graphs.
            device: The CUDA device index.
            cuda_graphs: Capture the decode step in a CUDA graph and replay it while shapes
                and buffers stay the same (falls back to plain enqueues when refused).
            device_factory: Makes the per-thread `CudaDevice` (tests pass a stand-in).

        Raises:
            EngineManifestError: When the engines do not fit this TensorRT, GPU or ONNX.
        """
        import tensorrt as trt

        self.engine_dir = Path(engine_dir)
        self.device_index = device
        self.cuda_graphs = cuda_graphs
        self._device_factory = device_factory or CudaDevice

        # 1) the manifest first: a plan for another TensorRT or GPU must not be deserialized
        manifest = read_engine_manifest(self.engine_dir)
        platform = current_platform(device)
        check_engine_manifest(
            manifest,
            trt_version=platform.tensorrt_version,
            gpu_name=platform.gpu_name,
            compute_capability=platform.compute_capability,
            onnx_dir=onnx_dir,
            engine_dir=self.engine_dir,
        )
        self.manifest = manifest
        self.info = ModelInfo.from_manifest(manifest)
        self.profiles = profile_limits(manifest)

        # 2) deserialize and compare each engine's tensors with the manifest
        self._trt_logger = tensorrt_logger()
        trt_runtime = trt.Runtime(self._trt_logger)
        if manifest["settings"].get("version_compatible"):
            trt_runtime.engine_host_code_allowed = True  # the plan embeds its lean runtime
        self._engines: dict[str, _Engine] = {}
        for graph in GRAPHS:
            entry = manifest["engines"][graph]
            engine = trt_runtime.deserialize_cuda_engine(
                (self.engine_dir / entry["file"]).read_bytes()
            )
            if engine is None:
                raise EngineManifestError(
                    f"TensorRT could not deserialize {self.engine_dir / entry['file']}; see its log"
                )
            specs = tensor_specs(entry["io"])
            problems = engine_io_problems(engine, specs)
            if problems:
                raise EngineManifestError(
                    f"{entry['file']} does not match its manifest:\n"
                    + "\n".join(f"  - {p}" for p in problems)
                )
            self._engines[graph] = _Engine(graph, engine, specs, buffer_bytes(specs, self.profiles))
        self._local = threading.local()
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()  # guards _workers only
        logger.info(
            "Loaded TensorRT engines from %s (TensorRT %s, %s, %d profile(s), CUDA graphs %s)",
            self.engine_dir.name,
            platform.tensorrt_version,
            platform.gpu_name,
            len(self.profiles),
            "on" if cuda_graphs else "off",
        )

    def limits(self) -> dict[str, int]:
        """The largest batch, source length and capacity of any profile (maybe not all in one)."""
        return {
            BATCH: max(p.max_batch for p in self.profiles),
            SRC_LEN: max(p.max_src_len for p in self.profiles),
            CAPACITY: max(p.max_capacity for p in self.profiles),
        }

    def _worker(self) -> _Worker:
        worker = getattr(self._local, "worker", None)
        if worker is None:
            worker = _Worker(self)
            self._local.worker = worker
            with self._lock:
                self._workers.append(worker)
        return worker

    def start(self, src_tokens: np.ndarray, *, beams: int, capacity: int) -> TensorRTSession:
        src_tokens = np.asarray(src_tokens)
        problems = request_problems(src_tokens, beams=beams, capacity=capacity, info=self.info)
        if problems:
            raise ValueError("invalid request:\n" + "\n".join(f"  - {p}" for p in problems))
        rows, src_len = src_tokens.shape
        profile = select_profile(
            self.profiles, batch=rows * beams, src_len=src_len, capacity=capacity
        )
        return TensorRTSession(self._worker(), src_tokens, beams, capacity, profile)

    def run_graph(self, graph: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one engine once on host arrays and return every output (for parity checks).

        Uses this thread's buffers, so it ends the thread's current session.
        """
        worker = self._worker()
        worker.session = None
        loaded = self._engines[graph]
        sizes = axis_sizes(loaded.specs, {n: a.shape for n, a in inputs.items()})
        profile = select_profile(
            self.profiles,
            batch=sizes.get(BATCH, 1),
            src_len=sizes.get(SRC_LEN, 1),
            capacity=sizes.get(CAPACITY, 1),
        )
        worker.use_profile(graph, profile.index)
        worker.set_shapes(graph, {name: array.shape for name, array in inputs.items()})
        buffers = worker.buffers[graph]
        worker.bind(graph, buffers)
        for name, array in inputs.items():
            spec = loaded.specs[name]
            worker.device.to_device(buffers[name], np.ascontiguousarray(array, dtype=spec.dtype))
        worker.execute(graph)
        outputs = {
            name: np.empty(spec.resolve(sizes), dtype=spec.dtype)
            for name, spec in loaded.specs.items()
            if not spec.is_input
        }
        for name, array in outputs.items():
            worker.device.to_host(array, buffers[name])
        worker.device.synchronize()
        return outputs

    def close(self) -> None:
        """Free every thread's buffers, streams and CUDA graphs."""
        with self._lock:
            for worker in self._workers:
                worker.session = None
                worker.close()
            self._workers.clear()
        self._local = threading.local()

    def __enter__(self) -> TensorRTBackend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def engine_io_problems(engine: Any, specs: dict[str, TensorSpec]) -> list[str]:
    """Every difference between a deserialized engine's tensors and the manifest's I/O table."""
    import tensorrt as trt

    problems = []
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    for name in sorted(set(specs) - set(names)):
        problems.append(f"{name} is in the manifest but not in the engine")
    for name in names:
        spec = specs.get(name)
        if spec is None:
            problems.append(f"{name} is in the engine but not in the manifest")
            continue
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
        if is_input != spec.is_input or dtype != spec.dtype:
            problems.append(
                f"{name}: engine has {'input' if is_input else 'output'} {dtype}, manifest "
                f"{'input' if spec.is_input else 'output'} {spec.dtype}"
            )
    return problems


class TensorRTSession(DecodeSession):
    """One request on one thread's worker: the encoder results and the cache, on the device."""

    def __init__(
        self,
        worker: _Worker,
        src_tokens: np.ndarray,
        beams: int,
        capacity: int,
        profile: ProfileLimits,
    ) -> None:
        rows, src_len = src_tokens.shape
        self.batch, self.capacity, self.beams = rows * beams, capacity, beams
        self._worker, self._thread = worker, threading.get_ident()
        self._info = worker.backend.info
        self._filled = 0  # cache slots written so far (0 .. P)
        self._sizes = {BATCH: self.batch, SRC_LEN: src_len, CAPACITY: capacity}

        # 1) end the thread's previous session: this one owns the worker's buffers now
        worker.session = self
        start = time.perf_counter()

        # 2) encode once; 3) hand the results to the decoder; 4) start from a zeroed cache
        self._encode(src_tokens, profile)
        self._addresses = dict(worker.buffers["decoder"])
        self._share_encoder_results(rows, src_len)
        self._reset_cache()
        worker.device.synchronize()
        self.encode_seconds = time.perf_counter() - start

        # 5) the decoder's shapes stay the same for the whole session
        self._fix_decoder_shapes(profile)
        logger.debug(
            "Session: %d rows x %d beams, src_len %d, capacity %d, profile %d, encoded in %.2f ms",
            rows,
            beams,
            src_len,
            capacity,
            profile.index,
            1000 * self.encode_seconds,
        )

    def _encode(self, src_tokens: np.ndarray, profile: ProfileLimits) -> None:
        """Run the encoder engine on the R source rows (asynchronously)."""
        worker = self._worker
        rows, src_len = src_tokens.shape
        worker.use_profile("encoder", profile.index)
        worker.set_shapes("encoder", {SRC_TOKENS: (rows, src_len)})
        buffers = worker.buffers["encoder"]
        worker.bind("encoder", buffers)
        staged = worker.pinned[SRC_TOKENS].view(np.int64)[: rows * src_len]
        staged[:] = src_tokens.astype(np.int64, copy=False).ravel()
        worker.device.to_device(buffers[SRC_TOKENS], staged)
        worker.execute("encoder")

    def _share_encoder_results(self, rows: int, src_len: int) -> None:
        """Point the decoder at the encoder's outputs, or at copies repeated for K beams."""
        worker = self._worker
        encoder = worker.backend._engines["encoder"]
        decoder = worker.backend._engines["decoder"]
        produced = worker.buffers["encoder"]
        for name, spec in decoder.specs.items():
            if not spec.is_input or name not in encoder.specs:
                continue
            if self.beams == 1:
                self._addresses[name] = produced[name]
                continue
            # row r of the encoder becomes rows r * K .. r * K + K - 1 of the decoder
            row_bytes = encoder.specs[name].nbytes({BATCH: rows, SRC_LEN: src_len}) // rows
            for copy in expand_copies(rows=rows, beams=self.beams, row_bytes=row_bytes):
                worker.device.copy_2d(self._addresses[name], produced[name], copy)

    def _reset_cache(self) -> None:
        """Zero the used part of every cache buffer (and of the spare ones, if made)."""
        # NOTE: masked slots must hold finite values: attention weighs them by exactly 0, and
        # 0 * NaN is NaN. Fresh or reused device memory holds anything, hence the memset.
        worker = self._worker
        decoder = worker.backend._engines["decoder"]
        self._cache_names = [name for name in decoder.specs if name.startswith("cache_")]
        self._cache_bytes = decoder.specs[self._cache_names[0]].nbytes(self._sizes)
        self._spare: dict[str, int] = {}  # the reorder targets, from worker.extra on first use
        for name in self._cache_names:
            worker.device.memset(self._addresses[name], self._cache_bytes)
            if f"spare:{name}" in worker.extra:
                self._spare[name] = worker.extra[f"spare:{name}"]
                worker.device.memset(self._spare[name], self._cache_bytes)

    def _fix_decoder_shapes(self, profile: ProfileLimits) -> None:
        """Set the decoder's input shapes once and check the output shapes it derives."""
        worker = self._worker
        decoder = worker.backend._engines["decoder"]
        worker.use_profile("decoder", profile.index)
        self._shapes = {
            name: spec.resolve(self._sizes) for name, spec in decoder.specs.items() if spec.is_input
        }
        worker.set_shapes("decoder", self._shapes)
        self._outputs = {name: spec for name, spec in decoder.specs.items() if not spec.is_input}
        context = worker.contexts["decoder"]
        wrong = {
            name: tuple(context.get_tensor_shape(name))
            for name, spec in self._outputs.items()
            if tuple(context.get_tensor_shape(name)) != spec.resolve(self._sizes)
        }
        if wrong:
            raise RuntimeError(f"decoder engine output shapes {wrong} differ from the manifest")

    def _check_active(self) -> None:
        if threading.get_ident() != self._thread:
            raise RuntimeError(
                "TensorRT session used from another thread; each thread must start its own "
                "session (a session uses its thread's execution contexts and stream)"
            )
        if self._worker.session is not self:
            raise RuntimeError(
                "TensorRT session has ended: a later start() or run_graph() on this thread took "
                "its buffers; a thread runs one session at a time"
            )

    def _signature(self) -> tuple:
        return (
            self._worker.profiles["decoder"],
            tuple(sorted(self._shapes.items())),
            tuple(sorted(self._addresses.items())),
        )

    def _enqueue(self) -> None:
        """The graph-capturable part of a step: inputs in, engine, top-k out (all async)."""
        worker, batch, k = self._worker, self.batch, self._info.top_k
        device, pinned = worker.device, worker.pinned
        device.to_device(self._addresses[TGT_TOKENS], pinned[TGT_TOKENS][: batch * 8])
        device.to_device(self._addresses[POSITION], pinned[POSITION][:8])
        worker.execute("decoder")
        device.to_host(pinned[TOP_LOG_PROBS][: batch * k * 4], self._addresses[TOP_LOG_PROBS])
        device.to_host(pinned[TOP_IDS][: batch * k * 8], self._addresses[TOP_IDS])

    def _run(self) -> None:
        """One decode step: replay a CUDA graph when possible, else enqueue eagerly."""
        worker = self._worker
        worker.bind("decoder", self._addresses)
        if not worker.backend.cuda_graphs or worker.graphs_refused:
            self._enqueue()
            return
        signature = self._signature()
        executable = worker.graphs.get(signature)
        if executable is not None:
            worker.graphs.move_to_end(signature)
            worker.device.launch(executable)
            return
        # TensorRT initializes on the first enqueue after a shape change: never capture that
        if worker.warm_shapes != signature[:2]:
            self._enqueue()
            worker.warm_shapes = signature[:2]
            return
        executable = self._capture()
        if executable is None:
            self._enqueue()
            return
        worker.graphs[signature] = executable
        if len(worker.graphs) > GRAPH_CACHE_SIZE:
            worker.device.destroy_graph(worker.graphs.popitem(last=False)[1])
        worker.device.launch(executable)

    def _capture(self) -> Any | None:
        """Capture `_enqueue` into an instantiated CUDA graph; None (and a warning) if refused."""
        worker, device = self._worker, self._worker.device
        reason = None
        if not device.begin_capture():
            reason = "cudaStreamBeginCapture failed"
        else:
            try:
                self._enqueue()
            except RuntimeError as error:  # an enqueue TensorRT cannot capture
                reason = str(error)
            executable = device.end_capture()
            if reason is None and executable is None:
                reason = "cudaStreamEndCapture or cudaGraphInstantiate failed"
            if reason is None:
                return executable
            if executable is not None:
                device.destroy_graph(executable)
        device.clear_error()
        worker.graphs_refused = True
        logger.warning(
            "CUDA graph capture of the decode step was refused (%s); running without CUDA "
            "graphs on this thread",
            reason,
        )
        return None

    def step(self, tokens: np.ndarray, position: int, *, full: bool = False) -> StepResult:
        self._check_active()
        tokens = np.asarray(tokens)
        if tokens.shape != (self.batch,) or tokens.dtype.kind not in "iu":
            raise ValueError(
                f"tokens must be ({self.batch},) integer ids; got shape {tokens.shape} and "
                f"dtype {tokens.dtype}"
            )
        if tokens.min() < 0 or tokens.max() >= self._info.tgt_vocab_size:
            raise ValueError(
                f"tokens must be ids in [0, {self._info.tgt_vocab_size}); got values from "
                f"{tokens.min()} to {tokens.max()}"
            )
        if not 0 <= position < self.capacity:
            raise ValueError(
                f"position ({position}) must be in [0, capacity = {self.capacity}); start the "
                "session with a larger capacity"
            )
        batch, device, pinned = self.batch, self._worker.device, self._worker.pinned

        # 1) stage the inputs in pinned memory, run (graph or eager)
        pinned[TGT_TOKENS].view(np.int64)[:batch] = tokens
        pinned[POSITION].view(np.int64)[0] = position
        self._run()

        # 2) this step's keys and values go into cache slot P, on the device
        for name, spec in self._outputs.items():
            if not name.startswith("new_"):
                continue
            copy = slot_write_copy(
                batch=batch,
                n_heads=self._info.n_heads,
                capacity=self.capacity,
                head_dim=self._info.head_dim,
                itemsize=spec.dtype.itemsize,
                position=position,
            )
            device.copy_2d(self._addresses[cache_partner(name)], self._addresses[name], copy)
        if full:
            vocab = self._info.tgt_vocab_size
            device.to_host(pinned[LOG_PROBS][: batch * vocab * 4], self._addresses[LOG_PROBS])
        device.synchronize()
        self._filled = max(self._filled, position + 1)

        # 3) copies out of the pinned buffers, which the next step overwrites
        return self._host_results(full)

    def _host_results(self, full: bool) -> StepResult:
        pinned, batch, k = self._worker.pinned, self.batch, self._info.top_k
        vocab = self._info.tgt_vocab_size
        top_log_probs = pinned[TOP_LOG_PROBS].view(np.float32)[: batch * k]
        top_ids = pinned[TOP_IDS].view(np.int64)[: batch * k]
        log_probs = pinned[LOG_PROBS].view(np.float32)[: batch * vocab] if full else None
        return StepResult(
            top_log_probs=top_log_probs.reshape(batch, k).copy(),
            top_ids=top_ids.reshape(batch, k).copy(),
            log_probs=None if log_probs is None else log_probs.reshape(batch, vocab).copy(),
        )

    def reorder(self, rows: np.ndarray) -> None:
        self._check_active()
        rows = np.asarray(rows)
        if rows.shape != (self.batch,) or rows.dtype.kind not in "iu":
            raise ValueError(
                f"rows must be ({self.batch},) integer row indices; got shape {rows.shape} and "
                f"dtype {rows.dtype}"
            )
        if rows.min() < 0 or rows.max() >= self.batch:
            raise ValueError(f"rows must be in [0, {self.batch}); got {rows.min()}..{rows.max()}")
        if np.array_equal(rows, np.arange(self.batch)):
            return
        # LIMITATION: reordering issues one cudaMemcpy2DAsync per run of consecutive rows and
        # per cache tensor (up to B * 2 * Ld calls from Python per step, a few microseconds
        # each), because the engines have no gather input. A row-index input to the decoder
        # graph (a Gather on the cache inside the engine) would make it one enqueue.
        _warn_once(
            "reorder",
            "Beam reordering copies cache rows with one CUDA copy per row run and cache tensor; "
            "large beams x batches spend Python time here (README: TensorRT engines)",
        )
        worker, device = self._worker, self._worker.device
        decoder = worker.backend._engines["decoder"]
        for name in self._cache_names:
            if name not in self._spare:
                self._spare[name] = worker.extra_buffer(f"spare:{name}", decoder.sizes[name])
            spare = self._spare[name]
            copies = reorder_copies(
                rows,
                n_heads=self._info.n_heads,
                capacity=self.capacity,
                head_dim=self._info.head_dim,
                itemsize=decoder.specs[name].dtype.itemsize,
                filled=self._filled,
            )
            for copy in copies:
                device.copy_2d(spare, self._addresses[name], copy)
            # the spare becomes current; the old buffer is the next reorder's target
            self._spare[name], self._addresses[name] = self._addresses[name], spare
        logger.debug("Reordered %d cache rows in %d runs", self.batch, len(row_runs(rows)))
