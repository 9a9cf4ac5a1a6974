"""Stand-ins for the GPU side, so the engine and TensorRT-backend logic runs on the CPU.

- `export_manifest` / `write_export_dir`: an export directory as `export/` writes it (the
  ONNX files are placeholders: only their hashes matter here).
- `fake_engine_from_onnx`: replaces `engines.build.engine_from_onnx`; it writes a "plan" that
  is the JSON of the engine's I/O table, as TensorRT's would describe it.
- `FakeMemory` / `FakeDevice`: the `CudaDevice` interface over numpy byte arrays, with
  fresh allocations filled with 0xFF (NaN in float16 and float32), stream capture recorded as
  a list of operations and replayed on launch.
- `fake_tensorrt`: the `tensorrt` names the backend uses; an execution context reads its
  inputs from `FakeMemory` at the bound addresses, runs a Python function (the torch graphs
  of `export/graphs.py` in the tests) and writes the outputs back.

Nothing here claims anything about real TensorRT; it checks our bookkeeping against torch.
"""

from __future__ import annotations

import bisect
import collections
import hashlib
import itertools
import json
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

Function = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


def export_manifest(
    n_layers: int = 2,
    heads: int = 4,
    head_dim: int = 8,
    top_k: int = 8,
    dtype: str = "float16",
    vocab: tuple[int, int] = (61, 67),
    max_positions: int = 64,
) -> dict[str, Any]:
    """An export manifest whose I/O table follows export/contract.py."""
    kv = ["batch", heads, "src_len", head_dim]
    cache = ["batch", heads, "capacity", head_dim]
    new = ["batch", heads, 1, head_dim]
    layers = range(n_layers)
    cross = [f"cross_keys.{i}" for i in layers] + [f"cross_values.{i}" for i in layers]
    caches = [f"cache_keys.{i}" for i in layers] + [f"cache_values.{i}" for i in layers]
    news = [f"new_keys.{i}" for i in layers] + [f"new_values.{i}" for i in layers]

    def io(name, kind, shape):
        return {"name": name, "dtype": kind, "shape": shape}

    return {
        "format": "transduce-onnx/1",
        "transduce_version": "0.1.0",
        "model": {
            "src_vocab_size": vocab[0],
            "tgt_vocab_size": vocab[1],
            "d_model": heads * head_dim,
            "n_heads": heads,
            "n_decoder_layers": n_layers,
            "max_positions": max_positions,
            "pad_id": 0,
            "bos_id": 1,
            "eos_id": 2,
        },
        "precision": {"dtype": dtype, "layer_norm_fp32": True, "softmax_fp32": True},
        "opset": 20,
        "top_k": top_k,
        "graphs": {
            "encoder": {
                "file": "encoder.onnx",
                "inputs": [io("src_tokens", "int64", ["batch", "src_len"])],
                "outputs": [io("src_mask", "bool", ["batch", "src_len"])]
                + [io(name, dtype, kv) for name in cross],
            },
            "decoder": {
                "file": "decoder.onnx",
                "inputs": [
                    io("tgt_tokens", "int64", ["batch", 1]),
                    io("position", "int64", [1]),
                    io("src_mask", "bool", ["batch", "src_len"]),
                ]
                + [io(name, dtype, kv) for name in cross]
                + [io(name, dtype, cache) for name in caches],
                "outputs": [
                    io("log_probs", "float32", ["batch", vocab[1]]),
                    io("top_log_probs", "float32", ["batch", top_k]),
                    io("top_ids", "int64", ["batch", top_k]),
                ]
                + [io(name, dtype, new) for name in news],
            },
        },
    }


