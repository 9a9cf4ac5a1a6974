"""The exportable torch modules against the reference, before any ONNX is involved.

Run: pytest tests/export/test_graphs.py
"""

import pytest
import torch
from helpers import random_sources, tiny_model

from transduce.export.graphs import DecoderStepGraph, EncoderGraph
from transduce.model.precision import FP16, PrecisionPolicy, with_precision
from transduce.model.transformer import LayerNorm


@pytest.mark.parametrize("overrides", [{}, {"norm_first": True, "positions": "learned"}])
def test_step_graph_with_fixed_cache_equals_reference_decoding(overrides):
    """Slot writes into a fixed-capacity cache give the reference's growing-cache outputs."""
    model = tiny_model(seed=41, **overrides)
    src = random_sources(model, [6, 3, 8], seed=42)
    tgt = torch.randint(
        3, model.config.tgt_vocab_size, (3, 7), generator=torch.Generator().manual_seed(43)
    )
    n, H, Dh, L = model.config.n_decoder_layers, model.config.n_heads, model.config.head_dim, 9

    with torch.no_grad():
        src_mask, *cross = EncoderGraph(model)(src)
        step_graph = DecoderStepGraph(model, top_k=5)
        cache = [torch.full((3, H, L, Dh), 7.0) for _ in range(2 * n)]  # junk in unused slots
        reference_cache = model.new_cache()
        for step in range(tgt.shape[1]):
            outputs = step_graph(
                tgt[:, step : step + 1], torch.tensor([step]), src_mask, *cross, *cache
            )
            for slot, new in zip(cache, outputs[3:], strict=True):
                slot[:, :, step] = new[:, :, 0]
            expected = model.decode_step(
                tgt[:, step : step + 1],
                cross_kv=list(zip(cross[:n], cross[n:], strict=True)),
                src_mask=src_mask,
                cache=reference_cache,
            )[:, -1]

            log_probs, top_log_probs, top_ids = outputs[:3]
            torch.testing.assert_close(log_probs, expected, rtol=1e-5, atol=1e-5)
            values, ids = expected.topk(5)
            torch.testing.assert_close(top_log_probs, values, rtol=1e-5, atol=1e-5)
            assert torch.equal(top_ids, ids)
        # the new keys of the last step are the reference cache's last position
        torch.testing.assert_close(outputs[3][:, :, 0], reference_cache.keys[0][:, :, -1])


def test_encoder_graph_outputs_mask_and_every_layers_cross_kv():
    model = tiny_model(seed=44)
    src = random_sources(model, [4, 2], seed=45)
    with torch.no_grad():
        src_mask, *cross = EncoderGraph(model)(src)
        expected = model.cross_keys_values(model.encode(src))
    assert torch.equal(src_mask, src != model.config.pad_id)
    n = model.config.n_decoder_layers
    for i, (k, v) in enumerate(expected):
        assert torch.equal(cross[i], k) and torch.equal(cross[n + i], v)


def test_fp16_policy_keeps_layer_norm_in_fp32_and_leaves_the_original():
    model = tiny_model(seed=46)
    half = with_precision(model, FP16)
    norms = [m for m in half.modules() if isinstance(m, LayerNorm)]
    assert norms and all(m.compute_fp32 and m.weight.dtype == torch.float32 for m in norms)
    assert half.output_proj.weight.dtype == torch.float16
    assert model.output_proj.weight.dtype == torch.float32, "the original is untouched"

    plain = with_precision(model, PrecisionPolicy(dtype="float16", layer_norm_fp32=False))
    assert all(m.weight.dtype == torch.float16 for m in plain.modules() if isinstance(m, LayerNorm))


def test_fp16_model_is_close_to_fp32():
    model = tiny_model(seed=47)
    src = random_sources(model, [5, 7], seed=48)
    tgt = torch.tensor([[model.config.bos_id, 4, 5], [model.config.bos_id, 6, 7]])
    half = with_precision(model, FP16)
    with torch.no_grad():
        expected = model(src, tgt).log_softmax(-1)
        actual = half(src, tgt).float().log_softmax(-1)
    torch.testing.assert_close(actual, expected, atol=2e-2, rtol=1e-2)


def test_unknown_precision_is_refused():
    with pytest.raises(
        ValueError, match=r"dtype must be one of \['float16', 'float32'\], got 'bf16'"
    ):
        PrecisionPolicy(dtype="bf16")
