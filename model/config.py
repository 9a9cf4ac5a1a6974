"""The model configuration: one frozen dataclass, a few named presets."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

ACTIVATIONS = ("relu", "gelu", "silu")
POSITIONS = ("sinusoidal", "learned")
# "interleaved": sin at even, cos at odd channels (the paper). "halves": sin in the first half of
# the channels and cos in the second (Marian / fairseq layout).
SINUSOID_LAYOUTS = ("interleaved", "halves")


@dataclass(frozen=True)
class ModelConfig:
    """Sizes and architectural options of the encoder-decoder. Everything else derives from these.

    The defaults are the paper's "base" model. Options cover what real checkpoints differ in;
    invalid combinations are rejected when the config is made, all reasons at once.
    """

    src_vocab_size: int = 32_000  # V on the encoder side
    tgt_vocab_size: int = 32_000  # V on the decoder side (the output layer's width)
    d_model: int = 512  # D, width of the residual stream
    n_heads: int = 8  # H
    d_ff: int = 2048  # F, feed-forward hidden width
    n_encoder_layers: int = 6  # Le
    n_decoder_layers: int = 6  # Ld
    max_positions: int = 512  # upper bound for S and for P + T
    dropout: float = 0.1  # training only; inference is always eval()
    activation: str = "relu"  # feed-forward nonlinearity, one of ACTIVATIONS
    norm_first: bool = False  # False: LayerNorm(x + f(x)) (paper); True: x + f(LayerNorm(x))
    # a LayerNorm after the last layer of each stack; None: exactly when norm_first.
    # torch.nn.Transformer always has one, post-norm included
    final_norm: bool | None = None
    layer_norm_eps: float = 1e-5
    positions: str = "sinusoidal"  # one of POSITIONS
    sinusoid_layout: str = "interleaved"  # one of SINUSOID_LAYOUTS
    scale_embeddings: bool = True  # multiply token embeddings by sqrt(D), as in the paper
    share_embeddings: bool = False  # one embedding table for source and target
    tie_output: bool = True  # output projection reuses the target embedding matrix
    output_bias: bool = False  # a bias on the output projection (Marian's final_logits_bias)
    pad_id: int = 0
    bos_id: int = 1  # the first target token; Marian starts from pad instead
    eos_id: int = 2

    @property
    def head_dim(self) -> int:  # Dh
        return self.d_model // self.n_heads

    @property
    def has_final_norm(self) -> bool:
        """Whether each stack ends with a LayerNorm (`final_norm`, resolved)."""
        return self.norm_first if self.final_norm is None else self.final_norm

    def __post_init__(self) -> None:
        problems = []
        if self.d_model % self.n_heads:
            problems.append(
                f"d_model ({self.d_model}) is not divisible by n_heads ({self.n_heads}); pick "
                "n_heads among the divisors of d_model"
            )
        for name in ("src_vocab_size", "tgt_vocab_size", "d_model", "n_heads", "d_ff"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("n_encoder_layers", "n_decoder_layers"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_positions < 2:
            problems.append(f"max_positions must be at least 2, got {self.max_positions}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        for name, allowed in (
            ("activation", ACTIVATIONS),
            ("positions", POSITIONS),
            ("sinusoid_layout", SINUSOID_LAYOUTS),
        ):
            if getattr(self, name) not in allowed:
                problems.append(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.share_embeddings and self.src_vocab_size != self.tgt_vocab_size:
            problems.append(
                f"share_embeddings needs one vocabulary, but src_vocab_size "
                f"({self.src_vocab_size}) != tgt_vocab_size ({self.tgt_vocab_size}); "
                "set share_embeddings=False"
            )
        for name in ("pad_id", "bos_id", "eos_id"):
            value = getattr(self, name)
            if not 0 <= value < min(self.src_vocab_size, self.tgt_vocab_size):
                problems.append(
                    f"{name} ({value}) must be a valid id in both vocabularies "
                    f"(0 <= id < {min(self.src_vocab_size, self.tgt_vocab_size)})"
                )
        if self.eos_id in (self.pad_id, self.bos_id):
            problems.append(f"eos_id ({self.eos_id}) must differ from pad_id and bos_id")
        if problems:
            raise ValueError("invalid ModelConfig:\n" + "\n".join(f"  - {p}" for p in problems))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        """Build a config from a dict, rejecting unknown keys by name."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"config has unknown keys {unknown}; known keys are {sorted(known)} "
                "(was the checkpoint written by a newer transduce?)"
            )
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"


PRESETS: dict[str, ModelConfig] = {
    # For tests: tiny and fast, yet every code path (several layers, several heads) is exercised.
    "tiny": ModelConfig(
        src_vocab_size=61,
        tgt_vocab_size=67,
        d_model=32,
        n_heads=4,
        d_ff=64,
        n_encoder_layers=2,
        n_decoder_layers=2,
        max_positions=64,
        dropout=0.0,
        tie_output=False,
    ),
    # The paper's base model (Vaswani et al. 2017, table 3).
    "base": ModelConfig(),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """A named preset, optionally with fields replaced."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)
