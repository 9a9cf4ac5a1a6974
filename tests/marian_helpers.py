"""A small random MarianMTModel for the import and export tests (needs transformers)."""

from __future__ import annotations

import torch
from transformers import MarianConfig, MarianMTModel

V, PAD, EOS, UNK = 61, 60, 0, 1  # Marian's layout: EOS 0, <unk> 1, pad last


def marian_model(seed: int = 0, eos_boost: float = 1.5, **overrides) -> MarianMTModel:
    """A small MarianMTModel whose random weights make outputs depend on the source.

    transformers' own init (N(0, 0.02)) gives near-uniform outputs full of near-ties. Here the
    LayerNorm gains stay near 1, matrices have a gain of 2, and the EOS logit gets a boost, so
    rows end at different steps and some run out of budget.
    """
    settings = {
        "vocab_size": V,
        "d_model": 32,
        "encoder_layers": 2,
        "decoder_layers": 2,
        "encoder_attention_heads": 4,
        "decoder_attention_heads": 4,
        "encoder_ffn_dim": 64,
        "decoder_ffn_dim": 64,
        "max_position_embeddings": 64,
        "pad_token_id": PAD,
        "eos_token_id": EOS,
        "decoder_start_token_id": PAD,
        "forced_eos_token_id": None,
        "dropout": 0.0,
        **overrides,
    }
    torch.manual_seed(seed)
    model = MarianMTModel(MarianConfig(**settings)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "embed_positions" in name:
                continue  # the fixed sinusoids
            if "layer_norm" in name:
                param.copy_(float(name.endswith("weight")) + 0.1 * torch.randn_like(param))
            elif "embed_tokens" in name or "shared" in name or "lm_head" in name:
                param.normal_(0.0, 0.3)
            elif param.dim() == 2:
                param.normal_(0.0, 2.0 * param.shape[1] ** -0.5)
            else:
                param.normal_(0.0, 0.1)
        model.final_logits_bias.normal_(0.0, 0.5)
        model.final_logits_bias[0, settings["eos_token_id"]] += eos_boost
    return model


def padded_sources(lengths: list[int], pad: int, seed: int) -> torch.Tensor:
    """(B, S) right-padded source ids ending in EOS, from ids 2.. (not EOS, not <unk>)."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.full((len(lengths), max(lengths)), pad, dtype=torch.long)
    for row, length in enumerate(lengths):
        rows[row, : length - 1] = torch.randint(2, pad, (length - 1,), generator=generator)
        rows[row, length - 1] = EOS
    return rows
