"""The TensorRT backend's bookkeeping: tensor specs, buffer sizes, profile choice, copy plans
and the checks made before anything reaches the device.

Plain Python and numpy, no tensorrt or cuda-python, so all of it is tested on the CPU.
`runtime/tensorrt_backend.py` runs these plans with the engines and `runtime/cuda_device.py`
issues the copies. A cache (B, H, L, Dh) is B*H rows of L*Dh elements; the copy plans are:

- slot write: one 2D copy per tensor puts a step's keys or values (B, H, 1, Dh) into slot P,
  which is one Dh-wide column of each row;
- reorder: one 2D copy per run of consecutive rows, into a second cache buffer;
- expand: with K beams, K 2D copies per tensor repeat each source row's encoder results.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from transduce.runtime.backend import ModelInfo

# TensorRT wants every tensor address aligned to 256 bytes (IExecutionContext::setTensorAddress)
ALIGNMENT = 256
# CUDA rejects 2D copies with a pitch at or above cudaDevAttrMaxPitch, 2**31 - 1 on current GPUs
MAX_PITCH = 2**31 - 1

BATCH, SRC_LEN, CAPACITY = "batch", "src_len", "capacity"


@dataclass(frozen=True)
class TensorSpec:
    """One engine input or output, as the engine manifest's I/O table records it."""

    name: str
    is_input: bool
    dtype: np.dtype
    shape: tuple[int | str, ...]  # ints and axis words (batch, src_len, capacity)

    def resolve(self, sizes: dict[str, int]) -> tuple[int, ...]:
        """The concrete shape for the axis sizes of one request."""
        return tuple(dim if isinstance(dim, int) else sizes[dim] for dim in self.shape)

    def nbytes(self, sizes: dict[str, int]) -> int:
        return int(np.prod(self.resolve(sizes), dtype=np.int64)) * self.dtype.itemsize


def tensor_specs(io_table: list[dict[str, Any]]) -> dict[str, TensorSpec]:
    """The engine manifest's I/O table of one engine, by name."""
    return {
        row["name"]: TensorSpec(
            row["name"], row["mode"] == "input", np.dtype(row["dtype"]), tuple(row["shape"])
        )
        for row in io_table
    }


