"""Measure the decoder-step cost of three self-attention cache designs in ONNX Runtime on the CPU.

    .venv/bin/python scripts/measure_cache_designs.py --batches 1 16 --steps 64 --reps 5

A is ours (export/contract.py: a fixed-capacity cache bound once, the graph outputs only the new
position, numpy writes it into slot P). B is the growing cache (past (B, H, P, Dh) in, present
(B, H, P + 1, Dh) out by concatenation, ORT-allocated outputs fed back as the next inputs). C is
an opset 24 `TensorScatter` into a fixed-capacity cache whose input and output are bound to the
same buffer. The designs step in lockstep (their order rotating every step), so noise on this
shared machine hits them alike; the table gives medians and ratios to A.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import onnxscript
import torch
from torch import nn

from transduce.export.onnx_export import DEFAULT_TOP_K, onnx_from_model
from transduce.model.config import preset
from transduce.model.transformer import Transformer
from transduce.runtime.backend import StepResult
from transduce.runtime.onnxruntime_backend import OnnxRuntimeBackend

logger = logging.getLogger("measure_cache_designs")

DESIGNS = {
    "A": "fixed cache, new K/V out, numpy writes slot P (ours)",
    "B": "growing cache, concat past + new, present fed back",
    "C": "fixed cache, opset 24 TensorScatter in place",
}
CHECK_STEPS = (0, 1, 17)  # and the last step: where each design's log-probs meet the reference
TOLERANCE = 1e-3  # max abs diff of fp32 log-probs; a broken cache is off by far more
BYTES_FP32 = 4
CACHE_OPS = ("Concat", "TensorScatter")  # the in-graph cache updates of B and C

# ---------------------------------------------------------------------------------------------
# B and C as decoder-step modules on the reference model's layers


def _head(model: Transformer, x: torch.Tensor, top_k: int) -> tuple[torch.Tensor, ...]:
    """(B, 1, D) -> log_probs (B, V) float32 and its top_k, as in the contract."""
    log_probs = torch.log_softmax(model.logits(x)[:, -1].float(), dim=-1)
    return (log_probs, *torch.topk(log_probs, top_k, dim=-1))


class GrowingStepGraph(nn.Module):
    """One decoder step over past keys/values (B, H, P, Dh) that returns them grown by one.

    in:  tgt_tokens, position, src_mask, cross_keys.i, cross_values.i, past_keys.i, past_values.i
    out: log_probs, top_log_probs, top_ids, present_keys.i, present_values.i  (B, H, P + 1, Dh)
    """

    def __init__(self, model: Transformer, top_k: int) -> None:
        super().__init__()
        self.model, self.top_k = model, top_k
        self.n_layers = model.config.n_decoder_layers

    def forward(
        self, tgt_tokens: torch.Tensor, position: torch.Tensor, src_mask: torch.Tensor, *kv
    ) -> tuple[torch.Tensor, ...]:
        n = self.n_layers
        cross_keys, cross_values = kv[:n], kv[n : 2 * n]
        past_keys, past_values = kv[2 * n : 3 * n], kv[3 * n :]
        # the past and the new position are all visible: (1, 1, 1, 1) broadcast over P + 1
        visible = torch.ones(1, 1, 1, 1, dtype=torch.bool)
        cross_mask = src_mask[:, None, None, :]  # (B, 1, 1, S)

        x = self.model._embed(self.model.tgt_embed, tgt_tokens, position)  # (B, 1, D)
        present_keys, present_values = [], []
        for i, layer in enumerate(self.model.decoder_layers):

            def self_segments(keys, values, i=i):
                # (B, H, P, Dh) + (B, H, 1, Dh) -> (B, H, P + 1, Dh): a new tensor every step
                keys = torch.cat([past_keys[i], keys], dim=2)
                values = torch.cat([past_values[i], values], dim=2)
                present_keys.append(keys)
                present_values.append(values)
                return [(keys, values, visible)]

            x = layer(x, self_segments, (cross_keys[i], cross_values[i]), cross_mask)
        return (*_head(self.model, x, self.top_k), *present_keys, *present_values)


@torch.library.custom_op("measure_cache_designs::tensor_scatter", mutates_args=())
def tensor_scatter(
    cache: torch.Tensor, update: torch.Tensor, write_indices: torch.Tensor
) -> torch.Tensor:
    """ONNX TensorScatter (axis -2, linear): cache (B, H, L, Dh) with update (B, H, T, Dh)
    written at slots write_indices[b] .. + T - 1 of row b; write_indices (B,) int64."""
    out = cache.clone()
    for row, start in enumerate(write_indices.tolist()):
        out[row, :, start : start + update.shape[2]] = update[row]
    return out


@tensor_scatter.register_fake
def _tensor_scatter_fake(cache, update, write_indices):
    return torch.empty_like(cache)


# onnxscript 0.7.2 has no opset24 module; an Opset object emits the op all the same
OPSET_24 = onnxscript.values.Opset("", 24)


def _tensor_scatter_onnx(cache, update, write_indices):
    return OPSET_24.TensorScatter(cache, update, write_indices, axis=-2)


class ScatterStepGraph(nn.Module):
    """One decoder step that scatters its keys/values into slot P of a fixed-capacity cache.

    in:  tgt_tokens, position, src_mask, cross_keys.i, cross_values.i, cache_keys.i,
         cache_values.i  (B, H, L, Dh)
    out: log_probs, top_log_probs, top_ids, updated_keys.i, updated_values.i  (B, H, L, Dh),
         meant to be bound to the same buffers as the cache inputs
    """

    def __init__(self, model: Transformer, top_k: int) -> None:
        super().__init__()
        self.model, self.top_k = model, top_k
        self.n_layers = model.config.n_decoder_layers

    def forward(
        self, tgt_tokens: torch.Tensor, position: torch.Tensor, src_mask: torch.Tensor, *kv
    ) -> tuple[torch.Tensor, ...]:
        n = self.n_layers
        cross_keys, cross_values = kv[:n], kv[n : 2 * n]
        cache_keys, cache_values = kv[2 * n : 3 * n], kv[3 * n :]
        capacity = cache_keys[0].shape[2]
        write_indices = position.expand(tgt_tokens.shape[0])  # (B,)
        # after the scatter, slots 0 .. P hold the past and this step: (1, 1, 1, L)
        visible = (torch.arange(capacity) <= position)[None, None, None, :]
        cross_mask = src_mask[:, None, None, :]  # (B, 1, 1, S)

        x = self.model._embed(self.model.tgt_embed, tgt_tokens, position)  # (B, 1, D)
        updated_keys, updated_values = [], []
        for i, layer in enumerate(self.model.decoder_layers):

            def self_segments(keys, values, i=i):
                keys = tensor_scatter(cache_keys[i], keys, write_indices)
                values = tensor_scatter(cache_values[i], values, write_indices)
                updated_keys.append(keys)
                updated_values.append(values)
                return [(keys, values, visible)]

            x = layer(x, self_segments, (cross_keys[i], cross_values[i]), cross_mask)
        return (*_head(self.model, x, self.top_k), *updated_keys, *updated_values)


def _layer_names(n_layers: int, keys: str, values: str) -> list[str]:
    return [f"{keys}.{i}" for i in range(n_layers)] + [f"{values}.{i}" for i in range(n_layers)]


def _step_io(n_layers: int, cache_in: tuple[str, str], cache_out: tuple[str, str]):
    inputs = ["tgt_tokens", "position", "src_mask"]
    inputs += _layer_names(n_layers, "cross_keys", "cross_values")
    outputs = ["log_probs", "top_log_probs", "top_ids"]
    return inputs + _layer_names(n_layers, *cache_in), outputs + _layer_names(n_layers, *cache_out)


def export_step_graph(
    module: nn.Module,
    path: Path,
    *,
    cache_axis: str,
    names: tuple[list[str], list[str]],
    opset: int,
    translations: dict | None = None,
) -> None:
    """Export a B or C step module with dynamic batch, src_len and cache length axes."""
    config = module.model.config
    B, S, L = 2, 5, 3
    H, Dh, n = config.n_heads, config.head_dim, config.n_decoder_layers
    generator = torch.Generator().manual_seed(0)

    def kv(length: int) -> torch.Tensor:
        return torch.randn(B, H, length, Dh, generator=generator)

    args = (
        torch.full((B, 1), config.bos_id, dtype=torch.long),
        torch.tensor([1]),
        torch.ones(B, S, dtype=torch.bool),
        *(kv(S) for _ in range(2 * n)),
        *(kv(L) for _ in range(2 * n)),
    )
    Dim = torch.export.Dim
    batch = Dim("batch", min=1, max=4096)
    src_len = Dim("src_len", min=1, max=config.max_positions)
    cache_len = Dim(cache_axis, min=0, max=config.max_positions)
    kv_shapes = (*[{0: batch, 2: src_len}] * (2 * n), *[{0: batch, 2: cache_len}] * (2 * n))
    shapes = ({0: batch}, None, {0: batch, 1: src_len}, kv_shapes)

    start = time.perf_counter()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter
        program = torch.onnx.export(
            module.eval(),
            args,
            input_names=names[0],
            output_names=names[1],
            dynamic_shapes=shapes,
            opset_version=opset,
            dynamo=True,
            external_data=False,
            custom_translation_table=translations,
            verbose=False,
        )
    onnx.save(program.model_proto, path)
    logger.info("Exported %s in %.1f s", path.name, time.perf_counter() - start)


# ---------------------------------------------------------------------------------------------
# drivers: one request each, with the same step() as runtime/backend.py's DecodeSession


def _session(path: Path, threads: int, profile: Path | None = None) -> ort.InferenceSession:
    """The options of runtime/onnxruntime_backend.py; with `profile`, ORT's profiler is on."""
    options = ort.SessionOptions()
    if profile is not None:
        options.enable_profiling, options.profile_file_prefix = True, str(profile)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


