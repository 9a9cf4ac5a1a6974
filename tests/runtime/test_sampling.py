"""Sampling filters: temperature, top-k and top-p on hand-made distributions.

Run: pytest tests/runtime/test_sampling.py
"""

import numpy as np

from transduce.runtime.generate import GenerationConfig
from transduce.runtime.sampling import sample_tokens

PROBS = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))


def _draw_counts(config, n=4000):
    rng = np.random.default_rng(0)
    tokens = sample_tokens(np.repeat(PROBS, n, axis=0), config, rng)
    return np.bincount(tokens, minlength=4) / n


def test_plain_sampling_follows_the_distribution():
    counts = _draw_counts(GenerationConfig(sample=True))
    np.testing.assert_allclose(counts, [0.5, 0.3, 0.15, 0.05], atol=0.03)


def test_top_k_keeps_the_k_most_likely():
    counts = _draw_counts(GenerationConfig(sample=True, top_k=2))
    assert counts[2] == counts[3] == 0
    np.testing.assert_allclose(counts[:2], [0.625, 0.375], atol=0.03)


def test_top_p_keeps_the_smallest_set_reaching_p():
    # 0.5 + 0.3 = 0.8 >= 0.7: the nucleus is the first two tokens
    counts = _draw_counts(GenerationConfig(sample=True, top_p=0.7))
    assert counts[2] == counts[3] == 0
    # a tiny p still keeps the most likely token
    assert _draw_counts(GenerationConfig(sample=True, top_p=1e-6))[0] == 1.0


def test_low_temperature_sharpens():
    counts = _draw_counts(GenerationConfig(sample=True, temperature=0.1))
    assert counts[0] > 0.98
