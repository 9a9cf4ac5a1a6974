"""The reference self-attention cache: per-layer keys and values that grow by concatenation."""

from __future__ import annotations

import torch


class GrowingCache:
    """Self-attention keys and values of the target positions decoded so far.

    The reference keeps it plain: every decoder step appends its T new positions to each layer's
    (B, H, P, Dh) tensors. The fast runtime uses its own layout (see export/); this class is
    what that layout is checked against.
    """

    def __init__(self, n_layers: int) -> None:
        self.keys: list[torch.Tensor | None] = [None] * n_layers
        self.values: list[torch.Tensor | None] = [None] * n_layers

    @property
    def past_len(self) -> int:  # P
        return 0 if self.keys[0] is None else self.keys[0].shape[2]

    def update(
        self, layer: int, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this call's (B, H, T, Dh) keys and values; return all (B, H, P + T, Dh)."""
        if self.keys[layer] is not None:
            keys = torch.cat([self.keys[layer], keys], dim=2)
            values = torch.cat([self.values[layer], values], dim=2)
        self.keys[layer], self.values[layer] = keys, values
        return keys, values

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep the cache rows named by `rows` (B,) int64, in that order (beam reordering)."""
        self.keys = [None if k is None else k.index_select(0, rows) for k in self.keys]
        self.values = [None if v is None else v.index_select(0, rows) for v in self.values]
