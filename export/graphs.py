"""The two exportable modules: the encoder and one decoder step over a fixed-capacity cache.

They reuse the reference model's layers; only the cache handling differs from the reference
(`Transformer.decode` concatenates, the step graph keeps the cache beside the new position).
"""

from __future__ import annotations

import torch
from torch import nn

from transduce.model.transformer import Transformer


class EncoderGraph(nn.Module):
    """src_tokens -> (src_mask, cross_keys.0.., cross_values.0..)."""

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, src_tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
        cross_kv = self.model.cross_keys_values(self.model.encode(src_tokens))
        keys, values = zip(*cross_kv, strict=True)
        return (self.model.source_mask(src_tokens), *keys, *values)


class DecoderStepGraph(nn.Module):
    """One decoder step for every row; see export/contract.py for the tensors."""

    def __init__(self, model: Transformer, top_k: int) -> None:
        super().__init__()
        self.model, self.top_k = model, top_k
        self.n_layers = model.config.n_decoder_layers

    def forward(
        self,
        tgt_tokens: torch.Tensor,
        position: torch.Tensor,
        src_mask: torch.Tensor,
        *kv: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        n = self.n_layers
        cross_keys, cross_values = kv[:n], kv[n : 2 * n]
        cache_keys, cache_values = kv[2 * n : 3 * n], kv[3 * n :]
        capacity = cache_keys[0].shape[2]

        # slot j of the cache holds target position j; only slots before P are filled
        slot_mask = (torch.arange(capacity) < position)[None, None, None, :]  # (1, 1, 1, L)
        # the new position attends to itself: (1, 1, 1, 1), always True
        self_mask = torch.ones(1, 1, 1, 1, dtype=torch.bool)
        cross_mask = src_mask[:, None, None, :]  # (B, 1, 1, S)

        x = self.model._embed(self.model.tgt_embed, tgt_tokens, position)  # (B, 1, D)
        new_keys, new_values = [], []
        for i, layer in enumerate(self.model.decoder_layers):

            def self_segments(keys, values, i=i):
                new_keys.append(keys)
                new_values.append(values)
                return [(cache_keys[i], cache_values[i], slot_mask), (keys, values, self_mask)]

            x = layer(x, self_segments, (cross_keys[i], cross_values[i]), cross_mask)

        log_probs = torch.log_softmax(self.model.logits(x)[:, -1].float(), dim=-1)  # (B, V)
        top_log_probs, top_ids = torch.topk(log_probs, self.top_k, dim=-1)
        return (log_probs, top_log_probs, top_ids, *new_keys, *new_values)
