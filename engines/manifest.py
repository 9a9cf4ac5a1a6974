"""The engine manifest: what an engine directory was built from, how, and for which platform.

An engine directory holds `encoder.plan`, `decoder.plan`, `timing.cache` and `manifest.json`.
A TensorRT plan is tied to the TensorRT version and the GPU it was built on (unless built
version- or hardware-compatible) and to the ONNX graph it came from, and a plan holds no
user metadata. So the manifest records all of it, and `check_engine_manifest` compares it
with the running platform before any plan is deserialized: every mismatch is listed, with
the command that rebuilds.

The module is plain Python (no torch; TensorRT and cuda-python are imported only inside
`current_platform` and `tensorrt_logger`), so the runtime runs the same check before loading.
The manifest also carries a copy of the export manifest's `model`, `precision` and `top_k`,
so `ModelInfo.from_manifest` reads an engine manifest as it reads an export manifest.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transduce.engines.profiles import GRAPHS, ShapeSpec
from transduce.files import sha256_file

FORMAT = "transduce-engines/1"
MANIFEST_FILE = "manifest.json"
PLAN_FILES = {"encoder": "encoder.plan", "decoder": "decoder.plan"}
TIMING_CACHE_FILE = "timing.cache"
# TensorRT's builder_optimization_level range and default (IBuilderConfig docstring)
OPTIMIZATION_LEVELS = range(0, 6)
DEFAULT_OPTIMIZATION_LEVEL = 3
# the oldest architecture a hardware-compatible (AMPERE_PLUS) plan runs on
AMPERE = (8, 0)


class EngineManifestError(RuntimeError):
    """An engine directory does not match the platform, the ONNX graphs or itself."""


@dataclass(frozen=True)
class BuildSettings:
    """How engines are built, apart from their shapes. Every field lands in the manifest."""

    tf32: bool = False  # TF32 for the FP32 islands (normalization, softmax); off: exact FP32
    optimization_level: int = DEFAULT_OPTIMIZATION_LEVEL  # builder_optimization_level, 0..5
    workspace_bytes: int | None = None  # workspace pool limit; None: TensorRT's (all memory)
    hardware_compatible: bool = False  # AMPERE_PLUS: one plan for every GPU from Ampere on
    version_compatible: bool = False  # the plan also loads on newer TensorRT of the same major

    def problems(self) -> list[str]:
        problems = []
        if self.optimization_level not in OPTIMIZATION_LEVELS:
            problems.append(
                f"optimization_level must be in 0..5 (TensorRT's builder optimization level), "
                f"got {self.optimization_level}"
            )
        if self.workspace_bytes is not None and self.workspace_bytes < 1 << 20:
            problems.append(
                f"workspace_bytes must be at least 1 MiB or None, got {self.workspace_bytes}; "
                "give --workspace with a unit, such as 4GiB"
            )
        return problems

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> BuildSettings:
        known = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})


@dataclass(frozen=True)
class Platform:
    """The TensorRT version and the GPU that build or run engines."""

    tensorrt_version: str  # trt.__version__, such as "10.16.1.11"
    gpu_name: str  # cudaDeviceProp.name, such as "NVIDIA H100 80GB HBM3"
    compute_capability: str  # "major.minor", such as "9.0"

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


def current_platform(device: int = 0) -> Platform:
    """The platform of this process: TensorRT's version and the properties of GPU `device`.

    Raises:
        ImportError: When tensorrt or cuda-python is not installed.
        RuntimeError: When CUDA reports no usable device.
    """
    import tensorrt as trt
    from cuda.bindings import runtime as cudart

    error, props = cudart.cudaGetDeviceProperties(device)
    if error != cudart.cudaError_t.cudaSuccess:
        _, name = cudart.cudaGetErrorName(error)
        raise RuntimeError(
            f"CUDA device {device} is not usable ({name.decode()}); check the driver with "
            "nvidia-smi"
        )
    name = props.name.split(b"\0", 1)[0].decode()
    return Platform(trt.__version__, name, f"{props.major}.{props.minor}")


def tensorrt_logger(name: str = "transduce.tensorrt") -> Any:
    """A trt.ILogger that forwards TensorRT's messages to the Python logger `name`.

    TensorRT's INFO lines are many and technical, so they go to DEBUG with its VERBOSE ones.
    """
    import tensorrt as trt

    target = logging.getLogger(name)
    severity = trt.ILogger.Severity
    levels = {
        severity.INTERNAL_ERROR: logging.CRITICAL,
        severity.ERROR: logging.ERROR,
        severity.WARNING: logging.WARNING,
        severity.INFO: logging.DEBUG,
        severity.VERBOSE: logging.DEBUG,
    }

    class Forward(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, level: Any, message: str) -> None:
            target.log(levels.get(level, logging.DEBUG), "TensorRT: %s", message)

    return Forward()


def write_json_atomically(path: Path, value: Any) -> None:
    """Write JSON to a temporary file beside `path`, then rename it over `path`."""
    write_bytes_atomically(path, (json.dumps(value, indent=2) + "\n").encode())


def write_bytes_atomically(path: Path, data: bytes | memoryview) -> None:
    """Write to a temporary name in the same folder, then rename: readers never see a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_engine_manifest(engine_dir: str | Path) -> dict[str, Any]:
    path = Path(engine_dir) / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist; build the engines first (transduce build EXPORT_DIR "
            f"--output {engine_dir})"
        )
    return json.loads(path.read_text())


