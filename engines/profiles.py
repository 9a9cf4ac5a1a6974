"""Optimization profiles: from a user's shape spec to min/opt/max for every dynamic engine input.

A user says how large a request may get (`ShapeSpec`: rows including beams, source length,
cache capacity) and which sizes are typical. The export manifest's I/O table says, with the
axis words of `export/contract.py` (`batch`, `src_len`, `capacity`), which dimension of which
input is dynamic. From the two this module derives one TensorRT optimization profile per
spec for each graph. Several specs give several profiles (a small-batch one and a large-batch
one, say); the runtime picks the smallest that fits a request.

Every minimum is 1: TensorRT is not confirmed to accept zero-length tensors or profiles with
a minimum of 0 (`shared/docs/tensorrt-facts.md` section 4.4), and the graphs never need them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, NamedTuple

# the axis words of the export manifest; the runtime resolves shapes with the same words
BATCH, SRC_LEN, CAPACITY = "batch", "src_len", "capacity"
AXES = (BATCH, SRC_LEN, CAPACITY)
GRAPHS = ("encoder", "decoder")
DEFAULT_MAX_BATCH = 8


class ShapeRange(NamedTuple):
    """The min, opt and max shape of one engine input in one profile."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def to_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_dict(cls, values: dict[str, list[int]]) -> ShapeRange:
        return cls(tuple(values["min"]), tuple(values["opt"]), tuple(values["max"]))


Profile = dict[str, ShapeRange]  # input name -> its range, for one graph


@dataclass(frozen=True)
class ShapeSpec:
    """The largest and the typical request that one optimization profile serves.

    It is checked as a whole by `check_specs` (every problem at once), not on construction,
    so that a command line with several mistakes is answered with all of them.
    """

    max_batch: int = DEFAULT_MAX_BATCH  # B, rows including beams: R sources x K beams
    max_src_len: int | None = None  # S; None: the model's max_positions
    max_tgt_len: int | None = None  # L, cache capacity (target positions); None: max_positions
    opt_batch: int | None = None  # the typical B TensorRT tunes for; None: max_batch
    opt_src_len: int | None = None  # None: max_src_len
    opt_tgt_len: int | None = None  # None: max_tgt_len

    def resolved(self, max_positions: int) -> ShapeSpec:
        """This spec with every None replaced by its documented default."""
        max_src_len = self.max_src_len if self.max_src_len is not None else max_positions
        max_tgt_len = self.max_tgt_len if self.max_tgt_len is not None else max_positions
        return ShapeSpec(
            max_batch=self.max_batch,
            max_src_len=max_src_len,
            max_tgt_len=max_tgt_len,
            opt_batch=self.opt_batch if self.opt_batch is not None else self.max_batch,
            opt_src_len=self.opt_src_len if self.opt_src_len is not None else max_src_len,
            opt_tgt_len=self.opt_tgt_len if self.opt_tgt_len is not None else max_tgt_len,
        )

    def problems(self, max_positions: int) -> list[str]:
        """Every reason this spec cannot make a profile for a model with `max_positions`."""
        spec = self.resolved(max_positions)
        problems = []
        for field in dataclasses.fields(spec):
            value = getattr(spec, field.name)
            if isinstance(value, bool) or not isinstance(value, int):
                problems.append(f"{field.name} must be an integer, got {value!r}")
            elif value < 1:
                problems.append(
                    f"{field.name} must be at least 1, got {value} (profiles never start at 0: "
                    "TensorRT is not confirmed to run zero-length tensors)"
                )
        if problems:
            return problems
        for axis, limit in (("src_len", spec.max_src_len), ("tgt_len", spec.max_tgt_len)):
            if limit > max_positions:
                problems.append(
                    f"max_{axis} ({limit}) exceeds the model's max_positions ({max_positions}); "
                    f"use --max-{axis.replace('_', '-')} {max_positions} or less"
                )
        for axis in ("batch", "src_len", "tgt_len"):
            opt, high = getattr(spec, f"opt_{axis}"), getattr(spec, f"max_{axis}")
            if opt > high:
                problems.append(
                    f"opt_{axis} ({opt}) is outside [1, max_{axis} = {high}]; lower "
                    f"--opt-{axis.replace('_', '-')} or raise --max-{axis.replace('_', '-')}"
                )
        return problems

    def axis_ranges(self, max_positions: int) -> dict[str, tuple[int, int, int]]:
        """(min, opt, max) of each axis word; min is always 1."""
        spec = self.resolved(max_positions)
        return {
            BATCH: (1, spec.opt_batch, spec.max_batch),
            SRC_LEN: (1, spec.opt_src_len, spec.max_src_len),
            CAPACITY: (1, spec.opt_tgt_len, spec.max_tgt_len),
        }

    def to_dict(self) -> dict[str, int | None]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ShapeSpec:
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"shape spec has unknown keys {unknown}; known keys: {sorted(known)}")
        return cls(**values)