def write_export_dir(directory: Path, manifest: dict[str, Any], seed: str = "v1") -> Path:
    """Write placeholder ONNX files and the manifest with their sha256s; returns `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    for graph, entry in manifest["graphs"].items():
        data = f"placeholder {graph} graph {seed}".encode()
        (directory / entry["file"]).write_bytes(data)
        entry["sha256"] = hashlib.sha256(data).hexdigest()
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return directory


def fake_engine_from_onnx(onnx_path: Path, plan_path: Path, *, profiles, **_: Any) -> dict:
    """Write a JSON "plan" with the I/O table TensorRT would report; count the builds."""
    export = json.loads((onnx_path.parent / "manifest.json").read_text())
    graph = next(g for g, e in export["graphs"].items() if e["file"] == onnx_path.name)
    table = []
    for mode in ("inputs", "outputs"):
        for tensor in export["graphs"][graph][mode]:
            row = {"name": tensor["name"], "mode": mode[:-1], "dtype": tensor["dtype"]}
            row["shape"] = list(tensor["shape"])
            if mode == "inputs" and tensor["name"] in profiles[0]:
                row["profiles"] = [[list(d) for d in p[tensor["name"]]] for p in profiles]
            table.append(row)
    plan = {"graph": graph, "io": table, "profiles": [len(profiles)]}
    plan_path.write_text(json.dumps(plan))
    fake_engine_from_onnx.calls.append(graph)
    return {"io": table, "seconds": 0.01, "bytes": plan_path.stat().st_size}


fake_engine_from_onnx.calls = []


# ---------------------------------------------------------------------------------------------
# device memory and the CudaDevice stand-in

# FakeDevice streams by handle, so a context can tell whether its stream is being captured
stream_capture: dict[int, FakeDevice] = {}
_streams = itertools.count(0x5EED)


class FakeMemory:
    """Device memory as numpy byte arrays at made-up, 512-byte aligned addresses."""

    def __init__(self) -> None:
        self.blocks: dict[int, np.ndarray] = {}
        self.bases: list[int] = []
        self.next = 0x7F00_0000_0000

    def alloc(self, nbytes: int) -> int:
        base = self.next
        self.next += -(-nbytes // 512) * 512 + 4096  # a gap catches overruns
        self.blocks[base] = np.full(nbytes, 0xFF, dtype=np.uint8)  # NaN in fp16 and fp32
        bisect.insort(self.bases, base)
        return base

    def free(self, address: int) -> None:
        del self.blocks[address]
        self.bases.remove(address)

    def view(self, address: int, nbytes: int) -> np.ndarray:
        index = bisect.bisect_right(self.bases, address) - 1
        assert index >= 0, f"address {address:#x} is not device memory"
        base = self.bases[index]
        block = self.blocks[base]
        offset = address - base
        assert offset + nbytes <= block.size, (
            f"access of {nbytes} bytes at {address:#x} overruns a {block.size}-byte buffer"
        )
        return block[offset : offset + nbytes]

    def read(self, address: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        return self.view(address, nbytes).view(dtype).reshape(shape).copy()

    def write(self, address: int, array: np.ndarray) -> None:
        data = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
        self.view(address, data.size)[:] = data


class FakeDevice:
    """The `CudaDevice` interface on `FakeMemory`; operations run at once unless capturing."""

    def __init__(self, memory: FakeMemory) -> None:
        self.memory = memory
        self.stream = next(_streams)
        stream_capture[self.stream] = self
        self.capturing: list | None = None
        self.counts: collections.Counter = collections.Counter()

    def _do(self, operation: Callable[[], None]) -> None:
        if self.capturing is not None:
            self.capturing.append(operation)
        else:
            operation()

    def malloc(self, nbytes: int) -> int:
        self.counts["malloc"] += 1
        return self.memory.alloc(nbytes)

    def free(self, address: int) -> None:
        self.memory.free(address)

    def pinned(self, nbytes: int) -> np.ndarray:
        return np.full(nbytes, 0xFF, dtype=np.uint8)

    def free_pinned(self, array: np.ndarray) -> None:
        pass

    def memset(self, address: int, nbytes: int) -> None:
        self._do(lambda: self.memory.view(address, nbytes).fill(0))

    def to_device(self, address: int, host: np.ndarray) -> None:
        # reads `host` when it runs: a captured copy sees the values staged before each launch
        self._do(lambda: self.memory.write(address, host))

    def to_host(self, host: np.ndarray, address: int) -> None:
        target = host.reshape(-1).view(np.uint8)
        self._do(lambda: target.__setitem__(slice(None), self.memory.view(address, target.size)))

    def copy_2d(self, dst: int, src: int, copy: Any) -> None:
        self.counts["copy_2d"] += 1

        def run() -> None:
            rows = [
                self.memory.view(src + copy.src_offset + i * copy.src_pitch, copy.width).copy()
                for i in range(copy.height)
            ]
            for i, row in enumerate(rows):
                self.memory.view(dst + copy.dst_offset + i * copy.dst_pitch, copy.width)[:] = row

        self._do(run)

    def synchronize(self) -> None:
        assert self.capturing is None, "synchronize during stream capture"

    def begin_capture(self) -> bool:
        self.capturing = []
        return True

    def end_capture(self) -> Any | None:
        operations, self.capturing = self.capturing, None
        self.counts["capture"] += 1
        return None if operations is None or None in operations else operations

    def launch(self, operations: list) -> None:
        self.counts["launch"] += 1
        for operation in operations:
            operation()

    def destroy_graph(self, operations: Any) -> None:
        self.counts["destroy_graph"] += 1

    def clear_error(self) -> None:
        pass

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------
# the tensorrt stand-in


def fake_tensorrt(memory: FakeMemory, functions: dict[str, Function], version: str) -> Any:
    """A module with the tensorrt names the backend uses, running `functions` per graph."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
    trt.nptype = np.dtype  # fake engines report numpy dtypes as their "DataType"

    class ILogger:
        Severity = types.SimpleNamespace(INTERNAL_ERROR=0, ERROR=1, WARNING=2, INFO=3, VERBOSE=4)

        def __init__(self) -> None:
            pass

    trt.ILogger = ILogger

    class Runtime:
        def __init__(self, trt_logger: Any) -> None:
            self.engine_host_code_allowed = False

        def deserialize_cuda_engine(self, plan: bytes) -> FakeEngine:
            return FakeEngine(json.loads(plan), memory, functions)

    trt.Runtime = Runtime
    return trt