def new_engine_manifest(
    *,
    export_dir: Path,
    export_manifest: dict[str, Any],
    platform: Platform,
    specs: list[ShapeSpec],
    settings: BuildSettings,
    transduce_version: str,
) -> dict[str, Any]:
    """The manifest of an engine directory before any engine is recorded in it."""
    return {
        "format": FORMAT,
        "transduce_version": transduce_version,
        "export": {
            "dir": str(export_dir.resolve()),
            "manifest_sha256": sha256_file(export_dir / MANIFEST_FILE),
            "format": export_manifest.get("format"),
        },
        # copies, so that ModelInfo.from_manifest reads this manifest too
        "model": export_manifest["model"],
        "precision": export_manifest["precision"],
        "top_k": export_manifest["top_k"],
        "platform": platform.to_dict(),
        "settings": settings.to_dict(),
        "specs": [
            spec.resolved(export_manifest["model"]["max_positions"]).to_dict() for spec in specs
        ],
        "timing_cache": TIMING_CACHE_FILE,
        "engines": {},
    }


def engine_entry(
    *,
    plan_path: Path,
    onnx_path: Path,
    profiles: list[dict[str, Any]],
    io: list[dict[str, Any]],
    build_seconds: float,
) -> dict[str, Any]:
    """The manifest's record of one built plan; `profiles` and `io` are JSON-ready."""
    return {
        "file": plan_path.name,
        "sha256": sha256_file(plan_path),
        "bytes": plan_path.stat().st_size,
        "onnx": {"file": onnx_path.name, "sha256": sha256_file(onnx_path)},
        "profiles": profiles,
        "io": io,
        "build_seconds": round(build_seconds, 3),
    }


def rebuild_command(manifest: dict[str, Any], engine_dir: str | Path | None = None) -> str:
    """The `transduce build` command line that makes this engine directory again."""
    settings = BuildSettings.from_dict(manifest.get("settings", {}))
    specs = [ShapeSpec.from_dict(spec) for spec in manifest.get("specs", [])]
    words = ["transduce", "build", manifest["export"]["dir"]]
    words += ["--output", str(engine_dir) if engine_dir is not None else "ENGINE_DIR"]
    for field in dataclasses.fields(ShapeSpec):
        values = [getattr(spec, field.name) for spec in specs]
        if values and all(value is not None for value in values):
            words += [f"--{field.name.replace('_', '-')}", *(str(v) for v in values)]
    words.append("--tf32" if settings.tf32 else "--no-tf32")
    words += ["--opt-level", str(settings.optimization_level)]
    if settings.workspace_bytes is not None:
        words += ["--workspace", f"{settings.workspace_bytes}B"]
    if settings.hardware_compatible:
        words.append("--hardware-compatible")
    if settings.version_compatible:
        words.append("--version-compatible")
    return shlex.join(words)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".") if part.isdigit())