class _BoundSession:
    """Host arrays for the small inputs and outputs, bound once; the cache is up to subclasses."""

    def __init__(self, session: ort.InferenceSession, encoded: list[np.ndarray]) -> None:
        self.session, self.binding = session, session.io_binding()
        B, V, top_k = encoded[0].shape[0], session.get_outputs()[0].shape[1], DEFAULT_TOP_K
        self.tokens, self.position = np.empty((B, 1), np.int64), np.zeros((1,), np.int64)
        self.log_probs = np.empty((B, V), np.float32)
        self.top_log_probs = np.empty((B, top_k), np.float32)
        self.top_ids = np.empty((B, top_k), np.int64)
        self._keep_alive = encoded
        names = [i.name for i in session.get_inputs()]
        small_inputs = [self.tokens, self.position, *encoded]
        for name, array in zip(names, small_inputs, strict=False):  # all but the cache
            self.binding.bind_cpu_input(name, array)
        self.cache_inputs = names[len(small_inputs) :]
        self.cache_outputs = [o.name for o in session.get_outputs()[3:]]

    def _bind_small_outputs(self) -> None:
        arrays = [self.log_probs, self.top_log_probs, self.top_ids]
        for output, array in zip(self.session.get_outputs()[:3], arrays, strict=True):
            self.binding.bind_output(
                output.name, "cpu", 0, array.dtype, array.shape, array.ctypes.data
            )

    def _result(self, full: bool) -> StepResult:
        return StepResult(
            self.top_log_probs.copy(), self.top_ids.copy(), self.log_probs.copy() if full else None
        )


