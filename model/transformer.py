"""The encoder-decoder Transformer of "Attention Is All You Need", written to be read.

Entry points: `encode()` runs the encoder once per request, `cross_keys_values()` projects its
output into every decoder layer's cross-attention keys and values, and `decode_step()` runs the
decoder on new target tokens with a cache of the earlier ones. `forward()` is the full-sequence
path used for training.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from transduce.model.cache import GrowingCache
from transduce.model.config import ModelConfig

KeyValue = tuple[torch.Tensor, torch.Tensor]  # (B, H, N, Dh) each
Segment = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # keys, values, mask

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


def sinusoid_table(n_positions: int, d_model: int, layout: str) -> torch.Tensor:
    """(n_positions, D) float32 sinusoidal encodings with wavelengths 2*pi .. 10000*2*pi."""
    positions = torch.arange(n_positions, dtype=torch.float64)[:, None]
    rates = torch.exp(
        -math.log(10_000.0) * torch.arange(0, d_model, 2, dtype=torch.float64) / d_model
    )
    angles = positions * rates  # (n_positions, D/2)
    table = torch.zeros(n_positions, d_model, dtype=torch.float64)
    if layout == "interleaved":
        table[:, 0::2], table[:, 1::2] = torch.sin(angles), torch.cos(angles[:, : d_model // 2])
    else:  # "halves": all sines, then all cosines
        half = (d_model + 1) // 2
        table[:, :half], table[:, half:] = torch.sin(angles), torch.cos(angles[:, : d_model // 2])
    return table.float()


class MultiHeadAttention(nn.Module):
    """softmax(Q K^T / sqrt(Dh)) V over H heads; the caller supplies keys, values and masks.

    Keys and values are projected by `project_keys_values()` so that cross-attention can compute
    them once per request and self-attention can pass them through a cache. They may come in
    several segments (say, a cache and this step's new positions) that are attended over as
    one sequence without being concatenated: only the small score tensors are joined.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.head_dim = config.n_heads, config.head_dim
        self.q_proj = nn.Linear(config.d_model, config.d_model)
        self.k_proj = nn.Linear(config.d_model, config.d_model)
        self.v_proj = nn.Linear(config.d_model, config.d_model)
        self.out_proj = nn.Linear(config.d_model, config.d_model)
        self.softmax_fp32 = False  # set by set_precision(); a no-op while the model is fp32

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        # (B, T, D) -> (B, H, T, Dh): heads become a batch-like axis for the matmuls
        B, T, _ = x.shape
        return x.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)

    def project_keys_values(self, x: torch.Tensor) -> KeyValue:
        """(B, N, D) -> keys and values, (B, H, N, Dh) each."""
        return self._split_heads(self.k_proj(x)), self._split_heads(self.v_proj(x))

    def forward(self, x: torch.Tensor, segments: list[Segment]) -> torch.Tensor:
        """Attend from x (B, T, D) over the keys/values of every segment.

        segments: (keys, values, mask) triples; keys and values (B, H, N, Dh), mask bool and
            broadcastable to (B, H, T, N), True where attention is allowed.
        """
        B, T, D = x.shape
        queries = self._split_heads(self.q_proj(x))  # (B, H, T, Dh)

        # (B, H, T, Dh) @ (B, H, Dh, N) -> (B, H, T, N) per segment, joined along N
        scores = []
        for keys, _, mask in segments:
            s = queries @ keys.transpose(-2, -1) / math.sqrt(self.head_dim)
            s = s.float() if self.softmax_fp32 else s
            # the most negative finite value, not -inf: a row with nothing to see stays finite
            scores.append(s.masked_fill(~mask, torch.finfo(s.dtype).min))
        weights = torch.softmax(torch.cat(scores, dim=-1), dim=-1).to(queries.dtype)

        # (B, H, T, N) @ (B, H, N, Dh) -> (B, H, T, Dh), summed over segments -> (B, T, D)
        context, start = 0, 0
        for keys, values, _ in segments:
            n = keys.shape[2]
            context = context + weights[..., start : start + n] @ values
            start += n
        return self.out_proj(context.transpose(1, 2).reshape(B, T, D))


