"""The ONNX Runtime backend: the exported graphs on the CPU (or a CUDA/TensorRT provider).

The cache lives in preallocated host arrays bound once with I/O binding; each step writes
the decoder's new keys and values into one slot of them in place, so no cache tensor is
allocated or copied per step.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from transduce.runtime.backend import Backend, DecodeSession, ModelInfo, StepResult
from transduce.runtime.manifest import check_graph_files, load_export

logger = logging.getLogger(__name__)


def _session(
    path: Path, providers: list[str], threads: int | None, spin: bool
) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # NOTE: ONNX Runtime's pool threads busy-wait between kernels unless told not to. The
    # encoder's pool never spins: it runs once per request and would spin while the decoder
    # works (on the 2-core machine, spinning in both sessions decoded 0.81-0.86x as fast as
    # spinning in the decoder only). The decoder's pool spins by default: 1.08-1.13x faster than
    # no spinning at batch 1, 4 and 16 at load ~1; under heavy contention from other processes
    # (load 5-6 on 2 cores) no spinning anywhere was 1.5-1.8x faster, hence `spin=False`.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return ort.InferenceSession(str(path), sess_options=options, providers=providers)


class OnnxRuntimeBackend(Backend):
    """Runs encoder.onnx and decoder.onnx of an export directory with ONNX Runtime.

    Args:
        export_dir: a directory written by `transduce export` (graphs and manifest.json).
        providers: ONNX Runtime execution providers, best first; CPU when not given.
        threads: intra-op threads per session (ONNX Runtime's default when not given).
        spin: let the decoder's idle pool threads busy-wait for the next kernel (ONNX
            Runtime's default; the encoder's never do). Turn it off on a machine shared with
            other busy processes; see `_session`.
    """

    name = "onnxruntime"

    def __init__(
        self,
        export_dir: str | Path,
        *,
        providers: list[str] | None = None,
        threads: int | None = None,
        spin: bool = True,
    ) -> None:
        self.export_dir = Path(export_dir)
        self.manifest = load_export(self.export_dir)
        check_graph_files(self.export_dir, self.manifest)
        self.info = ModelInfo.from_manifest(self.manifest)
        self.precision = self.manifest["precision"]["dtype"]
        quantization = self.manifest["precision"].get("quantization")
        self.name = "onnxruntime-" + (
            "int8" if quantization else "fp16" if self.precision == "float16" else "fp32"
        )
        providers = providers or ["CPUExecutionProvider"]
        start = time.perf_counter()
        graphs = self.manifest["graphs"]
        self.encoder = _session(
            self.export_dir / graphs["encoder"]["file"], providers, threads, False
        )
        self.decoder = _session(
            self.export_dir / graphs["decoder"]["file"], providers, threads, spin
        )
        logger.info(
            "Loaded %s (%s) with %s in %.2f s",
            self.export_dir.name,
            self.precision,
            self.decoder.get_providers()[0],
            time.perf_counter() - start,
        )

    def start(self, src_tokens: np.ndarray, *, beams: int, capacity: int) -> DecodeSession:
        return OnnxRuntimeSession(self, src_tokens, beams=beams, capacity=capacity)


# LIMITATION: the decoder graph's attention is about 14 small kernels per layer (two segments,
# the cache and the new position, joined by Concat/Where/Slice, with Transposes), run one after
# another. Profiled on the base model they are about 20 % of a step at batch 16 (ONNX Runtime
# profiler: FusedMatMul, MatMul, Where, Slice, Softmax, Transpose), and on small models they
# dominate: the 2-layer demo model decodes 2-3x slower than CTranslate2. A one-segment
# attention over a cache updated in place inside the graph (TensorScatter, opset 24) or a fused
# attention kernel would remove most of them; both are export-level changes.
class OnnxRuntimeSession(DecodeSession):
    def __init__(
        self, backend: OnnxRuntimeBackend, src_tokens: np.ndarray, *, beams: int, capacity: int
    ) -> None:
        info = backend.info
        n, H, Dh = info.n_layers, info.n_heads, info.head_dim
        self.decoder = backend.decoder

        # 1) encode once; beams of one source share its results, so rows are repeated
        start = time.perf_counter()
        encoded = backend.encoder.run(None, {"src_tokens": src_tokens})
        self.encode_seconds = time.perf_counter() - start
        self.graph_seconds = 0.0  # decoder graph time of this session; the rest is Python
        src_mask, *cross = (np.repeat(x, beams, axis=0) if beams > 1 else x for x in encoded)

        # 2) the cache: 2 * Ld arrays (B, H, L, Dh), zero so that unfilled slots stay finite
        self.batch, self.capacity = src_tokens.shape[0] * beams, capacity
        B, dtype = self.batch, np.dtype(info.cache_dtype)
        self.cache = [np.zeros((B, H, capacity, Dh), dtype) for _ in range(2 * n)]
        self.new_kv = [np.empty((B, H, 1, Dh), dtype) for _ in range(2 * n)]
        self.tokens = np.empty((B, 1), np.int64)
        self.position = np.zeros((1,), np.int64)
        self.log_probs = np.empty((B, info.tgt_vocab_size), np.float32)
        self.top_log_probs = np.empty((B, info.top_k), np.float32)
        self.top_ids = np.empty((B, info.top_k), np.int64)

        # 3) bind everything once: inputs and outputs are these arrays, updated in place
        self.binding = binding = backend.decoder.io_binding()
        names = [i.name for i in backend.decoder.get_inputs()]
        for name, array in zip(
            names, [self.tokens, self.position, src_mask, *cross, *self.cache], strict=True
        ):
            binding.bind_cpu_input(name, array)
        self._keep_alive = (src_mask, cross)
        self._cache_names = names[-2 * n :]
        self._spare: list[np.ndarray] | None = None  # the reorder target, made when needed
        self._filled = 0  # cache slots written so far
        outputs = [self.log_probs, self.top_log_probs, self.top_ids, *self.new_kv]
        for output, array in zip(backend.decoder.get_outputs(), outputs, strict=True):
            binding.bind_output(output.name, "cpu", 0, array.dtype, array.shape, array.ctypes.data)

    def step(self, tokens: np.ndarray, position: int, *, full: bool = False) -> StepResult:
        self.tokens[:, 0] = tokens
        self.position[0] = position
        start = time.perf_counter()
        self.decoder.run_with_iobinding(self.binding)
        self.graph_seconds += time.perf_counter() - start
        # this step's keys and values become cache slot P
        for cache, new in zip(self.cache, self.new_kv, strict=True):
            cache[:, :, position] = new[:, :, 0]
        self._filled = max(self._filled, position + 1)
        return StepResult(
            self.top_log_probs.copy(), self.top_ids.copy(), self.log_probs.copy() if full else None
        )

    def reorder(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, dtype=np.int64)
        if np.array_equal(rows, np.arange(self.batch)):
            return
        # gather the filled slots into a second set of arrays and bind that set: one copy per
        # tensor, where cache[...] = cache[rows] makes a temporary and copies twice
        if self._spare is None:
            self._spare = [np.zeros_like(cache) for cache in self.cache]
        filled = self._filled
        for cache, spare in zip(self.cache, self._spare, strict=True):
            np.take(cache[:, :, :filled], rows, axis=0, out=spare[:, :, :filled], mode="clip")
        self.cache, self._spare = self._spare, self.cache
        for name, cache in zip(self._cache_names, self.cache, strict=True):
            self.binding.bind_cpu_input(name, cache)