def platform_problems(manifest: dict[str, Any], platform: Platform) -> list[str]:
    """How the platform a manifest was built for differs from `platform` (empty: none)."""
    built = Platform(**manifest["platform"])
    settings = BuildSettings.from_dict(manifest.get("settings", {}))
    problems = []

    # a plan loads on the exact TensorRT it was built with, or with version compatibility on
    # a newer release of the same major version
    have, want = _version(platform.tensorrt_version), _version(built.tensorrt_version)
    if settings.version_compatible:
        if have[:1] != want[:1] or have < want:
            problems.append(
                f"TensorRT {platform.tensorrt_version} cannot load these version-compatible "
                f"plans (built with {built.tensorrt_version}; they need the same major version, "
                "same or newer)"
            )
    elif platform.tensorrt_version != built.tensorrt_version:
        problems.append(
            f"TensorRT version differs: engines built with {built.tensorrt_version}, running "
            f"{platform.tensorrt_version} (plans load only on the version that built them "
            "unless built with --version-compatible)"
        )

    # a plan targets one GPU model unless built hardware-compatible (Ampere and newer)
    if settings.hardware_compatible:
        if _version(platform.compute_capability) < AMPERE:
            problems.append(
                f"GPU {platform.gpu_name} (compute capability {platform.compute_capability}) "
                "is older than Ampere (8.0), which hardware-compatible plans need"
            )
    else:
        if platform.compute_capability != built.compute_capability:
            problems.append(
                f"GPU compute capability differs: engines built for "
                f"{built.compute_capability} ({built.gpu_name}), running "
                f"{platform.compute_capability} ({platform.gpu_name})"
            )
        elif platform.gpu_name != built.gpu_name:
            problems.append(
                f"GPU differs: engines built on {built.gpu_name}, running on "
                f"{platform.gpu_name} (same compute capability {built.compute_capability}; "
                "TensorRT tunes plans for one GPU model: rebuild, or build with "
                "--hardware-compatible)"
            )
    return problems


def onnx_problems(manifest: dict[str, Any], onnx_dir: Path) -> dict[str, list[str]]:
    """Per graph, how the ONNX export in `onnx_dir` differs from what the engines came from."""
    problems: dict[str, list[str]] = {graph: [] for graph in GRAPHS}
    for graph, entry in manifest.get("engines", {}).items():
        onnx_path = onnx_dir / entry["onnx"]["file"]
        if not onnx_path.is_file():
            problems[graph].append(f"{graph}: ONNX graph {onnx_path} is missing")
        elif sha256_file(onnx_path) != entry["onnx"]["sha256"]:
            problems[graph].append(
                f"{graph}: {onnx_path.name} changed since {entry['file']} was built from it "
                "(stale engine)"
            )
    return problems


def manifest_problems(
    manifest: dict[str, Any],
    *,
    platform: Platform,
    onnx_dir: str | Path | None = None,
    engine_dir: str | Path | None = None,
) -> list[str]:
    """Every reason the engines of `manifest` must not be loaded here (empty: none).

    Args:
        manifest: An engine manifest.
        platform: The running TensorRT version and GPU.
        onnx_dir: The export directory the engines claim to come from; when given, the
            ONNX files and the export manifest are hashed and compared.
        engine_dir: The engine directory; when given, the plan files must exist with the
            recorded sizes.
    """
    if manifest.get("format") != FORMAT:
        return [
            f"manifest format is {manifest.get('format')!r}, expected {FORMAT!r} (written by "
            "another transduce version)"
        ]
    problems = platform_problems(manifest, platform)
    missing = [graph for graph in GRAPHS if graph not in manifest.get("engines", {})]
    if missing:
        problems.append(f"no engine recorded for {', '.join(missing)}")

    if engine_dir is not None:
        for graph, entry in manifest.get("engines", {}).items():
            plan = Path(engine_dir) / entry["file"]
            if not plan.is_file():
                problems.append(f"{graph}: plan file {plan} is missing")
            elif plan.stat().st_size != entry["bytes"]:
                problems.append(
                    f"{graph}: {plan.name} has {plan.stat().st_size} bytes, the manifest "
                    f"recorded {entry['bytes']} (overwritten or truncated)"
                )

    if onnx_dir is not None:
        onnx_dir = Path(onnx_dir)
        for graph_problems in onnx_problems(manifest, onnx_dir).values():
            problems += graph_problems
        export_manifest = onnx_dir / MANIFEST_FILE
        if not export_manifest.is_file():
            problems.append(f"export manifest {export_manifest} is missing")
        elif sha256_file(export_manifest) != manifest["export"]["manifest_sha256"]:
            problems.append(
                f"export manifest {export_manifest} changed since the engines were built"
            )
    return problems


