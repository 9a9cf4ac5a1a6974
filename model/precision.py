"""The precision policy: which parts of a half-precision model still compute in FP32.

TensorRT 11 builds FP16 engines only from graphs that carry their precision (strong typing),
so the FP16 ONNX graph is exported from a half-precision copy of the model whose code casts
up where the policy says. In an FP32 model every such cast is a no-op and leaves no trace.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch

from transduce.model.transformer import LayerNorm, MultiHeadAttention, Transformer

DTYPES = {"float32": torch.float32, "float16": torch.float16}


@dataclass(frozen=True)
class PrecisionPolicy:
    """Where a model computes and what it keeps in FP32.

    The output log-softmax is always FP32 (the graphs' log-probabilities are FP32 in every
    policy), and token ids are always int64.
    """

    dtype: str = "float32"  # the precision of weights, activations and the cache
    layer_norm_fp32: bool = True  # LayerNorm statistics and affine weights in FP32
    softmax_fp32: bool = True  # attention scores, mask and softmax in FP32

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def to_dict(self) -> dict:
        return asdict(self)


FP32 = PrecisionPolicy()
FP16 = PrecisionPolicy(dtype="float16")


def with_precision(model: Transformer, policy: PrecisionPolicy) -> Transformer:
    """A copy of `model` in the policy's dtype, with its FP32 islands; the original is kept."""
    model = copy.deepcopy(model).to(policy.torch_dtype).eval()
    low_precision = policy.dtype != "float32"
    for module in model.modules():
        if isinstance(module, LayerNorm):
            module.compute_fp32 = low_precision and policy.layer_norm_fp32
            if module.compute_fp32:
                module.float()
        elif isinstance(module, MultiHeadAttention):
            module.softmax_fp32 = low_precision and policy.softmax_fp32
    return model
