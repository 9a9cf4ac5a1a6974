"""The engine manifest: the pre-load check, staleness, and rebuild-only-what-is-stale.

TensorRT is replaced by `engine_helpers.fake_engine_from_onnx`, so this runs on any CPU.
Run: .venv/bin/python -m pytest tests/engines/test_engine_manifest.py
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from engine_helpers import export_manifest, fake_engine_from_onnx, write_export_dir

from transduce.engines import build
from transduce.engines.manifest import (
    BuildSettings,
    EngineManifestError,
    Platform,
    check_engine_manifest,
    manifest_problems,
    read_engine_manifest,
    rebuild_command,
    write_json_atomically,
)
from transduce.engines.profiles import ShapeSpec
from transduce.runtime.backend import ModelInfo

H100 = Platform("10.16.1.11", "NVIDIA H100 80GB HBM3", "9.0")
SPECS = [ShapeSpec(max_batch=8, max_src_len=32, max_tgt_len=48, opt_batch=4)]


@pytest.fixture
def fake_build(monkeypatch):
    """build_engines with the fake engine builder; returns the list of graphs it built."""
    fake_engine_from_onnx.calls = []
    monkeypatch.setattr(build, "engine_from_onnx", fake_engine_from_onnx)
    return fake_engine_from_onnx.calls


@pytest.fixture
def built(tmp_path, fake_build) -> tuple[Path, Path, dict]:
    """(export dir, engine dir, manifest) after one build on H100."""
    export_dir = write_export_dir(tmp_path / "export", export_manifest())
    engine_dir = tmp_path / "engines"
    manifest = build.build_engines(export_dir, engine_dir, SPECS, BuildSettings(), platform=H100)
    return export_dir, engine_dir, manifest


def check(manifest: dict, platform: Platform, **kwargs) -> None:
    check_engine_manifest(
        manifest,
        trt_version=platform.tensorrt_version,
        gpu_name=platform.gpu_name,
        compute_capability=platform.compute_capability,
        **kwargs,
    )


def test_a_fresh_build_passes_the_check_and_reads_as_model_info(built) -> None:
    export_dir, engine_dir, written = built
    assert written["built"] == ["encoder", "decoder"]
    manifest = read_engine_manifest(engine_dir)
    check(manifest, H100, onnx_dir=export_dir, engine_dir=engine_dir)
    assert sorted(p.name for p in engine_dir.iterdir()) == [
        "decoder.plan",
        "encoder.plan",
        "manifest.json",
    ]
    info = ModelInfo.from_manifest(manifest)
    assert (info.n_layers, info.n_heads, info.head_dim, info.top_k) == (2, 4, 8, 8)
    assert manifest["settings"]["tf32"] is False  # stated, not left to TensorRT's default
    assert manifest["specs"] == [ShapeSpec(8, 32, 48, 4, 32, 48).to_dict()]
    decoder_io = {row["name"]: row for row in manifest["engines"]["decoder"]["io"]}
    assert decoder_io["cache_keys.0"]["profiles"] == [[[1, 4, 1, 8], [4, 4, 48, 8], [8, 4, 48, 8]]]


def test_every_mismatch_is_listed_with_the_rebuild_command(built) -> None:
    export_dir, engine_dir, _ = built
    manifest = read_engine_manifest(engine_dir)
    (export_dir / "decoder.onnx").write_bytes(b"a newer export")
    (engine_dir / "encoder.plan").write_bytes(b"truncated")
    other = Platform("10.15.1.29", "NVIDIA A100-SXM4-80GB", "8.0")
    with pytest.raises(EngineManifestError, match=r"do not match this machine") as raised:
        check(manifest, other, onnx_dir=export_dir, engine_dir=engine_dir)
    message = str(raised.value)
    assert "TensorRT version differs: engines built with 10.16.1.11, running 10.15.1.29" in message
    assert "GPU compute capability differs: engines built for 9.0 (NVIDIA H100" in message
    assert "decoder: decoder.onnx changed since decoder.plan was built from it" in message
    assert "encoder: encoder.plan has 9 bytes, the manifest recorded" in message
    command = message.split("rebuild with: ")[1]
    assert shlex.split(command)[:5] == [
        "transduce",
        "build",
        str(export_dir.resolve()),
        "--output",
        str(engine_dir),
    ]


def test_same_architecture_other_gpu_model_is_a_mismatch(built) -> None:
    _, engine_dir, _ = built
    manifest = read_engine_manifest(engine_dir)
    h200 = Platform("10.16.1.11", "NVIDIA H200", "9.0")
    with pytest.raises(EngineManifestError, match=r"GPU differs: engines built on NVIDIA H100"):
        check(manifest, h200)


def test_missing_onnx_and_changed_export_manifest(built) -> None:
    export_dir, engine_dir, _ = built
    manifest = read_engine_manifest(engine_dir)
    (export_dir / "encoder.onnx").unlink()
    (export_dir / "manifest.json").write_text("{}")
    problems = manifest_problems(manifest, platform=H100, onnx_dir=export_dir)
    assert problems == [
        f"encoder: ONNX graph {export_dir / 'encoder.onnx'} is missing",
        f"export manifest {export_dir / 'manifest.json'} changed since the engines were built",
    ]


def test_compatibility_flags_relax_the_platform_rules(built) -> None:
    _, engine_dir, _ = built
    manifest = read_engine_manifest(engine_dir)
    manifest["settings"].update(version_compatible=True, hardware_compatible=True)
    newer_on_l4 = Platform("10.16.2.5", "NVIDIA L4", "8.9")
    assert manifest_problems(manifest, platform=newer_on_l4) == []
    older_major = Platform("11.0.0.114", "NVIDIA L4", "8.9")
    turing = Platform("10.16.1.11", "Tesla T4", "7.5")
    older_minor = Platform("10.15.1.29", "NVIDIA L4", "8.9")
    assert (
        "same major version, same or newer" in manifest_problems(manifest, platform=older_major)[0]
    )
    assert "older than Ampere (8.0)" in manifest_problems(manifest, platform=turing)[0]
    assert len(manifest_problems(manifest, platform=older_minor)) == 1


def test_other_format_is_refused_without_a_command(tmp_path) -> None:
    with pytest.raises(EngineManifestError, match=r"manifest format is 'transduce-engines/0'"):
        check({"format": "transduce-engines/0"}, H100)
    with pytest.raises(FileNotFoundError, match=r"build the engines first \(transduce build"):
        read_engine_manifest(tmp_path)


def test_only_what_is_stale_is_rebuilt(built, fake_build) -> None:
    export_dir, engine_dir, _ = built

    def rebuild(specs=SPECS, settings=None, platform=H100, force=False) -> list[str]:
        settings = settings or BuildSettings()
        fake_build.clear()
        result = build.build_engines(
            export_dir, engine_dir, specs, settings, platform=platform, force=force
        )
        assert result["built"] == fake_build
        return list(fake_build)

    assert rebuild() == []
    # the capacity only shapes decoder inputs: the encoder plan stays
    assert rebuild(specs=[ShapeSpec(8, 32, 40, 4)]) == ["decoder"]
    assert rebuild(specs=[ShapeSpec(8, 32, 40, 4)]) == []
    manifest = json.loads((export_dir / "manifest.json").read_text())
    write_export_dir(export_dir, manifest, seed="v2")  # both graphs exported again
    assert rebuild(specs=[ShapeSpec(8, 32, 40, 4)]) == ["encoder", "decoder"]
    assert rebuild(specs=[ShapeSpec(8, 32, 40, 4)], settings=BuildSettings(tf32=True)) == [
        "encoder",
        "decoder",
    ]
    assert rebuild(specs=[ShapeSpec(8, 32, 40, 4)], settings=BuildSettings(tf32=True)) == []
    assert rebuild(
        specs=[ShapeSpec(8, 32, 40, 4)],
        settings=BuildSettings(tf32=True),
        platform=Platform("10.16.1.11", "NVIDIA H200", "9.0"),
    ) == ["encoder", "decoder"]
    assert rebuild(force=True) == ["encoder", "decoder"]
    (engine_dir / "encoder.plan").unlink()
    assert rebuild() == ["encoder"]


def test_build_refuses_bad_inputs_with_every_problem(tmp_path, fake_build) -> None:
    manifest = export_manifest(dtype="float32")
    export_dir = write_export_dir(tmp_path / "export", manifest)
    (export_dir / "decoder.onnx").write_bytes(b"edited after export")
    with pytest.raises(ValueError, match=r"cannot be built from") as raised:
        build.build_engines(export_dir, tmp_path / "e", SPECS, BuildSettings(), platform=H100)
    message = str(raised.value)
    assert "decoder: decoder.onnx does not match the sha256 in the manifest" in message
    assert "precision is 'float32'; TensorRT engines are built from a float16 export" in message
    with pytest.raises(ValueError, match=r"optimization_level must be in 0\.\.5"):
        build.build_engines(
            export_dir, tmp_path / "e", SPECS, BuildSettings(optimization_level=7), platform=H100
        )
    with pytest.raises(ValueError, match=r"max_tgt_len \(65\) exceeds the model's max_positions"):
        build.build_engines(
            export_dir, tmp_path / "e", [ShapeSpec(4, 8, 65)], BuildSettings(), platform=H100
        )
    with pytest.raises(FileNotFoundError, match=r"export the model first"):
        build.build_engines(tmp_path / "none", tmp_path / "e", SPECS, BuildSettings())
    assert fake_build == []


def test_rebuild_command_repeats_shapes_and_flags() -> None:
    manifest = {
        "export": {"dir": "/data/export dir"},
        "specs": [ShapeSpec(2, 16, 16, 1, 8, 8).to_dict(), ShapeSpec(32, 64, 64).to_dict()],
        "settings": BuildSettings(
            tf32=True, optimization_level=5, workspace_bytes=1 << 30, version_compatible=True
        ).to_dict(),
    }
    words = shlex.split(rebuild_command(manifest, "/data/engines"))
    assert words[:5] == ["transduce", "build", "/data/export dir", "--output", "/data/engines"]
    assert words[words.index("--max-batch") + 1 : words.index("--max-batch") + 3] == ["2", "32"]
    assert "--opt-batch" not in words  # the second profile leaves it to its default
    assert words[-6:] == [
        "--tf32",
        "--opt-level",
        "5",
        "--workspace",
        "1073741824B",
        "--version-compatible",
    ]


def test_atomic_writes_leave_no_temporary_files(tmp_path) -> None:
    target = tmp_path / "manifest.json"
    write_json_atomically(target, {"a": 1})
    write_json_atomically(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]
