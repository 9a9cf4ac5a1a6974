"""The thin layer of CUDA runtime calls under the TensorRT backend, through cuda-python.

`CudaDevice` holds one device and one non-blocking stream: device and pinned host memory,
asynchronous copies (the 2D ones planned in `runtime/tensorrt_plans.py`) and CUDA graph
capture and replay, nothing else. `cuda.bindings.runtime` is imported when a device is made,
so importing this module needs numpy only.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from transduce.runtime.tensorrt_plans import Copy2D


class CudaError(RuntimeError):
    """A CUDA runtime call failed."""


class CudaDevice:
    """One CUDA device and one non-blocking stream, through `cuda.bindings.runtime`.

    Host memory passes as numpy arrays: pinned ones from `pinned` for the per-step copies.
    Every copy is asynchronous on the stream; `synchronize` waits for them.
    """

    def __init__(self, index: int = 0) -> None:
        from cuda.bindings import runtime as cudart

        self._cudart = cudart
        self.index = index
        self._call(cudart.cudaSetDevice(index), "cudaSetDevice")
        self._stream = self._call(
            cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking),
            "cudaStreamCreateWithFlags",
        )
        self.stream = int(self._stream)  # the handle TensorRT's execute_async_v3 takes

    def _call(self, result: tuple, what: str) -> Any:
        cudart = self._cudart
        error = result[0]
        if error != cudart.cudaError_t.cudaSuccess:
            _, name = cudart.cudaGetErrorName(error)
            _, text = cudart.cudaGetErrorString(error)
            raise CudaError(f"{what} failed: {name.decode()} ({text.decode()})")
        return result[1] if len(result) > 1 else None

    def malloc(self, nbytes: int) -> int:
        return int(self._call(self._cudart.cudaMalloc(nbytes), f"cudaMalloc({nbytes})"))

    def free(self, address: int) -> None:
        self._call(self._cudart.cudaFree(address), "cudaFree")

    def pinned(self, nbytes: int) -> np.ndarray:
        """A (nbytes,) uint8 array in page-locked host memory."""
        address = self._call(self._cudart.cudaMallocHost(nbytes), f"cudaMallocHost({nbytes})")
        return np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(int(address)))

    def free_pinned(self, array: np.ndarray) -> None:
        self._call(self._cudart.cudaFreeHost(array.ctypes.data), "cudaFreeHost")

    def memset(self, address: int, nbytes: int) -> None:
        result = self._cudart.cudaMemsetAsync(address, 0, nbytes, self._stream)
        self._call(result, "cudaMemsetAsync")

    def to_device(self, address: int, host: np.ndarray) -> None:
        kind = self._cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        result = self._cudart.cudaMemcpyAsync(
            address, host.ctypes.data, host.nbytes, kind, self._stream
        )
        self._call(result, "cudaMemcpyAsync (host to device)")

    def to_host(self, host: np.ndarray, address: int) -> None:
        kind = self._cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        result = self._cudart.cudaMemcpyAsync(
            host.ctypes.data, address, host.nbytes, kind, self._stream
        )
        self._call(result, "cudaMemcpyAsync (device to host)")

    def copy_2d(self, dst: int, src: int, copy: Copy2D) -> None:
        kind = self._cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        result = self._cudart.cudaMemcpy2DAsync(
            dst + copy.dst_offset,
            copy.dst_pitch,
            src + copy.src_offset,
            copy.src_pitch,
            copy.width,
            copy.height,
            kind,
            self._stream,
        )
        self._call(result, "cudaMemcpy2DAsync")

    def synchronize(self) -> None:
        self._call(self._cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")

    def begin_capture(self) -> bool:
        """Start capturing the stream into a CUDA graph; False when CUDA refuses."""
        mode = self._cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        (error,) = self._cudart.cudaStreamBeginCapture(self._stream, mode)
        return error == self._cudart.cudaError_t.cudaSuccess

    def end_capture(self) -> Any | None:
        """Stop capturing; the instantiated graph, or None when the capture was invalidated."""
        cudart = self._cudart
        error, graph = cudart.cudaStreamEndCapture(self._stream)
        if error != cudart.cudaError_t.cudaSuccess or graph is None:
            return None
        error, executable = cudart.cudaGraphInstantiate(graph, 0)
        cudart.cudaGraphDestroy(graph)
        return executable if error == cudart.cudaError_t.cudaSuccess else None

    def launch(self, executable: Any) -> None:
        result = self._cudart.cudaGraphLaunch(executable, self._stream)
        self._call(result, "cudaGraphLaunch")

    def destroy_graph(self, executable: Any) -> None:
        self._cudart.cudaGraphExecDestroy(executable)

    def clear_error(self) -> None:
        """Reset CUDA's last-error state after a refused capture."""
        self._cudart.cudaGetLastError()

    def close(self) -> None:
        self._call(self._cudart.cudaStreamDestroy(self._stream), "cudaStreamDestroy")