def align_up(nbytes: int, alignment: int = ALIGNMENT) -> int:
    """`nbytes` rounded up to a multiple of `alignment`, and never 0 (no null buffers)."""
    return max(alignment, -(-nbytes // alignment) * alignment)


@dataclass(frozen=True)
class ProfileLimits:
    """The largest request one optimization profile accepts (its minimums are all 1)."""

    index: int
    max_batch: int  # rows including beams
    max_src_len: int
    max_capacity: int

    def fits(self, batch: int, src_len: int, capacity: int) -> bool:
        return (
            batch <= self.max_batch
            and src_len <= self.max_src_len
            and capacity <= self.max_capacity
        )

    def sizes(self) -> dict[str, int]:
        return {BATCH: self.max_batch, SRC_LEN: self.max_src_len, CAPACITY: self.max_capacity}


def profile_limits(manifest: dict[str, Any]) -> list[ProfileLimits]:
    """The limits of each profile, from the engine manifest's resolved shape specs."""
    return [
        ProfileLimits(index, spec["max_batch"], spec["max_src_len"], spec["max_tgt_len"])
        for index, spec in enumerate(manifest["specs"])
    ]


def select_profile(
    limits: list[ProfileLimits], *, batch: int, src_len: int, capacity: int
) -> ProfileLimits:
    """The smallest profile that fits a request (the first of equals).

    Raises:
        ValueError: When no profile fits; the message gives the request, the largest limits
            and how to rebuild.
    """
    fitting = [p for p in limits if p.fits(batch, src_len, capacity)]
    if fitting:
        return min(fitting, key=lambda p: (p.max_batch, p.max_src_len, p.max_capacity, p.index))
    largest = ", ".join(
        f"[{p.index}] batch <= {p.max_batch}, src_len <= {p.max_src_len}, "
        f"capacity <= {p.max_capacity}"
        for p in limits
    )
    raise ValueError(
        f"request exceeds every engine profile: it needs batch {batch} (rows including beams), "
        f"src_len {src_len} and capacity {capacity}; the profiles accept {largest}. Send fewer "
        "rows, beams or tokens, or rebuild with larger --max-batch / --max-src-len / "
        "--max-tgt-len"
    )


def buffer_bytes(specs: dict[str, TensorSpec], limits: list[ProfileLimits]) -> dict[str, int]:
    """Bytes to allocate per tensor: its largest size over all profiles, 256-byte aligned."""
    return {
        name: align_up(max(spec.nbytes(p.sizes()) for p in limits)) for name, spec in specs.items()
    }


@dataclass(frozen=True)
class Copy2D:
    """One strided copy: `height` rows of `width` bytes (cudaMemcpy2DAsync's arguments)."""

    dst_offset: int
    dst_pitch: int
    src_offset: int
    src_pitch: int
    width: int
    height: int

    def __post_init__(self) -> None:
        if not (
            0 < self.width <= min(self.dst_pitch, self.src_pitch)
            and max(self.dst_pitch, self.src_pitch) < MAX_PITCH
        ):
            raise ValueError(f"invalid 2D copy {self}: need 0 < width <= pitches < 2**31 - 1")


def slot_write_copy(
    *, batch: int, n_heads: int, capacity: int, head_dim: int, itemsize: int, position: int
) -> Copy2D:
    """Copy new keys/values (B, H, 1, Dh) into slot `position` of a (B, H, L, Dh) cache.

    The cache is B*H rows of L*Dh elements; slot P is the Dh elements at column P*Dh of
    every row, and the new tensor is B*H contiguous rows of Dh elements.
    """
    if not 0 <= position < capacity:
        raise ValueError(f"position ({position}) must be in [0, capacity = {capacity})")
    row = head_dim * itemsize
    return Copy2D(
        dst_offset=position * row,
        dst_pitch=capacity * row,
        src_offset=0,
        src_pitch=row,
        width=row,
        height=batch * n_heads,
    )


def row_runs(rows: np.ndarray) -> list[tuple[int, int, int]]:
    """(dst_row, src_row, count) runs of `dst[b] = src[rows[b]]`, consecutive rows merged."""
    runs: list[tuple[int, int, int]] = []
    for dst, src in enumerate(int(r) for r in rows):
        if runs and runs[-1][1] + runs[-1][2] == src and runs[-1][0] + runs[-1][2] == dst:
            runs[-1] = (runs[-1][0], runs[-1][1], runs[-1][2] + 1)
        else:
            runs.append((dst, src, 1))
    return runs


def reorder_copies(
    rows: np.ndarray, *, n_heads: int, capacity: int, head_dim: int, itemsize: int, filled: int
) -> list[Copy2D]:
    """Copies that make `dst[b] = src[rows[b]]` for two (B, H, L, Dh) caches.

    Only the first `filled` slots of each row are copied (the rest are never read unmasked).
    One copy per run of consecutive rows.
    """
    pitch = capacity * head_dim * itemsize
    width = max(1, filled) * head_dim * itemsize
    return [
        Copy2D(
            dst_offset=dst * n_heads * pitch,
            dst_pitch=pitch,
            src_offset=src * n_heads * pitch,
            src_pitch=pitch,
            width=width,
            height=count * n_heads,
        )
        for dst, src, count in row_runs(rows)
    ]


def expand_copies(*, rows: int, beams: int, row_bytes: int) -> list[Copy2D]:
    """Copies that repeat each of `rows` row blocks `beams` times (np.repeat along axis 0).

    Copy k writes beam k of every source row: rows r -> r * beams + k.
    """
    return [
        Copy2D(
            dst_offset=beam * row_bytes,
            dst_pitch=beams * row_bytes,
            src_offset=0,
            src_pitch=row_bytes,
            width=row_bytes,
            height=rows,
        )
        for beam in range(beams)
    ]


def binding_problems(addresses: dict[str, int]) -> list[str]:
    """Every address TensorRT would refuse: null, or not 256-byte aligned."""
    return [
        f"{name}: address {address:#x} is {'null' if not address else 'not 256-byte aligned'}"
        for name, address in sorted(addresses.items())
        if not address or address % ALIGNMENT
    ]


def request_problems(
    src_tokens: np.ndarray, *, beams: int, capacity: int, info: ModelInfo
) -> list[str]:
    """Every reason `start` must refuse a request before touching the device."""
    problems = []
    if src_tokens.ndim != 2 or src_tokens.dtype.kind not in "iu":
        problems.append(
            f"src_tokens must be (R, S) integer token ids; got shape {src_tokens.shape} and "
            f"dtype {src_tokens.dtype}"
        )
    elif 0 in src_tokens.shape:
        problems.append(
            f"src_tokens has shape {src_tokens.shape}; rows and length must be at least 1 "
            "(engines never see zero-length tensors)"
        )
    elif src_tokens.min() < 0 or src_tokens.max() >= info.src_vocab_size:
        problems.append(
            f"src_tokens must be ids in [0, {info.src_vocab_size}); got values from "
            f"{src_tokens.min()} to {src_tokens.max()}"
        )
    if beams < 1:
        problems.append(f"beams must be at least 1, got {beams}")
    if not 1 <= capacity <= info.max_positions:
        problems.append(
            f"capacity must be in [1, max_positions = {info.max_positions}], got {capacity}"
        )
    return problems


def cache_partner(name: str) -> str:
    """The cache input that a decoder output `new_keys.i` / `new_values.i` is written into."""
    return "cache_" + name.removeprefix("new_")


def axis_sizes(specs: dict[str, TensorSpec], shapes: dict[str, tuple[int, ...]]) -> dict[str, int]:
    """The axis sizes implied by input shapes; raises ValueError listing every inconsistency."""
    sizes: dict[str, int] = {}
    problems = []
    for name, shape in shapes.items():
        spec = specs.get(name)
        if spec is None or not spec.is_input:
            problems.append(f"{name} is not an input of this engine")
            continue
        if len(shape) != len(spec.shape):
            problems.append(f"{name} has shape {shape}, expected {spec.shape}")
            continue
        for dim, want in zip(shape, spec.shape, strict=True):
            if isinstance(want, int):
                if dim != want:
                    problems.append(f"{name} has shape {shape}, expected {spec.shape}")
            elif sizes.setdefault(want, dim) != dim:
                problems.append(f"{name} gives {want} = {dim}, another input {sizes[want]}")
    missing = [n for n, s in specs.items() if s.is_input and n not in shapes]
    if missing:
        problems.append(f"inputs missing: {missing}")
    if problems:
        raise ValueError(
            "inputs do not fit the engine:\n" + "\n".join(f"  - {p}" for p in problems)
        )
    return sizes
