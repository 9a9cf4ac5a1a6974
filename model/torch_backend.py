"""The reference model as a runtime backend, so that every backend can be compared with it.

It runs `Transformer.decode_step` with the reference's growing cache: nothing exported, no
fixed-capacity buffer. Loaded on request (the runtime itself never imports torch).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from transduce.model.transformer import Transformer
from transduce.runtime.backend import Backend, DecodeSession, ModelInfo, StepResult


class TorchBackend(Backend):
    """Runs the reference model in fp32 on the CPU."""

    name = "torch"

    def __init__(self, model: Transformer, *, top_k: int = 8) -> None:
        self.model = model.eval()
        self.info = ModelInfo.from_model_config(
            model.config.to_dict(), top_k=top_k, cache_dtype="float32"
        )

    def start(self, src_tokens: np.ndarray, *, beams: int, capacity: int) -> DecodeSession:
        return TorchSession(self, src_tokens, beams=beams, capacity=capacity)


class TorchSession(DecodeSession):
    def __init__(
        self, backend: TorchBackend, src_tokens: np.ndarray, *, beams: int, capacity: int
    ) -> None:
        self.model, self.top_k = backend.model, backend.info.top_k
        src = torch.from_numpy(np.repeat(src_tokens, beams, axis=0))
        start = time.perf_counter()
        with torch.no_grad():
            self.cross_kv = self.model.cross_keys_values(self.model.encode(src))
        self.encode_seconds = time.perf_counter() - start
        self.src_mask = self.model.source_mask(src)
        self.cache = self.model.new_cache()
        self.batch, self.capacity = src.shape[0], capacity

    @torch.no_grad()
    def step(self, tokens: np.ndarray, position: int, *, full: bool = False) -> StepResult:
        if position != self.cache.past_len:
            raise ValueError(f"position {position} must follow the cache ({self.cache.past_len})")
        tgt = torch.from_numpy(np.asarray(tokens, dtype=np.int64))[:, None]
        log_probs = self.model.decode_step(tgt, self.cross_kv, self.src_mask, self.cache)[:, -1]
        top_log_probs, top_ids = torch.topk(log_probs, self.top_k, dim=-1)
        return StepResult(
            top_log_probs.numpy(), top_ids.numpy(), log_probs.numpy() if full else None
        )

    def reorder(self, rows: np.ndarray) -> None:
        self.cache.reorder(torch.from_numpy(np.asarray(rows, dtype=np.int64)))