class GrowingSession(_BoundSession):
    """B: past OrtValues in, ORT-allocated present OrtValues out, which become the next past."""

    def __init__(
        self, session: ort.InferenceSession, encoded: list[np.ndarray], n_heads: int, head_dim: int
    ) -> None:
        super().__init__(session, encoded)
        B = self.tokens.shape[0]
        # P = 0: zero-length past tensors (ONNX Runtime takes them; TensorRT is unconfirmed)
        empty = np.zeros((B, n_heads, 0, head_dim), np.float32)
        self.past = [ort.OrtValue.ortvalue_from_numpy(empty) for _ in self.cache_inputs]
        self._bind_small_outputs()

    def step(self, tokens: np.ndarray, position: int, *, full: bool = False) -> StepResult:
        self.tokens[:, 0] = tokens
        self.position[0] = position
        for name, value in zip(self.cache_inputs, self.past, strict=True):
            self.binding.bind_ortvalue_input(name, value)
        # NOTE: the present outputs are rebound every step; left bound, ORT would reuse last
        # step's buffers, which are this step's past and one position too short
        for name in self.cache_outputs:
            self.binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(self.binding)
        self.past = self.binding.get_outputs()[3:]
        return self._result(full)


class ScatterSession(_BoundSession):
    """C: the cache arrays are bound as both input and output; TensorScatter writes slot P.

    NOTE: ONNX Runtime 1.32 skips the copy only when the output is the input's buffer; it logs
    "in-place optimization not activated" when it copies. Measured here at B = 16 (a 2 MiB
    cache tensor): 16 us per TensorScatter in place, 321 us bound to a separate buffer.
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        encoded: list[np.ndarray],
        *,
        n_heads: int,
        head_dim: int,
        capacity: int,
    ) -> None:
        super().__init__(session, encoded)
        B = self.tokens.shape[0]
        self.cache = [
            np.zeros((B, n_heads, capacity, head_dim), np.float32) for _ in self.cache_inputs
        ]
        for name, array in zip(self.cache_inputs, self.cache, strict=True):
            self.binding.bind_cpu_input(name, array)
        self._bind_small_outputs()
        for name, array in zip(self.cache_outputs, self.cache, strict=True):
            self.binding.bind_output(name, "cpu", 0, array.dtype, array.shape, array.ctypes.data)

    def step(self, tokens: np.ndarray, position: int, *, full: bool = False) -> StepResult:
        self.tokens[:, 0] = tokens
        self.position[0] = position
        self.session.run_with_iobinding(self.binding)
        return self._result(full)


# ---------------------------------------------------------------------------------------------
# checks and timing


def reference_log_probs(
    model: Transformer, src_tokens: np.ndarray, tgt_tokens: np.ndarray, steps: list[int]
) -> dict[int, np.ndarray]:
    """`Transformer.decode_step` log-probs (B, V) at the given steps, fed tgt_tokens (N, B)."""
    src = torch.from_numpy(src_tokens)
    cache, expected = model.new_cache(), {}
    with torch.no_grad():
        cross_kv = model.cross_keys_values(model.encode(src))
        for position in range(max(steps) + 1):
            tokens = torch.from_numpy(tgt_tokens[position])[:, None]
            log_probs = model.decode_step(tokens, cross_kv, model.source_mask(src), cache)
            if position in steps:
                expected[position] = log_probs[:, -1].numpy()
    return expected


def check_design(
    session, tgt_tokens: np.ndarray, expected: dict[int, np.ndarray], after_step=None
) -> tuple[float, int]:
    """Run a whole request; the largest |log-prob - reference| over the checked steps, and where.

    after_step: called with (session, P) after every step.
    """
    worst, where = 0.0, -1
    for position, tokens in enumerate(tgt_tokens):
        result = session.step(tokens, position, full=position in expected)
        if after_step is not None:
            after_step(session, position)
        if position in expected:
            diff = float(np.abs(result.log_probs - expected[position]).max())
            worst, where = (diff, position) if diff > worst else (worst, where)
    return worst, where


def slot_write_seconds(session, position: int) -> float:
    """A's cache update, timed: the numpy writes that OnnxRuntimeSession.step makes (again)."""
    start = time.perf_counter()
    for cache, new in zip(session.cache, session.new_kv, strict=True):
        cache[:, :, position] = new[:, :, 0]
    return time.perf_counter() - start