class FakeEngine:
    def __init__(self, plan: dict, memory: FakeMemory, functions: dict[str, Function]) -> None:
        self.graph, self.io = plan["graph"], {row["name"]: row for row in plan["io"]}
        self.names = [row["name"] for row in plan["io"]]
        self.num_io_tensors = len(self.names)
        self.num_optimization_profiles = plan["profiles"][0]
        self.memory, self.function = memory, functions[self.graph]

    def get_tensor_name(self, index: int) -> str:
        return self.names[index]

    def get_tensor_mode(self, name: str) -> str:
        return "INPUT" if self.io[name]["mode"] == "input" else "OUTPUT"

    def get_tensor_dtype(self, name: str) -> str:
        return self.io[name]["dtype"]

    def create_execution_context(self) -> FakeContext:
        return FakeContext(self)


class FakeContext:
    """Checks shapes against the profiles and addresses against TensorRT's rules, then runs."""

    def __init__(self, engine: FakeEngine) -> None:
        self.engine, self.profile = engine, 0
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.refuse_capture = False
        self.runs = 0

    def set_optimization_profile_async(self, index: int, stream: int) -> bool:
        assert 0 <= index < self.engine.num_optimization_profiles
        self.profile, self.shapes = index, {}
        return True

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        row = self.engine.io[name]
        if "profiles" in row:
            low, _, high = row["profiles"][self.profile]
            if not all(lo <= dim <= hi for lo, dim, hi in zip(low, shape, high, strict=True)):
                return False
        elif tuple(shape) != tuple(row["shape"]):
            return False
        self.shapes[name] = tuple(shape)
        return True

    def infer_shapes(self) -> list[str]:
        """Dynamic inputs without a shape (static ones have theirs from the engine)."""
        return [n for n, r in self.engine.io.items() if "profiles" in r and n not in self.shapes]

    def _sizes(self) -> dict[str, int]:
        sizes = {}
        for name, shape in self.shapes.items():
            for dim, word in zip(shape, self.engine.io[name]["shape"], strict=True):
                if isinstance(word, str):
                    sizes[word] = dim
        return sizes

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        sizes = self._sizes()
        return tuple(d if isinstance(d, int) else sizes[d] for d in self.engine.io[name]["shape"])

    def set_tensor_address(self, name: str, address: int) -> bool:
        assert address and address % 256 == 0, f"{name}: bad address {address:#x}"
        self.addresses[name] = address
        return True

    def execute_async_v3(self, stream: int) -> bool:
        device_capturing = stream_capture.get(stream)
        if device_capturing is not None and device_capturing.capturing is not None:
            if self.refuse_capture:
                device_capturing.capturing.append(None)  # invalidates the capture
                return False
            device_capturing.capturing.append(self._run)
            return True
        self._run()
        return True

    def _run(self) -> None:
        memory, io = self.engine.memory, self.engine.io
        inputs = {
            name: memory.read(self.addresses[name], self.get_tensor_shape(name), row["dtype"])
            for name, row in io.items()
            if row["mode"] == "input"
        }
        outputs = self.engine.function(inputs)
        for name, row in io.items():
            if row["mode"] == "output":
                array = outputs[name].astype(row["dtype"])
                assert array.shape == self.get_tensor_shape(name), (name, array.shape)
                memory.write(self.addresses[name], array)
        self.runs += 1
