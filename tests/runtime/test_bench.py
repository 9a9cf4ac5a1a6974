"""The benchmark machinery on the tiny preset: workers, report files, missing peers.

No timing is asserted: only that one run goes through and says what it measured.
Run: pytest tests/runtime/test_bench.py
"""

import argparse
import importlib.util
import json

import pytest

from transduce.bench_report import decoder_macs_per_token, encoder_macs_per_token
from transduce.cli import main
from transduce.commands import bench
from transduce.model.config import preset

HAS_CT2 = importlib.util.find_spec("ctranslate2") is not None


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    engines = ["onnxruntime-fp32", "tensorrt", "transformers", "ctranslate2-fp32"]
    argv = [
        "bench",
        "--preset", "tiny",
        "--runs", "1",
        "--warmup", "0",
        "--batches", "1", "2",
        "--beam-size", "2",
        "--beam-batches", "1",
        "--src-len", "5",
        "--new-tokens", "4",
        "--threads", "1",
        "--engines", *engines,
        "--artifacts", str(root / "artifacts"),
        "--output", str(root / "results"),
        "--no-plots",
    ]  # fmt: skip
    assert main(argv) == 0
    results = root / "results"
    return json.loads((results / "bench.json").read_text()), (results / "bench.md").read_text()


def test_every_workload_is_timed_and_summarized(bench_run):
    report, _ = bench_run
    assert [w["name"] for w in report["workloads"]] == ["greedy b1", "greedy b2", "beam2 b1"]
    rows = {(r["engine"], r["workload"]): r for r in report["summary"]}
    for workload in report["workloads"]:
        row = rows[("onnxruntime-fp32", workload["name"])]
        assert row["runs"] == 1 and row["tokens_per_s"] > 0
        assert row["step_s"] > 0 and row["first_token_s"] > 0 and row["encode_s"] > 0
        assert 0 <= row["outside_graph"] < 1
    run = next(r for r in report["runs"] if r["workload"] == "greedy b2")
    assert run["generated"] == 2 * 4, "EOS suppressed: every row gets all its tokens"
    assert report["gemm"]["peak_gflops"]["torch"] > 0
    assert report["model"]["decoder_macs_per_token"] > 0


def test_fp32_engines_are_verified_against_the_golden_decoder(bench_run):
    report, markdown = bench_run
    engine = report["engines"]["onnxruntime-fp32"]
    assert engine["verify_identical"] and engine["load_seconds"] > 0
    assert "onnxruntime-fp32: greedy tokens identical to the golden decoder" in markdown


def test_missing_peers_are_reported_not_fatal(bench_run):
    report, markdown = bench_run
    assert not report["engines"]["tensorrt"]["available"]
    assert "- tensorrt: not run (" in markdown
    # the tiny preset has two vocabularies, which this Marian mapping does not cover
    assert "one vocabulary size" in report["engines"]["transformers"]["note"]
    ct2 = report["engines"]["ctranslate2-fp32"]
    if HAS_CT2:
        assert ct2["verify_identical"], ct2
        assert report["reference_engine"] == "ctranslate2-fp32"
    else:
        assert "not installed" in ct2["note"]


def test_markdown_has_one_table_row_per_engine_and_workload(bench_run):
    report, markdown = bench_run
    table = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| workload | engine | tokens/s")
    assert len(table) == 1 + len(report["summary"])


def test_multiply_add_counts_follow_the_sizes():
    config = preset("base").to_dict()
    # 6 layers x (6 D^2 + 2 D F) + D V with D 512, F 2048, V 32,000; attention over 1 + 0 + 0
    expected = 6 * (6 * 512**2 + 2 * 512 * 2048) + 512 * 32_000 + 6 * 2 * 512
    assert decoder_macs_per_token(config, past_len=0, src_len=0) == expected
    assert encoder_macs_per_token(config, src_len=0) == 6 * (4 * 512**2 + 2 * 512 * 2048) + (
        6 * 2 * 512**2
    )


def test_impossible_settings_are_refused_at_once():
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--runs", "0", "--src-len", "1", "--batches", "0", "4"])
    with pytest.raises(ValueError, match="invalid bench settings") as error:
        bench.run(args)
    message = str(error.value)
    assert "--runs must be at least 1, got 0" in message
    assert "--src-len must be at least 2" in message
    assert "must be positive, got [0]" in message
