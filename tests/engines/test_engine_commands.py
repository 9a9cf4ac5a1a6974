"""`transduce build` and `transduce selfcheck` on a machine without TensorRT or a GPU.

Run: .venv/bin/python -m pytest tests/engines/test_engine_commands.py
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from engine_helpers import export_manifest, write_export_dir

from transduce.cli import main as cli_main
from transduce.commands import build as build_command
from transduce.commands import selfcheck
from transduce.engines.manifest import BuildSettings
from transduce.engines.profiles import ShapeSpec

ROOT = Path(__file__).resolve().parents[2]


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    build_command.add_arguments(parser)
    return parser.parse_args(["export", "--output", "engines", *argv])


@pytest.mark.parametrize(
    "text, expected",
    [
        ("4GiB", 4 << 30),
        ("512M", 512 << 20),
        ("2048", 2048 << 20),
        ("1000B", 1000),
        ("1.5g", 3 << 29),
    ],
)
def test_workspace_sizes(text: str, expected: int) -> None:
    assert build_command.parse_bytes(text) == expected


def test_workspace_size_without_a_known_unit_is_refused() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=r"workspace size '4 parsecs'"):
        build_command.parse_bytes("4 parsecs")


def test_one_value_per_profile_or_one_for_all() -> None:
    args = parse("--max-batch", "4", "64", "--max-src-len", "128", "--opt-batch", "1", "16")
    assert build_command.specs_from_args(args) == [
        ShapeSpec(max_batch=4, max_src_len=128, opt_batch=1),
        ShapeSpec(max_batch=64, max_src_len=128, opt_batch=16),
    ]
    assert build_command.specs_from_args(parse()) == [ShapeSpec()]
    with pytest.raises(ValueError, match=r"different numbers of profiles --max-batch: 2"):
        build_command.specs_from_args(parse("--max-batch", "4", "8", "--opt-batch", "1", "2", "3"))


def test_flags_become_settings_with_tf32_off_by_default() -> None:
    assert build_command.settings_from_args(parse()) == BuildSettings()
    args = parse("--tf32", "--opt-level", "5", "--workspace", "1GiB", "--version-compatible")
    assert build_command.settings_from_args(args) == BuildSettings(
        tf32=True, optimization_level=5, workspace_bytes=1 << 30, version_compatible=True
    )


def test_build_without_tensorrt_says_what_to_install(tmp_path, caplog) -> None:
    if selfcheck.missing_requirements() == []:
        pytest.skip("this machine has TensorRT and a GPU")
    export_dir = write_export_dir(tmp_path / "export", export_manifest())
    with caplog.at_level(logging.ERROR):
        status = cli_main(["build", str(export_dir), "--output", str(tmp_path / "engines")])
    assert status == 1
    assert "pip install 'transduce[gpu]'" in caplog.text


def test_build_reports_an_invalid_spec_before_touching_tensorrt(tmp_path, caplog) -> None:
    export_dir = write_export_dir(tmp_path / "export", export_manifest())
    argv = ["build", str(export_dir), "--output", str(tmp_path / "e"), "--max-tgt-len", "0"]
    with caplog.at_level(logging.ERROR):
        assert cli_main(argv) == 2
    assert "max_tgt_len must be at least 1, got 0" in caplog.text


def test_selfcheck_without_a_gpu_lists_what_is_missing_and_fails() -> None:
    if selfcheck.missing_requirements() == []:
        pytest.skip("this machine has TensorRT and a GPU")
    result = subprocess.run(
        [sys.executable, "-m", "transduce.cli", "selfcheck"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0] == "transduce selfcheck" and lines[-1] == "verdict: FAIL"
    assert any(line.split()[:2] == ["MISSING", "tensorrt"] for line in lines), result.stdout


def test_junit_outcomes(tmp_path) -> None:
    report = tmp_path / "report.xml"
    report.write_text(
        "<testsuites><testsuite>"
        '<testcase name="a"/>'
        '<testcase name="b"><failure message="x"/></testcase>'
        '<testcase name="c"><skipped message="no GPU"/></testcase>'
        "</testsuite></testsuites>"
    )
    assert selfcheck.junit_outcomes(report) == [("a", "passed"), ("b", "failed"), ("c", "skipped")]
    assert selfcheck.junit_outcomes(tmp_path / "none.xml") == []


def test_a_report_passes_only_with_every_test_passed() -> None:
    ok = selfcheck.Requirement("tensorrt", "10.16.1.11", True)
    report = selfcheck.Report(requirements=[ok], tests=[("a", "passed")])
    assert report.passed
    report.tests.append(("b", "skipped"))
    assert not report.passed  # a skipped GPU test is not a verified one
    assert not selfcheck.Report(requirements=[ok]).passed
