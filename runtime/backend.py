"""The backend interface: what the generation loop needs from an engine, and nothing more.

A backend owns the two graphs (or engines) of one model. For each request it starts a
`DecodeSession`: the encoder runs once, the cross-attention keys and values and the
self-attention cache stay wherever the backend keeps tensors (host memory for ONNX Runtime on
the CPU, device memory for TensorRT), and each step returns only small host arrays.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ModelInfo:
    """What the loop must know about a model, read from an export manifest."""

    src_vocab_size: int
    tgt_vocab_size: int
    n_layers: int  # Ld, decoder layers
    n_heads: int  # H
    head_dim: int  # Dh
    max_positions: int  # limit for S and for the number of target positions
    top_k: int  # width of the decoder graph's top_ids / top_log_probs outputs
    pad_id: int
    bos_id: int
    eos_id: int
    cache_dtype: str  # numpy dtype name of the cache and the cross keys/values

    @classmethod
    def from_model_config(cls, model: dict, *, top_k: int, cache_dtype: str) -> ModelInfo:
        """From a model config as a dict (config.json, or a manifest's "model")."""
        return cls(
            src_vocab_size=model["src_vocab_size"],
            tgt_vocab_size=model["tgt_vocab_size"],
            n_layers=model["n_decoder_layers"],
            n_heads=model["n_heads"],
            head_dim=model["d_model"] // model["n_heads"],
            max_positions=model["max_positions"],
            top_k=top_k,
            pad_id=model["pad_id"],
            bos_id=model["bos_id"],
            eos_id=model["eos_id"],
            cache_dtype=cache_dtype,
        )

    @classmethod
    def from_manifest(cls, manifest: dict) -> ModelInfo:
        return cls.from_model_config(
            manifest["model"], top_k=manifest["top_k"], cache_dtype=manifest["precision"]["dtype"]
        )


@dataclass(frozen=True)
class StepResult:
    """What one decoder step hands back to the loop (host arrays)."""

    top_log_probs: np.ndarray  # (B, top_k) float32, descending
    top_ids: np.ndarray  # (B, top_k) int64
    log_probs: np.ndarray | None  # (B, V) float32, only when the step was asked for it


class DecodeSession(abc.ABC):
    """The state of one request: encoder results and the self-attention cache.

    Rows: each source row appears `beams` times in a row (row r, beam k is row r * beams + k).
    """

    batch: int  # B, rows including beams
    capacity: int  # L, target positions the cache can hold
    encode_seconds: float  # wall time of the encoder run

    @abc.abstractmethod
    def step(self, tokens: np.ndarray, position: int, *, full: bool = False) -> StepResult:
        """Run the decoder on tokens (B,) int64 at target position P = `position`.

        Attends over the cache slots 0 .. P-1 and writes this step's keys and values into slot
        P. With `full`, the (B, V) log-probabilities are returned too.
        """

    @abc.abstractmethod
    def reorder(self, rows: np.ndarray) -> None:
        """Make row b continue from row rows[b] ((B,) int64): beam search's reordering.

        Applies to the cache and to nothing else (the encoder results of a source row are the
        same for all its beams).
        """


class Backend(abc.ABC):
    """Runs one model's encoder and decoder-step graphs."""

    name: str
    info: ModelInfo

    @abc.abstractmethod
    def start(self, src_tokens: np.ndarray, *, beams: int, capacity: int) -> DecodeSession:
        """Encode src_tokens (R, S) int64 and return a session with R * beams rows."""

    def limits(self) -> dict[str, int]:
        """The largest batch (rows incl. beams), source length and capacity it accepts."""
        return {
            "batch": 2**31 - 1,
            "src_len": self.info.max_positions,
            "capacity": self.info.max_positions,
        }
