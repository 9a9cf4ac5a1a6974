"""The generation loop on ONNX Runtime (and the torch backend) against the golden decoders.

Run: pytest tests/runtime/test_generate.py
"""

import numpy as np
import pytest
from helpers import random_sources

from transduce.model.golden import beam_search, greedy
from transduce.model.torch_backend import TorchBackend
from transduce.runtime.generate import (
    GenerationConfig,
    generate,
    generate_many,
    iter_steps,
)
from transduce.runtime.onnxruntime_backend import OnnxRuntimeBackend

LENGTHS = [5, 9, 2, 7, 1]


@pytest.fixture(scope="module")
def setup(tiny_exports):
    model, dirs, _ = tiny_exports
    backends = {
        "torch": TorchBackend(model),
        "onnxruntime-fp32": OnnxRuntimeBackend(dirs["fp32"]),
        "onnxruntime-fp16": OnnxRuntimeBackend(dirs["fp16"], threads=1),
    }
    return model, backends, random_sources(model, LENGTHS, seed=61)


@pytest.mark.parametrize("backend", ["torch", "onnxruntime-fp32"])
def test_greedy_equals_golden(setup, backend):
    model, backends, src = setup
    expected = greedy(model, src, max_new_tokens=12)
    result = generate(backends[backend], src.numpy(), GenerationConfig(max_new_tokens=12))
    assert result.tokens == [h.tokens for h in expected]
    for (actual,), reference in zip(result.hypotheses, expected, strict=True):
        assert actual.score == pytest.approx(reference.score, abs=1e-4)
    assert len({len(t) for t in result.tokens}) > 1, "rows end at different steps"


@pytest.mark.parametrize("backend", ["torch", "onnxruntime-fp32"])
@pytest.mark.parametrize("beam_size, length_penalty", [(2, 1.0), (4, 0.6), (4, 0.0)])
def test_beam_search_equals_golden(setup, backend, beam_size, length_penalty):
    model, backends, src = setup
    expected = beam_search(
        model,
        src,
        beam_size=beam_size,
        max_new_tokens=10,
        length_penalty=length_penalty,
        n_best=beam_size,
    )
    config = GenerationConfig(
        max_new_tokens=10, beam_size=beam_size, length_penalty=length_penalty, n_best=beam_size
    )
    result = generate(backends[backend], src.numpy(), config)
    assert [[h.tokens for h in row] for row in result.hypotheses] == [
        [h.tokens for h in row] for row in expected
    ]
    for row, reference in zip(result.hypotheses, expected, strict=True):
        for a, e in zip(row, reference, strict=True):
            assert a.normalized_score == pytest.approx(e.normalized_score, abs=1e-4)


def test_fp16_graph_decodes_like_the_reference(setup):
    model, backends, src = setup
    expected = greedy(model, src, max_new_tokens=12)
    result = generate(
        backends["onnxruntime-fp16"], src.numpy(), GenerationConfig(max_new_tokens=12)
    )
    assert result.tokens == [h.tokens for h in expected]


def test_streaming_yields_every_step_and_the_same_result(setup):
    _, backends, src = setup
    backend = backends["onnxruntime-fp32"]
    config = GenerationConfig(max_new_tokens=12)
    steps = iter_steps(backend, src.numpy(), config)
    events = []
    while True:
        try:
            events.append(next(steps))
        except StopIteration as stop:
            streamed = stop.value
            break
    assert [e.step for e in events] == list(range(len(events)))
    expected = generate(backend, src.numpy(), config)
    assert [row[0].tokens for row in streamed] == expected.tokens
    # the streamed tokens, row by row, are the final tokens
    for row, tokens in enumerate(expected.tokens):
        assert [int(e.tokens[row]) for e in events][: len(tokens)] == tokens
    seen = []
    generate(backend, src.numpy(), config, on_step=seen.append)
    assert len(seen) == len(events)


def test_timings_are_reported(setup):
    _, backends, src = setup
    result = generate(backends["onnxruntime-fp32"], src.numpy(), GenerationConfig(max_new_tokens=6))
    timings = result.timings
    assert 0 < timings.encode_seconds < timings.first_token_seconds <= timings.total_seconds
    assert len(timings.step_seconds) == max(len(t) for t in result.tokens)


def test_generate_many_batches_by_length_and_keeps_the_order(setup):
    model, backends, src = setup
    sources = [[int(t) for t in row if t != model.config.pad_id] for row in src.numpy()] * 3
    config = GenerationConfig(max_new_tokens=12)
    batched = generate_many(backends["onnxruntime-fp32"], sources, config, max_rows=4)
    alone = generate(backends["onnxruntime-fp32"], sources, config)
    assert [row[0].tokens for row in batched] == alone.tokens


def test_sampling_is_seeded_and_top_k_one_is_greedy(setup):
    _, backends, src = setup
    backend = backends["onnxruntime-fp32"]
    sample = GenerationConfig(max_new_tokens=8, sample=True, temperature=1.5, seed=3)
    first, second = generate(backend, src.numpy(), sample), generate(backend, src.numpy(), sample)
    assert first.tokens == second.tokens
    others = [
        generate(
            backend,
            src.numpy(),
            GenerationConfig(max_new_tokens=8, sample=True, temperature=1.5, seed=seed),
        ).tokens
        for seed in (4, 5, 6)
    ]
    assert any(tokens != first.tokens for tokens in others), "the seed changes the draws"
    top1 = GenerationConfig(max_new_tokens=8, sample=True, top_k=1, seed=5)
    assert (
        generate(backend, src.numpy(), top1).tokens
        == generate(backend, src.numpy(), GenerationConfig(max_new_tokens=8)).tokens
    )


