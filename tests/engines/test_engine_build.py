"""`engine_from_onnx` against a recording stand-in for tensorrt: the order and choice of calls.

The stand-in accepts any attribute (the static check in test_tensorrt_usage.py is what checks
the names); these tests check the Python around the calls: every parser error reported, the
profiles checked against the network, TF32 stated, no precision flag, the timing cache loaded
and saved, the plan written atomically, the I/O table read back.
Run: .venv/bin/python -m pytest tests/engines/test_engine_build.py
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from transduce.engines.build import EngineBuildError, engine_from_onnx, network_problems
from transduce.engines.manifest import BuildSettings
from transduce.engines.profiles import ShapeRange

PROFILE = {"src_tokens": ShapeRange((1, 1), (2, 4), (4, 8))}


@pytest.fixture
def trt(monkeypatch):
    """A tensorrt stand-in with one dynamic input and one output; returns the module mock."""
    trt = mock.MagicMock(name="tensorrt")

    class ILogger:
        Severity = types.SimpleNamespace(INTERNAL_ERROR=0, ERROR=1, WARNING=2, INFO=3, VERBOSE=4)

        def __init__(self) -> None:
            pass

    class IProgressMonitor:
        def __init__(self) -> None:
            pass

    trt.ILogger, trt.IProgressMonitor = ILogger, IProgressMonitor
    trt.nptype = np.dtype
    network = trt.Builder.return_value.create_network.return_value
    network.num_inputs = 1
    network.get_input.return_value = types.SimpleNamespace(name="src_tokens", shape=(-1, -1))
    trt.OnnxParser.return_value.parse_from_file.return_value = True
    config = trt.Builder.return_value.create_builder_config.return_value
    config.set_timing_cache.return_value = True
    config.get_timing_cache.return_value.serialize.return_value = b"timings"
    trt.Builder.return_value.build_serialized_network.return_value = b"serialized plan"

    engine = trt.Runtime.return_value.deserialize_cuda_engine.return_value
    io = {"src_tokens": ("int64", [-1, -1]), "src_mask": ("bool", [-1, -1])}
    engine.num_io_tensors, engine.num_optimization_profiles = 2, 1
    engine.get_tensor_name.side_effect = list(io).__getitem__
    engine.get_tensor_mode.side_effect = lambda name: (
        trt.TensorIOMode.INPUT if name == "src_tokens" else trt.TensorIOMode.OUTPUT
    )
    engine.get_tensor_dtype.side_effect = lambda name: io[name][0]
    engine.get_tensor_shape.side_effect = lambda name: io[name][1]
    engine.get_tensor_profile_shape.return_value = [(1, 1), (2, 4), (4, 8)]
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    return trt


def build(tmp_path: Path, **kwargs) -> dict:
    onnx = tmp_path / "encoder.onnx"
    onnx.write_bytes(b"graph")
    options = {"profiles": [PROFILE], "settings": BuildSettings(), "progress": False} | kwargs
    return engine_from_onnx(onnx, tmp_path / "out" / "encoder.plan", **options)


def test_a_build_writes_the_plan_and_cache_and_reads_the_io_table(trt, tmp_path) -> None:
    (tmp_path / "timing.cache").write_bytes(b"old timings")
    result = build(
        tmp_path,
        timing_cache=tmp_path / "timing.cache",
        axis_names={"src_tokens": ["batch", "src_len"], "src_mask": ["batch", "src_len"]},
        settings=BuildSettings(optimization_level=5, workspace_bytes=1 << 30),
    )
    assert (tmp_path / "out" / "encoder.plan").read_bytes() == b"serialized plan"
    assert (tmp_path / "timing.cache").read_bytes() == b"timings"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["encoder.plan"]
    assert result["io"] == [
        {
            "name": "src_tokens",
            "mode": "input",
            "dtype": "int64",
            "shape": ["batch", "src_len"],
            "profiles": [[[1, 1], [2, 4], [4, 8]]],
        },
        {"name": "src_mask", "mode": "output", "dtype": "bool", "shape": ["batch", "src_len"]},
    ]

    config = trt.Builder.return_value.create_builder_config.return_value
    config.create_timing_cache.assert_called_once_with(b"old timings")
    config.clear_flag.assert_called_once_with(trt.BuilderFlag.TF32)
    assert config.builder_optimization_level == 5
    config.set_memory_pool_limit.assert_called_once_with(trt.MemoryPoolType.WORKSPACE, 1 << 30)
    flags_set = [call.args[0] for call in config.set_flag.call_args_list]
    assert trt.BuilderFlag.FP16 not in flags_set and flags_set == []
    profile = trt.Builder.return_value.create_optimization_profile.return_value
    profile.set_shape.assert_called_once_with("src_tokens", (1, 1), (2, 4), (4, 8))
    trt.Builder.return_value.create_network.assert_called_once()


def test_compatibility_and_tf32_flags(trt, tmp_path) -> None:
    settings = BuildSettings(tf32=True, hardware_compatible=True, version_compatible=True)
    build(tmp_path, settings=settings, progress=True)
    config = trt.Builder.return_value.create_builder_config.return_value
    assert [c.args[0] for c in config.set_flag.call_args_list] == [
        trt.BuilderFlag.TF32,
        trt.BuilderFlag.VERSION_COMPATIBLE,
    ]
    assert config.hardware_compatibility_level == trt.HardwareCompatibilityLevel.AMPERE_PLUS
    assert isinstance(config.progress_monitor, trt.IProgressMonitor)
    assert trt.Runtime.return_value.engine_host_code_allowed is True


def test_every_parser_error_is_reported(trt, tmp_path) -> None:
    parser = trt.OnnxParser.return_value
    parser.parse_from_file.return_value = False
    errors = [
        mock.Mock(**{"node.return_value": 3, "node_name.return_value": "/attn/Where",
                     "node_operator.return_value": "Where", "desc.return_value": "bad type",
                     "code.return_value": "UNSUPPORTED_NODE"}),
        mock.Mock(**{"node.return_value": -1, "node_name.return_value": "",
                     "node_operator.return_value": "", "desc.return_value": "opset 26",
                     "code.return_value": "INVALID_GRAPH"}),
    ]  # fmt: skip
    parser.num_errors = 2
    parser.get_error.side_effect = errors.__getitem__
    with pytest.raises(EngineBuildError, match=r"rejected .*encoder.onnx with 2 error") as raised:
        build(tmp_path)
    assert raised.value.args[0].splitlines()[1:] == [
        "  - node 3 '/attn/Where' (Where): bad type [UNSUPPORTED_NODE]",
        "  - graph: opset 26 [INVALID_GRAPH]",
    ]
    assert not (tmp_path / "out").exists()


def test_a_failed_build_names_the_plan(trt, tmp_path) -> None:
    trt.Builder.return_value.build_serialized_network.return_value = None
    with pytest.raises(EngineBuildError, match=r"failed to build encoder.plan from"):
        build(tmp_path)


def test_profiles_must_cover_the_dynamic_inputs_exactly() -> None:
    inputs = [("tgt_tokens", (-1, 1)), ("position", (1,)), ("cache", (-1, 4, -1, 8))]
    profiles = [
        {
            "tgt_tokens": ShapeRange((1, 1), (2, 1), (4, 2)),
            "ghost": ShapeRange((1,), (1,), (1,)),
        }
    ]
    assert network_problems(inputs, profiles) == [
        "profile 0 sets ghost, which the network has no input of",
        "profile 0 max shape of tgt_tokens is (4, 2); the network input is (-1, 1)",
        "profile 0 has no range for dynamic input cache (-1, 4, -1, 8)",
    ]


def test_profile_problems_stop_the_build(trt, tmp_path) -> None:
    with pytest.raises(EngineBuildError, match=r"profiles do not fit the inputs of encoder.onnx"):
        build(tmp_path, profiles=[{}])
    trt.Builder.return_value.build_serialized_network.assert_not_called()
