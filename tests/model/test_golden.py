"""Golden greedy and beam search: agreement with each other and with the model's scores.

Run: pytest tests/model/test_golden.py
"""

import math

import pytest
import torch
from helpers import random_sources, tiny_model

from transduce.model.golden import beam_search, greedy


def _sequence_log_prob(model, src_row, tokens):
    """Sum of log P(token_t | prefix) under a fresh full pass, for one (1, S) source row."""
    prefix = torch.tensor([[model.config.bos_id] + tokens[:-1]])
    cross_kv = model.cross_keys_values(model.encode(src_row))
    log_probs = torch.log_softmax(model.decode(prefix, cross_kv, model.source_mask(src_row)), -1)
    return float(log_probs[0, torch.arange(len(tokens)), torch.tensor(tokens)].sum())


@pytest.fixture(scope="module")
def model_and_sources():
    # a model biased toward EOS so that some rows end early and others run to the budget
    model = tiny_model(seed=21)
    with torch.no_grad():
        model.output_proj.bias = None
        model.output_proj.weight[model.config.eos_id] *= 3.0
    return model, random_sources(model, [5, 9, 2, 7], seed=22)


def test_beam_one_equals_greedy(model_and_sources):
    model, src = model_and_sources
    expected = greedy(model, src, max_new_tokens=12)
    actual = [hyps[0] for hyps in beam_search(model, src, beam_size=1, max_new_tokens=12)]
    assert [h.tokens for h in actual] == [h.tokens for h in expected]
    for a, e in zip(actual, expected, strict=True):
        # fp32: the golden greedy runs the batch at once, beam search one row at a time
        assert a.score == pytest.approx(e.score, abs=1e-5)


def test_greedy_rows_end_at_eos_independently(model_and_sources):
    model, src = model_and_sources
    outputs = greedy(model, src, max_new_tokens=12)
    eos = model.config.eos_id
    for hypothesis in outputs:
        assert eos not in hypothesis.tokens[:-1]
        assert hypothesis.tokens[-1] == eos or len(hypothesis.tokens) == 12
    assert len({len(h.tokens) for h in outputs}) > 1, "rows should end at different steps"


def test_greedy_rows_equal_rows_alone(model_and_sources):
    model, src = model_and_sources
    batched = greedy(model, src, max_new_tokens=12)
    for row in range(src.shape[0]):
        length = int((src[row] != model.config.pad_id).sum())
        alone = greedy(model, src[row : row + 1, :length], max_new_tokens=12)[0]
        assert alone.tokens == batched[row].tokens


@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 0.6])
def test_beam_scores_are_summed_log_probs(model_and_sources, length_penalty):
    model, src = model_and_sources
    results = beam_search(
        model, src, beam_size=4, max_new_tokens=10, length_penalty=length_penalty, n_best=3
    )
    for row, hypotheses in enumerate(results):
        assert len(hypotheses) == 3
        normalized = [h.normalized_score for h in hypotheses]
        assert normalized == sorted(normalized, reverse=True)
        for h in hypotheses:
            with torch.no_grad():
                expected = _sequence_log_prob(model, src[row : row + 1], h.tokens)
            assert h.score == pytest.approx(expected, abs=1e-4)
            assert h.normalized_score == pytest.approx(h.score / len(h.tokens) ** length_penalty)


def test_beam_search_finds_at_least_the_greedy_score(model_and_sources):
    """With no length penalty, the best beam is never less probable than the greedy path."""
    model, src = model_and_sources
    greedy_out = greedy(model, src, max_new_tokens=10)
    beams = beam_search(model, src, beam_size=4, max_new_tokens=10, length_penalty=0.0)
    for g, hyps in zip(greedy_out, beams, strict=True):
        if g.tokens[-1] == model.config.eos_id:
            assert hyps[0].score >= g.score - 1e-5


def test_n_best_cannot_exceed_beam_size(model_and_sources):
    model, src = model_and_sources
    with pytest.raises(ValueError, match=r"n_best \(5\) must be between 1 and beam_size \(4\)"):
        beam_search(model, src, beam_size=4, max_new_tokens=4, n_best=5)


def test_length_penalty_prefers_longer_hypotheses(model_and_sources):
    """A higher penalty exponent never shortens the best hypothesis (on these rows)."""
    model, src = model_and_sources
    short = beam_search(model, src, beam_size=4, max_new_tokens=10, length_penalty=0.0)
    long = beam_search(model, src, beam_size=4, max_new_tokens=10, length_penalty=2.0)
    assert all(len(b[0].tokens) >= len(a[0].tokens) for a, b in zip(short, long, strict=True))
    assert not math.isnan(long[0][0].normalized_score)