@pytest.mark.parametrize(
    "sources, config, message",
    [
        ([[3, 4, 999]], GenerationConfig(), r"ids outside the vocabulary \[0, 61\), first 999"),
        ([[3, 4], []], GenerationConfig(), r"source rows \[1\] are empty"),
        (np.zeros((2, 3), dtype=np.int64), GenerationConfig(), r"rows \[0, 1\] hold only padding"),
        (np.ones((2, 3), dtype=np.float32), GenerationConfig(), "must hold integer ids"),
        ([[3] * 70], GenerationConfig(), "source length 70 exceeds the limit of 64"),
        ([[3, 4]], GenerationConfig(max_new_tokens=65), r"max_new_tokens \(65\) exceeds"),
        ([[3, 4]], GenerationConfig(beam_size=5), r"re-export with --top-k 10"),
        ([[3, 4]], GenerationConfig(beam_size=2, n_best=3), r"n_best \(3\) must be between"),
        ([[3, 4]], GenerationConfig(sample=True, top_p=0), r"top_p must be in \(0, 1\]"),
    ],
)
def test_bad_requests_are_refused_before_any_graph_runs(setup, sources, config, message):
    _, backends, _ = setup
    with pytest.raises(ValueError, match=message):
        generate(backends["onnxruntime-fp32"], sources, config)


def test_every_problem_is_listed_at_once(setup):
    _, backends, _ = setup
    config = GenerationConfig(max_new_tokens=0, temperature=0)
    with pytest.raises(ValueError, match="invalid generation request") as error:
        generate(backends["onnxruntime-fp32"], [[3, 999]], config)
    message = str(error.value)
    assert "max_new_tokens must be at least 1" in message
    assert "temperature must be positive" in message
    assert "outside the vocabulary" in message


def _masked_golden_greedy(model, src, max_new_tokens, min_new_tokens):
    """Golden greedy (full recomputation) with EOS banned for the first min_new_tokens steps."""
    import torch

    config = model.config
    with torch.no_grad():
        cross_kv = model.cross_keys_values(model.encode(src))
        src_mask = model.source_mask(src)
        prefixes = torch.full((src.shape[0], 1), config.bos_id, dtype=torch.long)
        for step in range(max_new_tokens):
            log_probs = torch.log_softmax(model.decode(prefixes, cross_kv, src_mask)[:, -1], -1)
            if step < min_new_tokens:
                log_probs[:, config.eos_id] = -torch.inf
            prefixes = torch.cat([prefixes, log_probs.argmax(-1, keepdim=True)], dim=1)
    return prefixes[:, 1:].tolist()


@pytest.mark.parametrize("backend", ["torch", "onnxruntime-fp32"])
def test_min_new_tokens_bans_eos_like_a_masked_golden_greedy(setup, backend):
    model, backends, src = setup
    config = GenerationConfig(max_new_tokens=10, min_new_tokens=10)
    result = generate(backends[backend], src.numpy(), config)
    assert result.tokens == _masked_golden_greedy(model, src, 10, 10)
    assert all(len(t) == 10 and model.config.eos_id not in t for t in result.tokens)
    # without the minimum the same model ends some rows early: the ban did something
    plain = generate(backends[backend], src.numpy(), GenerationConfig(max_new_tokens=10))
    assert any(len(t) < 10 for t in plain.tokens)


def test_min_new_tokens_below_the_budget_allows_eos_afterwards(setup):
    model, backends, src = setup
    config = GenerationConfig(max_new_tokens=12, min_new_tokens=3)
    result = generate(backends["onnxruntime-fp32"], src.numpy(), config)
    expected = _masked_golden_greedy(model, src, 12, 3)
    eos = model.config.eos_id
    for tokens, reference in zip(result.tokens, expected, strict=True):
        # the reference keeps going after EOS; the loop stops the row there
        end = reference.index(eos) + 1 if eos in reference else len(reference)
        assert tokens == reference[:end]
        assert len(tokens) >= 3


@pytest.mark.parametrize("sample", [False, True])
def test_min_new_tokens_gives_every_beam_and_sample_the_full_length(setup, sample):
    model, backends, src = setup
    if sample:
        config = GenerationConfig(max_new_tokens=8, min_new_tokens=8, sample=True, seed=1)
    else:
        config = GenerationConfig(max_new_tokens=8, min_new_tokens=8, beam_size=4, n_best=4)
    results = {name: generate(backends[name], src.numpy(), config) for name in backends}
    reference = results["torch"].hypotheses
    for name, result in results.items():
        lengths = {len(h.tokens) for row in result.hypotheses for h in row}
        assert lengths == {8}, name
        assert all(model.config.eos_id not in h.tokens for row in result.hypotheses for h in row)
        if name == "onnxruntime-fp32":
            assert [[h.tokens for h in r] for r in result.hypotheses] == [
                [h.tokens for h in r] for r in reference
            ]


def test_min_new_tokens_above_the_budget_is_refused(setup):
    _, backends, _ = setup
    config = GenerationConfig(max_new_tokens=4, min_new_tokens=5)
    with pytest.raises(ValueError, match=r"min_new_tokens \(5\) must be between 0 and"):
        generate(backends["onnxruntime-fp32"], [[3, 4]], config)
