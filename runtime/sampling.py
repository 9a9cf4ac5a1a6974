"""Drawing tokens from log-probabilities: temperature, top-k and top-p (nucleus)."""

from __future__ import annotations

import numpy as np


def sample_tokens(log_probs: np.ndarray, config, rng: np.random.Generator) -> np.ndarray:
    """One token per row of log_probs (B, V); config has temperature, top_k and top_p."""
    logits = log_probs.astype(np.float64) / config.temperature
    if config.top_k:
        # everything below the k-th largest value of a row is dropped
        kth = np.partition(logits, -config.top_k, axis=-1)[:, -config.top_k][:, None]
        logits = np.where(logits < kth, -np.inf, logits)
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    if config.top_p < 1.0:
        # keep the most likely tokens until their mass reaches top_p (at least one token)
        order = np.argsort(-probs, axis=-1, kind="stable")
        sorted_probs = np.take_along_axis(probs, order, axis=-1)
        before = np.cumsum(sorted_probs, axis=-1) - sorted_probs  # mass ahead of each token
        keep_sorted = before < config.top_p
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=-1)
        probs = np.where(keep, probs, 0.0)
        probs /= probs.sum(axis=-1, keepdims=True)
    # inverse-CDF draw per row: one uniform number each, reproducible from the seed
    draws = rng.random(probs.shape[0])[:, None]
    chosen = (np.cumsum(probs, axis=-1) < draws).sum(axis=-1)
    return np.minimum(chosen, probs.shape[1] - 1).astype(np.int64)
