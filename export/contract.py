"""The graph contract: tensor names, dynamic axes and what each graph computes.

One module names everything so that export, the runtime backends, engine profiles, logs and
error messages use the same words. The runtime does not import this module (it must not
depend on export/); it reads the names from the manifest written beside the graphs.

Encoder graph (once per request):
    in:  src_tokens      (batch, src_len) int64, right-padded with pad_id
    out: src_mask        (batch, src_len) bool, True at real tokens
         cross_keys.i    (batch, heads, src_len, head_dim)  one per decoder layer i
         cross_values.i  (batch, heads, src_len, head_dim)

Decoder step graph (once per generated token):
    in:  tgt_tokens      (batch, 1) int64, the last token of every row
         position        (1,) int64, P = how many target tokens the cache holds
         src_mask, cross_keys.i, cross_values.i   as the encoder produced them
         cache_keys.i    (batch, heads, capacity, head_dim), slots >= P are ignored
         cache_values.i  (batch, heads, capacity, head_dim)
    out: log_probs       (batch, vocab) float32, of the next token
         top_log_probs   (batch, top_k) float32, the top_k largest log_probs, descending
         top_ids         (batch, top_k) int64, their token ids
         new_keys.i      (batch, heads, 1, head_dim), to be written into cache slot P
         new_values.i    (batch, heads, 1, head_dim)

The cache has a fixed capacity: the graph never grows or copies it (see docs/DESIGN.md for
the measurements behind this), and no tensor is ever zero-length (capacity >= 1; at P = 0
every slot is masked).
"""

from __future__ import annotations

# dynamic axes, by word; the same words appear in engine profiles and in error messages
BATCH, SRC_LEN, CAPACITY = "batch", "src_len", "capacity"

SRC_TOKENS, SRC_MASK = "src_tokens", "src_mask"
TGT_TOKENS, POSITION = "tgt_tokens", "position"
LOG_PROBS, TOP_LOG_PROBS, TOP_IDS = "log_probs", "top_log_probs", "top_ids"


def cross_names(n_layers: int) -> list[str]:
    return [f"cross_keys.{i}" for i in range(n_layers)] + [
        f"cross_values.{i}" for i in range(n_layers)
    ]


def cache_names(n_layers: int) -> list[str]:
    return [f"cache_keys.{i}" for i in range(n_layers)] + [
        f"cache_values.{i}" for i in range(n_layers)
    ]


def new_kv_names(n_layers: int) -> list[str]:
    return [f"new_keys.{i}" for i in range(n_layers)] + [f"new_values.{i}" for i in range(n_layers)]


def encoder_io(n_layers: int) -> tuple[list[str], list[str]]:
    """(input names, output names) of the encoder graph."""
    return [SRC_TOKENS], [SRC_MASK, *cross_names(n_layers)]


def decoder_io(n_layers: int) -> tuple[list[str], list[str]]:
    """(input names, output names) of the decoder step graph."""
    inputs = [TGT_TOKENS, POSITION, SRC_MASK, *cross_names(n_layers), *cache_names(n_layers)]
    outputs = [LOG_PROBS, TOP_LOG_PROBS, TOP_IDS, *new_kv_names(n_layers)]
    return inputs, outputs
