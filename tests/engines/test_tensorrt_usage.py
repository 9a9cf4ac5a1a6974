"""The static API check over our own code: the TensorRT and cuda-python names it uses exist.

Three checks, none needing TensorRT, CUDA or a GPU:
1. every `trt.X.Y` chain in the engine, runtime and command code is in the bindings' names of
   every supported TensorRT version (`engines/tensorrt_names/*.txt`; `# trt: only>=11`
   markers respected);
2. members used on TensorRT objects (`config.set_flag`, `context.execute_async_v3`) exist on
   their class in every version; the objects are recognized by the variable names the code
   keeps for them (`OBJECTS` below), which is why those names must not be reused for others;
3. every `cudart.X` name exists in cuda-python's `cuda.bindings.runtime` (names and
   signatures recorded by `scripts/extract_cuda_names.py`), and each call passes as many
   arguments as the function has parameters.
Run: .venv/bin/python -m pytest tests/engines/test_tensorrt_usage.py
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from transduce.engines.tensorrt_api import (
    NAMES_DIR,
    load_names,
    missing_names,
    tensorrt_names_used,
)

ROOT = Path(__file__).resolve().parents[2]
FILES = sorted(ROOT.glob("engines/*.py")) + [
    ROOT / "runtime" / "cuda_device.py",
    ROOT / "runtime" / "tensorrt_backend.py",
    ROOT / "runtime" / "tensorrt_plans.py",
    ROOT / "transduce" / "commands" / "build.py",
    ROOT / "transduce" / "commands" / "selfcheck.py",
]
VERSIONS = sorted(path.stem for path in NAMES_DIR.glob("*.txt"))
CUDA_NAMES = json.loads((Path(__file__).with_name("cuda_bindings_runtime_13.json")).read_text())

# variable (or attribute) name -> the TensorRT class it always holds, per file
_BUILD_OBJECTS = {
    "builder": "Builder",
    "network": "INetworkDefinition",
    "parser": "OnnxParser",
    "config": "IBuilderConfig",
    "profile": "IOptimizationProfile",
    "error": "ParserError",
    "tensor": "ITensor",
    "engine": "ICudaEngine",
    "trt_runtime": "Runtime",
}
OBJECTS = {
    ROOT / "engines" / "build.py": _BUILD_OBJECTS,
    ROOT / "engines" / "manifest.py": {"severity": "ILogger.Severity"},
    ROOT / "runtime" / "tensorrt_backend.py": {
        "engine": "ICudaEngine",
        "context": "IExecutionContext",
        "trt_runtime": "Runtime",
    },
}


def trt_uses() -> dict:
    """tensorrt names used, less Python protocol names (`ILogger.__init__` in a subclass)."""
    used = tensorrt_names_used(FILES)
    return {
        name: uses
        for name, uses in used.items()
        if not any(part.startswith("__") and part != "__version__" for part in name.split("."))
    }


def test_files_exist_and_the_check_sees_the_builder_and_runtime_calls() -> None:
    assert all(path.is_file() for path in FILES), [p for p in FILES if not p.is_file()]
    used = trt_uses()
    for name in ("Builder", "OnnxParser", "BuilderFlag.TF32", "Runtime", "TensorIOMode.INPUT"):
        assert name in used, name
    # strong typing: no precision flag anywhere, and the network flag that gives it
    assert not [name for name in used if name.startswith("BuilderFlag.FP16")]
    assert "NetworkDefinitionCreationFlag.STRONGLY_TYPED" in used


@pytest.mark.parametrize("version", VERSIONS)
def test_every_tensorrt_name_exists_in(version: str) -> None:
    missing = missing_names(trt_uses(), load_names(version), version)
    assert not missing, "\n".join(
        f"{name}: " + ", ".join(f"{Path(u.path).relative_to(ROOT)}:{u.line}" for u in uses)
        for name, uses in missing
    )


def object_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def member_uses() -> dict[str, list[str]]:
    """`Class.member` -> the places it is used, for attributes of the objects in OBJECTS."""
    uses: dict[str, list[str]] = {}
    for path, objects in OBJECTS.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and object_name(node.value) in objects:
                name = f"{objects[object_name(node.value)]}.{node.attr}"
                uses.setdefault(name, []).append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return uses


def test_the_member_check_sees_the_calls_that_matter() -> None:
    used = member_uses()
    for name in (
        "IBuilderConfig.set_memory_pool_limit",
        "IBuilderConfig.builder_optimization_level",
        "IBuilderConfig.progress_monitor",
        "OnnxParser.get_error",
        "ParserError.desc",
        "IExecutionContext.execute_async_v3",
        "IExecutionContext.set_tensor_address",
        "IExecutionContext.set_optimization_profile_async",
        "ICudaEngine.get_tensor_profile_shape",
        "ICudaEngine.create_execution_context",
        "Runtime.deserialize_cuda_engine",
    ):
        assert name in used, name


@pytest.mark.parametrize("version", VERSIONS)
def test_every_member_used_on_a_tensorrt_object_exists_in(version: str) -> None:
    names = load_names(version)
    missing = {name: places for name, places in member_uses().items() if name not in names}
    assert not missing, missing


def cuda_aliases(tree: ast.AST) -> set[str]:
    aliases = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "cuda.bindings":
            aliases |= {a.asname or a.name for a in node.names if a.name == "runtime"}
        elif isinstance(node, ast.Import):
            aliases |= {a.asname for a in node.names if a.name == "cuda.bindings.runtime"}
    return aliases - {None}


def is_cuda_root(node: ast.expr, aliases: set[str]) -> bool:
    """The module itself: a name imported from cuda.bindings, or `self._cudart` (the device
    layer keeps the module there)."""
    if isinstance(node, ast.Name):
        return node.id in aliases
    return isinstance(node, ast.Attribute) and node.attr == "_cudart"


def cuda_uses() -> tuple[dict[str, list[str]], list[tuple[str, int, str]]]:
    """(chain -> places, [(function, arguments passed, place)]) of the cudart uses."""
    chains: dict[str, list[str]] = {}
    calls = []
    for path in FILES:
        tree = ast.parse(path.read_text())
        aliases = cuda_aliases(tree)
        if not aliases:
            continue
        inner: set[int] = set()
        for node in ast.walk(tree):  # breadth first: the outer node of a chain comes first
            place = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                if is_cuda_root(node.func.value, aliases):
                    calls.append((node.func.attr, len(node.args) + len(node.keywords), place))
            if not isinstance(node, ast.Attribute) or id(node) in inner:
                continue
            parts, current = [], node
            while isinstance(current, ast.Attribute) and not is_cuda_root(current, aliases):
                parts.append(current.attr)
                current = current.value
            if parts and is_cuda_root(current, aliases):
                chains.setdefault(".".join(reversed(parts)), []).append(place)
                inner |= {id(n) for n in ast.walk(node)}
    return chains, calls


def test_every_cuda_runtime_name_exists_and_calls_match_signatures() -> None:
    chains, calls = cuda_uses()
    for name in ("cudaMemcpy2DAsync", "cudaStreamBeginCapture", "cudaGraphLaunch", "cudaMalloc"):
        assert name in chains, name
    names = set(CUDA_NAMES["names"])
    assert {chain: places for chain, places in chains.items() if chain not in names} == {}
    wrong = [
        f"{place}: {function} takes {CUDA_NAMES['signatures'][function]}, given {count}"
        for function, count, place in calls
        if function in CUDA_NAMES["signatures"] and count != len(CUDA_NAMES["signatures"][function])
    ]
    assert not wrong, wrong
    assert {function for function, _, _ in calls} >= {"cudaMemcpyAsync", "cudaMemsetAsync"}


def test_the_recorded_cuda_names_match_the_installed_cuda_python() -> None:
    cuda = pytest.importorskip("cuda.bindings", reason="cuda-python is not installed")
    from cuda.bindings import runtime as cudart

    assert cuda.__version__.split(".")[0] == CUDA_NAMES["cuda-bindings"].split(".")[0]
    chains, _ = cuda_uses()
    for chain in chains:
        value = cudart
        for part in chain.split("."):
            value = getattr(value, part)


def test_the_tensorrt_path_imports_no_torch_onnx_or_gpu_library() -> None:
    """Deployment needs numpy, tensorrt and cuda-python only; those two load lazily."""
    code = (
        "import sys\n"
        "import transduce.runtime.tensorrt_backend, transduce.engines.build\n"
        "import transduce.runtime.tensorrt_plans, transduce.runtime.cuda_device\n"
        "import transduce.commands.selfcheck, transduce.commands.build\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'onnx', 'onnxruntime', 'tensorrt', 'cuda')"
        " or m.startswith(('transduce.model', 'transduce.export'))]\n"
        "print(bad)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