def profiled_update_seconds(
    profile: Path, *, first_step: int, n_heads: int, head_dim: int
) -> float:
    """Seconds per step from `first_step` on in the kernels that write a (B, H, *, Dh) cache
    tensor (B's Concat, C's TensorScatter), from ORT's profile of one request."""
    events = json.loads(profile.read_text())
    runs = [event for event in events if event.get("name") == "model_run"]
    total_us = 0
    for event in events:
        args = event.get("args", {})
        if event.get("cat") != "Node" or args.get("op_name") not in CACHE_OPS:
            continue
        shape = next(iter(args["output_type_shape"][0].values()))
        is_cache = len(shape) == 4 and (shape[1], shape[3]) == (n_heads, head_dim)
        if is_cache and event["ts"] >= runs[first_step]["ts"]:
            total_us += event["dur"]
    return total_us * 1e-6 / (len(runs) - first_step)


def time_lockstep(
    make_sessions: dict[str, Callable], tgt_tokens: np.ndarray, reps: int
) -> dict[str, np.ndarray]:
    """Per-step seconds (reps, steps) of every design, stepping all designs at each position."""
    names = list(make_sessions)
    seconds = {name: np.zeros((reps, len(tgt_tokens))) for name in names}
    for rep in range(reps):
        sessions = {name: make() for name, make in make_sessions.items()}
        for position, tokens in enumerate(tgt_tokens):
            # rotate the order so that no design always runs right after the same one
            shift = (rep + position) % len(names)
            for name in names[shift:] + names[:shift]:
                start = time.perf_counter()
                sessions[name].step(tokens, position)
                seconds[name][rep, position] = time.perf_counter() - start
    return seconds


