"""Parity of the trained demo model, every layer, the way `transduce parity` runs it.

Greedy tokens are checked on the whole demo test set (2,000 held-out numbers); beam search on
its first 300 (the golden beam search recomputes everything per row and is slow; the full-set
beam result is measured with the command in README.md).

Run: pytest tests/test_parity_demo.py   (needs the demo training fixture: about 3 minutes)
"""

import pytest

from transduce.commands.parity import FP16_MAX_ACCURACY_DROP, run_parity


@pytest.fixture(scope="module")
def report(demo_checkpoint, tmp_path_factory):
    return run_parity(
        demo_checkpoint,
        tmp_path_factory.mktemp("parity"),
        test_size=2_000,
        beam=4,
        max_new_tokens=24,
        beam_test_size=300,
    )


def test_graph_outputs_match_torch(report):
    """Layers 1 and 2: every output of both graphs, fp32 and fp16."""
    failed = [v.line() for v in report.outputs if not v.passed]
    assert not failed, "\n".join(failed)
    assert {v.graph for v in report.outputs} == {
        "fp32.encoder",
        "fp32.decoder",
        "fp16.encoder",
        "fp16.decoder",
    }


def test_fp32_tokens_equal_the_golden_decoders(report):
    verdicts = {(v.backend, v.mode): v for v in report.tokens}
    for mode, total in (("greedy", 2_000), ("beam4", 300)):
        verdict = verdicts[("onnxruntime-fp32", mode)]
        assert verdict.total == total
        assert verdict.identical == total, verdict.line() + "".join(
            f"\n  {d.line()}" for d in verdict.divergences
        )


def test_fp16_tokens_and_accuracy(report):
    verdicts = {(v.backend, v.mode): v for v in report.tokens}
    for mode in ("greedy", "beam4"):
        verdict = verdicts[("onnxruntime-fp16", mode)]
        assert verdict.fraction >= 0.995, verdict.line()
    drop = report.accuracy["golden"] - report.accuracy["onnxruntime-fp16"]
    assert drop <= FP16_MAX_ACCURACY_DROP
    assert report.passed, "\n".join(report.lines())