def check_engine_manifest(
    manifest: dict[str, Any],
    *,
    trt_version: str,
    gpu_name: str,
    compute_capability: str,
    onnx_dir: str | Path | None = None,
    engine_dir: str | Path | None = None,
) -> None:
    """Raise unless the engines of `manifest` may be loaded on this platform.

    Runs before deserialization: a plan from another TensorRT version or GPU fails to load
    with a less helpful message, or loads and runs slowly.

    Raises:
        EngineManifestError: Listing every mismatch (TensorRT version, GPU, stale ONNX, missing
            or changed plan files) and the `transduce build` command that rebuilds.
    """
    platform = Platform(trt_version, gpu_name, compute_capability)
    problems = manifest_problems(
        manifest, platform=platform, onnx_dir=onnx_dir, engine_dir=engine_dir
    )
    if problems:
        command = (
            rebuild_command(manifest, engine_dir) if manifest.get("format") == FORMAT else None
        )
        raise EngineManifestError(
            f"engines in {engine_dir or 'this directory'} do not match this machine or their "
            "sources:\n"
            + "\n".join(f"  - {p}" for p in problems)
            + (f"\nrebuild with: {command}" if command else "")
        )


def stale_reasons(
    manifest: dict[str, Any] | None,
    *,
    engine_dir: str | Path,
    onnx_dir: str | Path,
    platform: Platform,
    profiles: dict[str, list[dict[str, Any]]],
    settings: BuildSettings,
) -> dict[str, list[str]]:
    """Why each graph's engine must be (re)built; an empty list means it is up to date.

    Args:
        manifest: The engine directory's current manifest, or None when there is none.
        engine_dir: The engine directory.
        onnx_dir: The export directory to build from.
        platform: The platform the build runs on.
        profiles: The wanted profiles per graph, JSON-ready (`profiles_to_json`).
        settings: The wanted build settings.

    Returns:
        {"encoder": [reasons...], "decoder": [reasons...]}.
    """
    reasons: dict[str, list[str]] = {graph: [] for graph in GRAPHS}
    if manifest is None or manifest.get("format") != FORMAT:
        return {graph: ["no engine manifest"] for graph in GRAPHS}
    general = platform_problems(manifest, platform)
    if BuildSettings.from_dict(manifest.get("settings", {})) != settings:
        general.append("build settings changed")
    changed_onnx = onnx_problems(manifest, Path(onnx_dir))
    for graph in GRAPHS:
        entry = manifest.get("engines", {}).get(graph)
        if entry is None:
            reasons[graph].append("not built yet")
            continue
        plan = Path(engine_dir) / entry["file"]
        if not plan.is_file() or plan.stat().st_size != entry["bytes"]:
            reasons[graph].append(f"{plan.name} is missing or changed")
        if entry["profiles"] != profiles[graph]:
            reasons[graph].append("profiles changed")
        reasons[graph] += general + changed_onnx[graph]
    return reasons


def is_stale(
    manifest: dict[str, Any] | None,
    graph: str,
    *,
    engine_dir: str | Path,
    onnx_dir: str | Path,
    platform: Platform,
    profiles: dict[str, list[dict[str, Any]]],
    settings: BuildSettings,
) -> bool:
    """Whether `graph`'s engine must be rebuilt; see `stale_reasons`."""
    reasons = stale_reasons(
        manifest,
        engine_dir=engine_dir,
        onnx_dir=onnx_dir,
        platform=platform,
        profiles=profiles,
        settings=settings,
    )
    return bool(reasons[graph])