def cache_traffic(design: str, *, batch: int, config, position: int) -> tuple[int, int]:
    """Cache bytes (allocated, copied) per step at P, from the shapes (not measured)."""
    slot = 2 * config.n_decoder_layers * batch * config.n_heads * config.head_dim * BYTES_FP32
    if design == "A":  # new K/V into bound arrays, then numpy copies them into slot P
        return 0, 2 * slot
    if design == "B":  # present: a fresh (P + 1)-slot tensor, the past copied into it
        return (position + 1) * slot, (position + 1) * slot
    return 0, slot  # C: one slot written in place


# ---------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="base", help="model preset (random seeded weights)")
    parser.add_argument(
        "--batches", type=int, nargs="+", default=[1, 16], help="batch sizes B to measure"
    )
    parser.add_argument("--src-len", type=int, default=32, help="source tokens S per row")
    parser.add_argument(
        "--steps", type=int, default=64, help="decoder steps per request (P = 0 .. steps - 1)"
    )
    parser.add_argument(
        "--late", type=int, default=16, help="the last this many steps are the late steps"
    )
    parser.add_argument(
        "--reps", type=int, default=5, help="timed requests per design and batch size"
    )
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    parser.add_argument(
        "--designs", default="ABC", help="which of A, B, C to run (A is always run: the baseline)"
    )
    parser.add_argument(
        "--workdir", type=Path, help="where to keep the exported graphs (a temporary directory)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the tokens")
    parser.add_argument("-v", "--verbose", action="store_true", help="DEBUG logging")
    return parser.parse_args()


def export_all(model: Transformer, workdir: Path, designs: str) -> dict[str, Path]:
    """Export A's directory and B's and C's decoder graphs; returns where each lies."""
    n = model.config.n_decoder_layers
    paths = {"A": workdir / "A"}
    start = time.perf_counter()
    onnx_from_model(model, paths["A"])
    logger.info("Exported A (encoder and decoder) in %.1f s", time.perf_counter() - start)
    if "B" in designs:
        paths["B"] = workdir / "growing.onnx"
        names = _step_io(n, ("past_keys", "past_values"), ("present_keys", "present_values"))
        graph = GrowingStepGraph(model, DEFAULT_TOP_K)
        export_step_graph(graph, paths["B"], cache_axis="past_len", names=names, opset=20)
    if "C" in designs:
        paths["C"] = workdir / "scatter.onnx"
        names = _step_io(n, ("cache_keys", "cache_values"), ("updated_keys", "updated_values"))
        export_step_graph(
            ScatterStepGraph(model, DEFAULT_TOP_K),
            paths["C"],
            cache_axis="capacity",
            names=names,
            opset=24,
            translations={
                torch.ops.measure_cache_designs.tensor_scatter.default: _tensor_scatter_onnx
            },
        )
    return paths


def summarize(
    seconds: dict[str, np.ndarray], update: dict[str, float], *, batch: int, config, args
) -> list[dict]:
    """One table row per design: medians, ratios to A, cache traffic at the late steps."""
    late = slice(args.steps - args.late, args.steps)
    base = seconds["A"]
    rows = []
    for name, times in seconds.items():
        med_all, med_late = np.median(times), np.median(times[:, late])
        # the late ratio request by request: how far one request's answer strays
        per_request = np.median(times[:, late], axis=1) / np.median(base[:, late], axis=1)
        traffic = np.array(
            [
                cache_traffic(name, batch=batch, config=config, position=p)
                for p in range(late.start, late.stop)
            ]
        )
        rows.append(
            {
                "design": name,
                "batch": batch,
                "all_ms": 1e3 * med_all,
                "late_ms": 1e3 * med_late,
                "ratio_all": med_all / np.median(base),
                "ratio_late": med_late / np.median(base[:, late]),
                "spread": (per_request.min(), per_request.max()),
                "update_ms": 1e3 * update[name],
                "alloc_kib": traffic[:, 0].mean() / 2**10,
                "copied_kib": traffic[:, 1].mean() / 2**10,
            }
        )
    return rows


