"""FP16 TensorRT engines from the FP16 ONNX graphs, with one code path for TensorRT 10.15+ and 11.x.

The ONNX graphs carry their precision (FP16 with FP32 islands), so the network is strongly
typed and no precision builder flag is set: TensorRT 11 has none, and TensorRT 10 forbids
mixing them with strong typing (`shared/docs/tensorrt-facts.md` sections 1 and 2). TF32 is
set explicitly either way, because TensorRT turns it on by default and Polygraphy turns it
off by default.

TensorRT is imported inside the functions, so this module imports on machines without it.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from transduce.engines.manifest import (
    MANIFEST_FILE,
    PLAN_FILES,
    TIMING_CACHE_FILE,
    BuildSettings,
    Platform,
    current_platform,
    engine_entry,
    new_engine_manifest,
    read_engine_manifest,
    stale_reasons,
    tensorrt_logger,
    write_bytes_atomically,
    write_json_atomically,
)
from transduce.engines.profiles import (
    GRAPHS,
    Profile,
    ShapeSpec,
    profiles_from_manifest,
    profiles_to_json,
)
from transduce.files import sha256_file

logger = logging.getLogger(__name__)


class EngineBuildError(RuntimeError):
    """TensorRT could not parse a graph or build an engine."""


def _progress_monitor(enabled: bool) -> Any:
    """A trt.IProgressMonitor that shows each build phase as a tqdm bar (None when disabled)."""
    if not enabled:
        return None
    import tensorrt as trt
    from tqdm import tqdm

    class Bars(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.bars: dict[str, Any] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            # nested phases get the lines below their parents; only top-level bars stay
            self.bars[phase_name] = tqdm(
                total=num_steps,
                desc=phase_name,
                leave=parent_phase is None,
                position=len(self.bars),
            )

        def step_complete(self, phase_name: str, step: int) -> bool:
            bar = self.bars.get(phase_name)
            if bar is not None:
                bar.update(step + 1 - bar.n)
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            bar = self.bars.pop(phase_name, None)
            if bar is not None:
                bar.close()

    return Bars()


def parser_errors(parser: Any) -> list[str]:
    """Every error the ONNX parser recorded, one line each (not only the first)."""
    lines = []
    for index in range(parser.num_errors):
        error = parser.get_error(index)
        node = f"node {error.node()}" if error.node() >= 0 else "graph"
        if error.node_name():
            node += f" {error.node_name()!r}"
        if error.node_operator():
            node += f" ({error.node_operator()})"
        lines.append(f"{node}: {error.desc()} [{error.code()}]")
    return lines


def network_problems(
    inputs: list[tuple[str, tuple[int, ...]]], profiles: list[Profile]
) -> list[str]:
    """Every mismatch between a network's inputs and the profiles meant for it.

    Args:
        inputs: (name, shape) of each network input; -1 marks a dynamic dimension.
        profiles: The profiles to add to the builder config.
    """
    problems = []
    names = {name for name, _ in inputs}
    for index, profile in enumerate(profiles):
        for name in sorted(set(profile) - names):
            problems.append(f"profile {index} sets {name}, which the network has no input of")
        for name, shape in inputs:
            if -1 not in shape:
                continue
            if name not in profile:
                problems.append(f"profile {index} has no range for dynamic input {name} {shape}")
                continue
            for label, dims in zip(("min", "opt", "max"), profile[name], strict=True):
                fits = len(dims) == len(shape) and all(
                    want in (-1, got) for want, got in zip(shape, dims, strict=True)
                )
                if not fits:
                    problems.append(
                        f"profile {index} {label} shape of {name} is {dims}; the network "
                        f"input is {shape}"
                    )
    return problems


def _io_table(engine: Any, axis_names: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Name, mode, dtype, shape (axis words where dynamic) and profile ranges of each tensor."""
    import numpy as np
    import tensorrt as trt

    table = []
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        shape = list(engine.get_tensor_shape(name))
        words = axis_names.get(name, shape)
        row: dict[str, Any] = {
            "name": name,
            "mode": "input" if is_input else "output",
            "dtype": np.dtype(trt.nptype(engine.get_tensor_dtype(name))).name,
            "shape": [word if dim == -1 else dim for dim, word in zip(shape, words, strict=False)],
        }
        if is_input and -1 in shape:
            row["profiles"] = [
                [list(dims) for dims in engine.get_tensor_profile_shape(name, profile)]
                for profile in range(engine.num_optimization_profiles)
            ]
        table.append(row)
    return table


def log_io_table(plan_name: str, table: list[dict[str, Any]]) -> None:
    logger.info("I/O of %s:", plan_name)
    for row in table:
        ranges = ""
        for index, (low, opt, high) in enumerate(row.get("profiles", [])):
            ranges += f"  [{index}] min={low} opt={opt} max={high}"
        logger.info(
            "  %-6s %-16s %-8s %s%s", row["mode"], row["name"], row["dtype"], row["shape"], ranges
        )


