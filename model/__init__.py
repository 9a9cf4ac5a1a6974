"""The PyTorch reference of the encoder-decoder Transformer and its golden decoders.

One shape alphabet is used in every comment, docstring, log line and test id of transduce:

    B   batch (rows; beams count as rows)   S   source length
    T   target positions in this call        P   target positions already in the cache
    L   cache capacity (fixed-size caches)   K   beams per source row
    D   d_model      H   heads      Dh  head width = D // H
    F   feed-forward width            V   vocabulary
    Le / Ld   encoder / decoder layers
"""

from transduce.model.config import PRESETS, ModelConfig
from transduce.model.transformer import Transformer

__all__ = ["PRESETS", "ModelConfig", "Transformer"]