def print_tables(checks: list[tuple], rows: list[dict], args) -> None:
    print("\n| design | B | checked steps P | max abs diff vs decode_step | at P | ok |")
    print("|---|---|---|---|---|---|")
    for name, batch, steps, worst, where in checks:
        ok = "yes" if worst <= TOLERANCE else "NO"
        print(f"| {name} | {batch} | {steps} | {worst:.2e} | {where} | {ok} |")

    late = f"P {args.steps - args.late}..{args.steps - 1}"
    print(
        f"\n| design | B | median ms/step (all P) | median ms/step ({late}) | ratio vs A (all) "
        "| ratio vs A (late) | late ratio per request (min-max) | cache update ms/step (late) "
        "| cache KiB allocated/step (late) | cache KiB copied/step (late) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        low, high = row["spread"]
        print(
            f"| {row['design']} | {row['batch']} | {row['all_ms']:.2f} | {row['late_ms']:.2f} "
            f"| {row['ratio_all']:.3f} | {row['ratio_late']:.3f} | {low:.3f}-{high:.3f} "
            f"| {row['update_ms']:.3f} | {row['alloc_kib']:.0f} | {row['copied_kib']:.0f} |"
        )
    print()
    for name, text in DESIGNS.items():
        if name in {row["design"] for row in rows}:
            print(f"{name}: {text}")
    print(
        f"{args.reps} requests of {args.steps} steps per design and batch, {args.threads} "
        f"intra-op threads, S = {args.src_len}, capacity {args.steps}. Cache update: A's numpy "
        "slot writes timed in Python, B's Concat and C's TensorScatter kernels from ONNX "
        "Runtime's profiler (one request). Cache KiB: computed from the shapes (fp32 K and V of "
        "every layer), not measured"
    )


def measure_batch(model, backend, paths, workdir, batch: int, args, rng) -> tuple[list, list]:
    """Check every design against the reference at one batch size, then time them."""
    config = model.config
    H, Dh, capacity = config.n_heads, config.head_dim, args.steps
    late_start = args.steps - args.late
    # random real tokens (no padding, no specials) and a fixed target sequence
    src = rng.integers(3, config.src_vocab_size, (batch, args.src_len), dtype=np.int64)
    tgt = rng.integers(3, config.tgt_vocab_size, (args.steps, batch), dtype=np.int64)
    tgt[0] = config.bos_id
    encoded = backend.encoder.run(None, {"src_tokens": src})
    makers = {
        "A": lambda: backend.start(src, beams=1, capacity=capacity),
        "B": lambda session: GrowingSession(session, encoded, H, Dh),
        "C": lambda session: ScatterSession(
            session, encoded, n_heads=H, head_dim=Dh, capacity=capacity
        ),
    }

    # 1) correctness (and warm-up) against the reference model; meanwhile each design's cache
    # update is timed apart from the rest of the step: A's numpy writes, B's and C's kernels
    steps = sorted({*CHECK_STEPS, args.steps - 1} & set(range(args.steps)))
    expected = reference_log_probs(model, src, tgt, steps)
    writes = []

    def time_writes(session, position: int) -> None:
        if position >= late_start:
            writes.append(slot_write_seconds(session, position))

    checks = [("A", batch, steps, *check_design(makers["A"](), tgt, expected, time_writes))]
    update = {"A": float(np.mean(writes))}
    others = sorted(paths.keys() - {"A"})
    for name in others:
        session = _session(paths[name], args.threads, profile=workdir / f"profile-{name}-{batch}")
        checks.append((name, batch, steps, *check_design(makers[name](session), tgt, expected)))
        update[name] = profiled_update_seconds(
            Path(session.end_profiling()), first_step=late_start, n_heads=H, head_dim=Dh
        )

    # 2) timing, all designs in lockstep, on sessions without the profiler
    timed = {"A": makers["A"]}
    for name in others:
        timed[name] = partial(makers[name], _session(paths[name], args.threads))
    start = time.perf_counter()
    seconds = time_lockstep(timed, tgt, args.reps)
    logger.info("Timed batch %d in %.1f s", batch, time.perf_counter() - start)
    return checks, summarize(seconds, update, batch=batch, config=config, args=args)


def main() -> None:
    args = parse_args()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s"
    )
    # the exporter's own chatter: "torchvision is not installed", "Replaced initializer ..."
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    for name in ("onnxscript", "onnx_ir"):
        logging.getLogger(name).setLevel(logging.WARNING)
    designs = "A" + "".join(sorted(set(args.designs.upper()) & set("BC")))
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    model = Transformer(preset(args.preset)).eval()

    with tempfile.TemporaryDirectory() as scratch:
        workdir = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        paths = export_all(model, workdir, designs)
        backend = OnnxRuntimeBackend(paths["A"], threads=args.threads)
        rng = np.random.default_rng(args.seed)
        checks, rows = [], []
        for batch in args.batches:
            batch_checks, batch_rows = measure_batch(
                model, backend, paths, workdir, batch, args, rng
            )
            checks += batch_checks
            rows += batch_rows
    print_tables(checks, rows, args)


if __name__ == "__main__":
    main()