def _configure(builder: Any, settings: BuildSettings, profiles: list[Profile]) -> Any:
    """The builder config: precision-neutral flags, memory, compatibility and the profiles."""
    import tensorrt as trt

    config = builder.create_builder_config()
    if settings.tf32:
        config.set_flag(trt.BuilderFlag.TF32)
    else:
        config.clear_flag(trt.BuilderFlag.TF32)
    config.builder_optimization_level = settings.optimization_level
    if settings.workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_bytes)
    if settings.hardware_compatible:
        level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
        config.hardware_compatibility_level = level
    if settings.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED

    for ranges in profiles:
        profile = builder.create_optimization_profile()
        for name, (low, opt, high) in ranges.items():
            profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(profile)
    return config


def _attach_timing_cache(config: Any, path: Path | None) -> None:
    """Load the timing cache at `path` into the config (a new, empty one when unusable)."""
    data = path.read_bytes() if path is not None and path.is_file() else b""
    cache = config.create_timing_cache(data)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        # a cache from another GPU or TensorRT version is refused; start an empty one
        logger.warning("Timing cache %s does not fit this platform; starting a new one", path)
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    elif data:
        logger.info("Loaded timing cache %s (%.1f KiB)", path.name, len(data) / 2**10)


def engine_from_onnx(
    onnx_path: Path,
    plan_path: Path,
    *,
    profiles: list[Profile],
    settings: BuildSettings,
    timing_cache: Path | None = None,
    axis_names: dict[str, list[Any]] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Build one FP16 plan from a strongly typed ONNX graph and write it atomically.

    Args:
        onnx_path: A single-file ONNX graph (no external data) that carries its precision.
        plan_path: Where to write the serialized engine.
        profiles: One range per dynamic input, per optimization profile.
        settings: TF32, optimization level, workspace and compatibility.
        timing_cache: Loaded when it exists and saved after the build.
        axis_names: Per tensor, the export manifest's shape (axis words); used to label the
            dynamic dimensions of the I/O table.
        progress: Show a progress bar per build phase.

    Returns:
        {"io": I/O table, "seconds": build time, "bytes": plan size}.

    Raises:
        EngineBuildError: With every parser error, every profile problem, or the build failure.
    """
    import tensorrt as trt

    start = time.perf_counter()
    trt_logger = tensorrt_logger()
    builder = trt.Builder(trt_logger)
    # NOTE: STRONGLY_TYPED is required on TensorRT 10 and ignored (always on) on 11
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)

    # 1) parse, reporting every error
    logger.info("Parsing %s", onnx_path.name)
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = parser_errors(parser)
        raise EngineBuildError(
            f"TensorRT's ONNX parser rejected {onnx_path} with {len(errors)} error(s):\n"
            + "\n".join(f"  - {line}" for line in errors)
        )

    # 2) the profiles must cover exactly the network's dynamic inputs
    inputs = []
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        inputs.append((tensor.name, tuple(tensor.shape)))
    problems = network_problems(inputs, profiles)
    if problems:
        raise EngineBuildError(
            f"profiles do not fit the inputs of {onnx_path.name}:\n"
            + "\n".join(f"  - {p}" for p in problems)
        )

    # 3) configure and build
    config = _configure(builder, settings, profiles)
    _attach_timing_cache(config, timing_cache)
    monitor = _progress_monitor(progress)
    if monitor is not None:
        config.progress_monitor = monitor
    logger.info(
        "Building %s (fp16 strongly typed, tf32 %s, optimization level %d, %d profile(s))",
        plan_path.name,
        "on" if settings.tf32 else "off",
        settings.optimization_level,
        len(profiles),
    )
    for index, ranges in enumerate(profiles):
        for name, (low, opt, high) in ranges.items():
            logger.info("  [%d] %-16s min=%s opt=%s max=%s", index, name, low, opt, high)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineBuildError(
            f"TensorRT failed to build {plan_path.name} from {onnx_path}; its log above says why "
            "(run with -v for every message)"
        )

    # 4) write the plan and the timing cache atomically, then read the I/O table back
    write_bytes_atomically(plan_path, memoryview(plan))
    if timing_cache is not None:
        write_bytes_atomically(timing_cache, memoryview(config.get_timing_cache().serialize()))
    trt_runtime = trt.Runtime(trt_logger)
    if settings.version_compatible:
        trt_runtime.engine_host_code_allowed = True  # the plan embeds its lean runtime
    engine = trt_runtime.deserialize_cuda_engine(plan_path.read_bytes())
    if engine is None:
        raise EngineBuildError(f"TensorRT could not load the plan it just built: {plan_path}")
    table = _io_table(engine, axis_names or {})
    seconds = time.perf_counter() - start
    logger.info(
        "Built %s in %.1f s (%.1f MiB)", plan_path.name, seconds, plan_path.stat().st_size / 2**20
    )
    log_io_table(plan_path.name, table)
    return {"io": table, "seconds": seconds, "bytes": plan_path.stat().st_size}


def _check_export(export_dir: Path, manifest: dict[str, Any]) -> None:
    """The export directory must hold the graphs its manifest names, unchanged."""
    problems = []
    for graph in GRAPHS:
        entry = manifest["graphs"][graph]
        path = export_dir / entry["file"]
        if not path.is_file():
            problems.append(f"{graph}: {path} is missing")
        elif sha256_file(path) != entry["sha256"]:
            problems.append(f"{graph}: {path.name} does not match the sha256 in the manifest")
    if manifest.get("precision", {}).get("dtype") != "float16":
        problems.append(
            f"precision is {manifest.get('precision', {}).get('dtype')!r}; TensorRT engines are "
            "built from a float16 export (transduce export ... --precision fp16)"
        )
    if problems:
        raise ValueError(
            f"export directory {export_dir} cannot be built from:\n"
            + "\n".join(f"  - {p}" for p in problems)
        )


def build_engines(
    export_dir: str | Path,
    engine_dir: str | Path,
    specs: list[ShapeSpec],
    settings: BuildSettings,
    *,
    timing_cache: Path | None = None,
    force: bool = False,
    device: int = 0,
    progress: bool = True,
    platform: Platform | None = None,
) -> dict[str, Any]:
    """Build the encoder and decoder plans that are stale, and write the engine manifest.

    Args:
        export_dir: An export directory (FP16 `encoder.onnx`, `decoder.onnx`, `manifest.json`).
        engine_dir: Where the plans, the timing cache and the manifest go.
        specs: One shape spec per optimization profile.
        settings: How to build.
        timing_cache: Timing cache file; default `engine_dir/timing.cache`.
        force: Rebuild both plans even when they are up to date.
        device: The CUDA device to build for.
        progress: Show progress bars.
        platform: The running platform; detected when None.

    Returns:
        The engine manifest as written, with "built" (graphs rebuilt this time) added.

    Raises:
        ValueError: For an invalid spec, invalid settings or an inconsistent export directory.
        EngineBuildError: When TensorRT fails.
    """
    from transduce import __version__

    export_dir, engine_dir = Path(export_dir), Path(engine_dir)
    export_manifest = _read_export_manifest(export_dir)
    problems = settings.problems()
    if problems:
        raise ValueError("invalid build settings:\n" + "\n".join(f"  - {p}" for p in problems))
    profiles = profiles_from_manifest(export_manifest, specs)
    _check_export(export_dir, export_manifest)
    platform = platform or current_platform(device)
    timing_cache = timing_cache or engine_dir / TIMING_CACHE_FILE

    # 1) what is stale
    wanted = {graph: profiles_to_json(profiles[graph]) for graph in GRAPHS}
    old = read_engine_manifest(engine_dir) if (engine_dir / MANIFEST_FILE).is_file() else None
    reasons = stale_reasons(
        old,
        engine_dir=engine_dir,
        onnx_dir=export_dir,
        platform=platform,
        profiles=wanted,
        settings=settings,
    )
    if force:
        reasons = {graph: ["--force"] for graph in GRAPHS}
    manifest = new_engine_manifest(
        export_dir=export_dir,
        export_manifest=export_manifest,
        platform=platform,
        specs=specs,
        settings=settings,
        transduce_version=__version__,
    )

    # 2) build what is stale, keep what is not
    engine_dir.mkdir(parents=True, exist_ok=True)
    built = []
    for graph in GRAPHS:
        if not reasons[graph]:
            logger.info("%s is up to date; not rebuilt", PLAN_FILES[graph])
            manifest["engines"][graph] = old["engines"][graph]  # type: ignore[index]
            continue
        logger.info("Rebuilding %s: %s", PLAN_FILES[graph], "; ".join(reasons[graph]))
        graph_io = export_manifest["graphs"][graph]
        axis_names = {t["name"]: t["shape"] for t in graph_io["inputs"] + graph_io["outputs"]}
        onnx_path, plan_path = export_dir / graph_io["file"], engine_dir / PLAN_FILES[graph]
        result = engine_from_onnx(
            onnx_path,
            plan_path,
            profiles=profiles[graph],
            settings=settings,
            timing_cache=timing_cache,
            axis_names=axis_names,
            progress=progress,
        )
        manifest["engines"][graph] = engine_entry(
            plan_path=plan_path,
            onnx_path=onnx_path,
            profiles=wanted[graph],
            io=result["io"],
            build_seconds=result["seconds"],
        )
        built.append(graph)
    write_json_atomically(engine_dir / MANIFEST_FILE, manifest)
    return {**manifest, "built": built}


def _read_export_manifest(export_dir: Path) -> dict[str, Any]:
    path = export_dir / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist; export the model first (transduce export CHECKPOINT "
            f"--output {export_dir})"
        )
    return json.loads(path.read_text())
