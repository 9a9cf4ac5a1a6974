"""The static check of tensorrt names: the AST collector, the comparison and the names files."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from transduce.engines.tensorrt_api import (
    NAMES_DIR,
    Use,
    applies_to,
    load_names,
    missing_names,
    tensorrt_names_used,
)


def write(tmp_path: Path, source: str, name: str = "sample.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return path


def names_and_lines(used: dict[str, list[Use]]) -> dict[str, list[int]]:
    return {name: [use.line for use in uses] for name, uses in used.items()}


def test_collects_attribute_chains_of_each_alias(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        import os.path
        import tensorrt as trt

        def build(logger):
            import tensorrt
            builder = trt.Builder(logger)
            flag = trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED
            network = builder.create_network(1 << int(flag))
            level = tensorrt.ILogger.Severity.WARNING
            os.path.join("a", "b")
            return trt.Builder(logger).create_network, trt
        """,
    )
    assert names_and_lines(tensorrt_names_used([path])) == {
        "Builder": [6, 11],
        "NetworkDefinitionCreationFlag.STRONGLY_TYPED": [7],
        "ILogger.Severity.WARNING": [9],
    }


def test_from_imports_and_submodule_aliases(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        from tensorrt import BuilderFlag as BF, nptype
        import tensorrt.plugin as trtp

        flags = [BF.TF32, BF.REFIT]
        trtp.register
        """,
    )
    assert names_and_lines(tensorrt_names_used([path])) == {
        "BuilderFlag": [1],
        "nptype": [1],
        "plugin": [2],
        "BuilderFlag.TF32": [4],
        "BuilderFlag.REFIT": [4],
        "plugin.register": [5],
    }


def test_getattr_and_hasattr_strings(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        import tensorrt as trt

        volume = getattr(trt, "volume")
        has_fp16 = hasattr(trt.BuilderFlag, "FP16")
        other = getattr(object(), "FP8", None)
        """,
    )
    assert names_and_lines(tensorrt_names_used([path])) == {
        "volume": [3],
        "BuilderFlag": [4],
        "BuilderFlag.FP16": [4],
    }


def test_file_without_tensorrt_uses_nothing(tmp_path: Path) -> None:
    path = write(tmp_path, "import numpy as trt\nx = trt.float16\n")
    assert tensorrt_names_used([path]) == {}


def test_version_markers(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        import tensorrt as trt

        if hasattr(trt.BuilderFlag, "FP16"):  # trt: only<11
            config.set_flag(trt.BuilderFlag.FP16)  # trt: only < 11
        route = config.build_route  # plain attribute of an object: not collected
        flag = trt.BuilderFlag.TF32
        new = trt.EngineStat.TOTAL_WEIGHTS_SIZE  # trt: only>=11
        """,
    )
    used = tensorrt_names_used([path])
    assert [use.only for use in used["BuilderFlag.FP16"]] == ["<11", "<11"]
    assert used["BuilderFlag.TF32"] == [Use(str(path), 6, None)]
    assert used["EngineStat.TOTAL_WEIGHTS_SIZE"][0].only == ">=11"
    assert applies_to(used["BuilderFlag.FP16"][0], "10.16.1.11")
    assert not applies_to(used["BuilderFlag.FP16"][0], "11.0.0.114")
    assert applies_to(Use("x.py", 1, ">=10.16"), "10.16.0.72")
    assert not applies_to(Use("x.py", 1, ">=10.16"), "10.15.1.29")


def test_bad_marker_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "import tensorrt as trt\nx = trt.Builder  # trt: only eleven\n")
    with pytest.raises(ValueError, match=r"sample.py:2: bad marker"):
        tensorrt_names_used([path])


def test_missing_names_qualified() -> None:
    available = {"Builder", "BuilderFlag", "BuilderFlag.TF32", "DataType", "DataType.HALF"}
    used = {
        "Builder": [Use("a.py", 1)],
        "BuilderFlag.TF32": [Use("a.py", 2)],
        "BuilderFlag.FP16": [Use("a.py", 3, "<11"), Use("b.py", 4)],
        "DataType.HALF.name": [Use("a.py", 5)],  # enum values are leaves of the list
        "Runtime": [Use("a.py", 6, "<11")],
    }
    assert missing_names(used, available, "11.4.0.106") == [("BuilderFlag.FP16", [Use("b.py", 4)])]
    assert [name for name, _ in missing_names(used, available)] == ["BuilderFlag.FP16", "Runtime"]
    assert [name for name, _ in missing_names(used, available, "10.16.1.11")] == [
        "BuilderFlag.FP16",
        "Runtime",
    ]


def test_missing_names_flat() -> None:
    available = {"BuilderFlag", "TF32", "Builder"}
    used = {"BuilderFlag.TF32": [Use("a.py", 1)], "BuilderFlag.FP16": [Use("a.py", 2)]}
    assert [name for name, _ in missing_names(used, available)] == ["BuilderFlag.FP16"]


def test_load_names_of_unknown_version() -> None:
    with pytest.raises(FileNotFoundError, match=r"9\.9\.9\.txt"):
        load_names("9.9.9")


VERSIONS = sorted(path.stem for path in NAMES_DIR.glob("*.txt"))


def test_names_files_cover_the_supported_versions() -> None:
    majors_minors = {tuple(version.split(".")[:2]) for version in VERSIONS}
    assert {("10", "15"), ("10", "16")} <= majors_minors
    assert any(version.startswith("11.") for version in VERSIONS)


@pytest.mark.parametrize("version", VERSIONS)
def test_names_file_agrees_with_known_facts(version: str) -> None:
    header = (NAMES_DIR / f"{version}.txt").read_text().splitlines()[0]
    assert header.startswith("# tensorrt-cu") and f"=={version} sha256=" in header
    names = load_names(version)
    assert "BuilderFlag" in names and "OnnxParser" in names and "__version__" in names
    assert "NetworkDefinitionCreationFlag.STRONGLY_TYPED" in names
    assert "BuilderFlag.TF32" in names
    assert ("BuilderFlag.FP16" in names) == version.startswith("10.")
    used = {"BuilderFlag.FP16": [Use("x.py", 1, "<11")], "OnnxParser": [Use("x.py", 2)]}
    assert missing_names(used, names, version) == []