def check_specs(specs: list[ShapeSpec], max_positions: int) -> None:
    """Raise one ValueError listing every problem of every spec.

    Raises:
        ValueError: When the list is empty or any spec has a problem; each line names the
            profile (by its index) when there are several.
    """
    if not specs:
        raise ValueError("shape specs: at least one profile is needed; got an empty list")
    problems = []
    for index, spec in enumerate(specs):
        prefix = f"profile {index}: " if len(specs) > 1 else ""
        problems += [prefix + problem for problem in spec.problems(max_positions)]
    if problems:
        raise ValueError("invalid shape spec:\n" + "\n".join(f"  - {p}" for p in problems))


def _dim_range(
    dim: int | str, ranges: dict[str, tuple[int, int, int]]
) -> tuple[int, int, int] | None:
    if isinstance(dim, int) and not isinstance(dim, bool) and dim >= 1:
        return dim, dim, dim
    return ranges.get(dim) if isinstance(dim, str) else None


def graph_profiles(
    graph: str, io: dict[str, Any], specs: list[ShapeSpec], max_positions: int
) -> list[Profile]:
    """One profile per spec for one graph: a range for each input with an axis word.

    Args:
        graph: "encoder" or "decoder", for messages.
        io: The graph's entry in the export manifest (`manifest["graphs"][graph]`), whose
            "inputs" list has a name, dtype and shape (ints and axis words) per input.
        specs: The shape specs, already checked with `check_specs`.
        max_positions: The model's limit, used to resolve unset spec fields.

    Returns:
        A list with one dict per spec: input name -> ShapeRange. Inputs whose shape is all
        integers (the decoder's `position`) are static and left out.

    Raises:
        ValueError: Listing every input whose shape has an unknown axis word or a dimension
            below 1.
    """
    problems = []
    for tensor in io["inputs"]:
        for dim in tensor["shape"]:
            if _dim_range(dim, specs[0].axis_ranges(max_positions)) is None:
                problems.append(
                    f"{graph} input {tensor['name']} has dimension {dim!r}; expected an integer "
                    f">= 1 or one of the axis words {list(AXES)}"
                )
    if problems:
        raise ValueError(
            "export manifest I/O table cannot make profiles (re-export with this transduce):\n"
            + "\n".join(f"  - {p}" for p in problems)
        )

    profiles = []
    for spec in specs:
        ranges = spec.axis_ranges(max_positions)
        profile: Profile = {}
        for tensor in io["inputs"]:
            if all(isinstance(dim, int) for dim in tensor["shape"]):
                continue
            dims = [_dim_range(dim, ranges) for dim in tensor["shape"]]
            profile[tensor["name"]] = ShapeRange(
                *(tuple(d[i] for d in dims) for i in range(3))  # type: ignore[index]
            )
        profiles.append(profile)
    return profiles


def profiles_from_manifest(manifest: dict[str, Any], specs: list[ShapeSpec]) -> dict[str, Any]:
    """Check the specs against the model and derive the profiles of both graphs.

    Args:
        manifest: The export manifest (`manifest.json` of an export directory).
        specs: One spec per wanted profile.

    Returns:
        {"encoder": [Profile, ...], "decoder": [Profile, ...]}, one profile per spec, in order.

    Raises:
        ValueError: With every problem of the specs, or of the manifest's I/O table.
    """
    max_positions = manifest["model"]["max_positions"]
    check_specs(specs, max_positions)
    return {
        graph: graph_profiles(graph, manifest["graphs"][graph], specs, max_positions)
        for graph in GRAPHS
    }


def profiles_to_json(profiles: list[Profile]) -> list[dict[str, dict[str, list[int]]]]:
    return [{name: rng.to_dict() for name, rng in profile.items()} for profile in profiles]


def profiles_from_json(values: list[dict[str, dict[str, list[int]]]]) -> list[Profile]:
    return [{name: ShapeRange.from_dict(rng) for name, rng in p.items()} for p in values]