class FeedForward(nn.Module):
    """Two linear layers around a nonlinearity, applied to every position alike."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.up = nn.Linear(config.d_model, config.d_ff)
        self.activation = _ACTIVATIONS[config.activation]()
        self.down = nn.Linear(config.d_ff, config.d_model)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.dropout(self.activation(self.up(x))))


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm that can compute in fp32 inside a half-precision model.

    With `compute_fp32` set (see set_precision()), the input is cast up, normalized with fp32
    statistics and fp32 weights, and cast back: the casts an FP16 graph needs to say that its
    normalization runs in FP32.
    """

    compute_fp32 = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.compute_fp32:
            return super().forward(x.float()).to(x.dtype)
        return super().forward(x)


class Residual(nn.Module):
    """Wraps a sub-layer with dropout, the residual connection and LayerNorm.

    Post-norm (the paper): LayerNorm(x + f(x)). Pre-norm: x + f(LayerNorm(x)).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.norm = LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)
        self.norm_first = config.norm_first

    def forward(self, x: torch.Tensor, sublayer) -> torch.Tensor:
        if self.norm_first:
            return x + self.dropout(sublayer(self.norm(x)))
        return self.norm(x + self.dropout(sublayer(x)))


class EncoderLayer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.self_attn, self.self_attn_residual = MultiHeadAttention(config), Residual(config)
        self.ffn, self.ffn_residual = FeedForward(config), Residual(config)

    def forward(self, x: torch.Tensor, src_mask: torch.Tensor) -> torch.Tensor:
        """x: (B, S, D); src_mask: (B, 1, 1, S) bool, True at real (non-padding) tokens."""

        def attend(h: torch.Tensor) -> torch.Tensor:
            return self.self_attn(h, [(*self.self_attn.project_keys_values(h), src_mask)])

        x = self.self_attn_residual(x, attend)
        return self.ffn_residual(x, self.ffn)


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.self_attn, self.self_attn_residual = MultiHeadAttention(config), Residual(config)
        self.cross_attn, self.cross_attn_residual = MultiHeadAttention(config), Residual(config)
        self.ffn, self.ffn_residual = FeedForward(config), Residual(config)

    def forward(
        self,
        x: torch.Tensor,
        self_segments: Callable[[torch.Tensor, torch.Tensor], list[Segment]],
        cross_kv: KeyValue,
        cross_mask: torch.Tensor,
    ) -> torch.Tensor:
        """One decoder layer on x (B, T, D).

        self_segments: maps this call's new (B, H, T, Dh) keys and values to the segments that
            self-attention looks at, masks included (the cache decides how: concatenate, or
            keep a fixed buffer beside the new positions).
        cross_kv: the encoder-side keys and values, (B, H, S, Dh) each.
        cross_mask: (B, 1, 1, S) bool, True at real source tokens.
        """

        def self_attend(h: torch.Tensor) -> torch.Tensor:
            return self.self_attn(h, self_segments(*self.self_attn.project_keys_values(h)))

        # queries come from the decoder stream; keys and values from the encoder output
        def cross_attend(h: torch.Tensor) -> torch.Tensor:
            return self.cross_attn(h, [(*cross_kv, cross_mask)])

        x = self.self_attn_residual(x, self_attend)
        x = self.cross_attn_residual(x, cross_attend)
        return self.ffn_residual(x, self.ffn)


class Transformer(nn.Module):
    """The reference encoder-decoder. Inference is always in eval() mode and fp32.

    It is deliberately plain: no fused kernels, no in-place cache, so that it can serve as the
    ground truth for the exported graphs and the engines.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        D = config.d_model

        self.tgt_embed = nn.Embedding(config.tgt_vocab_size, D)
        self.src_embed = (
            self.tgt_embed if config.share_embeddings else nn.Embedding(config.src_vocab_size, D)
        )
        if config.positions == "learned":
            self.pos_embed = nn.Embedding(config.max_positions, D)
        else:
            table = sinusoid_table(config.max_positions, D, config.sinusoid_layout)
            self.register_buffer("pos_table", table, persistent=False)
        self.embed_dropout = nn.Dropout(config.dropout)
        self.embed_scale = math.sqrt(D) if config.scale_embeddings else 1.0

        self.encoder_layers = nn.ModuleList(
            EncoderLayer(config) for _ in range(config.n_encoder_layers)
        )
        self.decoder_layers = nn.ModuleList(
            DecoderLayer(config) for _ in range(config.n_decoder_layers)
        )
        # pre-norm stacks end with a LayerNorm; post-norm layers already end with one (but
        # torch.nn.Transformer adds it anyway, hence the option)
        final_norm = (
            (lambda: LayerNorm(D, eps=config.layer_norm_eps))
            if config.has_final_norm
            else nn.Identity
        )
        self.encoder_norm, self.decoder_norm = final_norm(), final_norm()

        self.output_proj = nn.Linear(D, config.tgt_vocab_size, bias=config.output_bias)
        if config.tie_output:
            self.output_proj.weight = self.tgt_embed.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform matrices, zero biases, N(0, D^-1/2) embeddings."""
        for name, param in self.named_parameters():
            if "embed" in name:
                nn.init.normal_(param, std=self.config.d_model**-0.5)
            elif param.dim() > 1:
                nn.init.xavier_uniform_(param)
            elif name.endswith("bias"):
                nn.init.zeros_(param)

    def _embed(
        self, table: nn.Embedding, tokens: torch.Tensor, start: int | torch.Tensor
    ) -> torch.Tensor:
        """Scaled token embedding plus positions start .. start + N - 1: (B, N) -> (B, N, D)."""
        positions = torch.arange(tokens.shape[1], device=tokens.device) + start
        if self.config.positions == "learned":
            pos = self.pos_embed(positions)
        else:
            pos = self.pos_table[positions]
        return self.embed_dropout(table(tokens) * self.embed_scale + pos)

    def source_mask(self, src_tokens: torch.Tensor) -> torch.Tensor:
        """(B, S) bool, True at real source tokens (not padding)."""
        return src_tokens != self.config.pad_id

    def encode(self, src_tokens: torch.Tensor) -> torch.Tensor:
        """src_tokens (B, S) int64, right-padded with pad_id -> encoder_out (B, S, D)."""
        attn_mask = self.source_mask(src_tokens)[:, None, None, :]  # (B, 1, 1, S)
        x = self._embed(self.src_embed, src_tokens, 0)
        for layer in self.encoder_layers:
            x = layer(x, attn_mask)
        return self.encoder_norm(x)

    def cross_keys_values(self, encoder_out: torch.Tensor) -> list[KeyValue]:
        """Every decoder layer's cross-attention keys and values, (B, H, S, Dh) each."""
        return [layer.cross_attn.project_keys_values(encoder_out) for layer in self.decoder_layers]

    def decode(
        self,
        tgt_tokens: torch.Tensor,
        cross_kv: list[KeyValue],
        src_mask: torch.Tensor,
        cache: GrowingCache | None = None,
    ) -> torch.Tensor:
        """Logits (B, T, V) for target tokens (B, T) that follow the P tokens in `cache`.

        Without a cache the tokens start at position 0 and attend causally among themselves
        (the full-sequence path). With one, their keys and values are appended to it.
        """
        T = tgt_tokens.shape[1]
        past_len = 0 if cache is None else cache.past_len
        # position P + t may look at positions 0 .. P + t: (T, P + T), broadcast over B and H
        causal = torch.ones(T, past_len + T, dtype=torch.bool, device=tgt_tokens.device)
        self_mask = causal.tril(diagonal=past_len)
        cross_mask = src_mask[:, None, None, :]  # (B, 1, 1, S)

        x = self._embed(self.tgt_embed, tgt_tokens, past_len)
        for i, layer in enumerate(self.decoder_layers):

            def self_segments(keys, values, i=i):
                if cache is not None:
                    keys, values = cache.update(i, keys, values)  # (B, H, P + T, Dh)
                return [(keys, values, self_mask)]

            x = layer(x, self_segments, cross_kv[i], cross_mask)
        return self.logits(x)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder stack's output (B, T, D) -> logits (B, T, V)."""
        return self.output_proj(self.decoder_norm(x))

    def decode_step(
        self,
        tgt_tokens: torch.Tensor,
        cross_kv: list[KeyValue],
        src_mask: torch.Tensor,
        cache: GrowingCache,
    ) -> torch.Tensor:
        """Log-probabilities (B, T, V) float32 of the next token; the cache grows by T."""
        return torch.log_softmax(self.decode(tgt_tokens, cross_kv, src_mask, cache).float(), -1)

    def new_cache(self) -> GrowingCache:
        return GrowingCache(self.config.n_decoder_layers)

    def forward(self, src_tokens: torch.Tensor, tgt_tokens: torch.Tensor) -> torch.Tensor:
        """Training path: logits (B, T, V) for teacher-forced target tokens (B, T)."""
        encoder_out = self.encode(src_tokens)
        return self.decode(
            tgt_tokens, self.cross_keys_values(encoder_out), self.source_mask(src_tokens)
        )
