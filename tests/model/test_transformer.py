"""The reference model's own consistency: cached vs full decoding, padding, masks.

Run: pytest tests/model/test_transformer.py
"""

import pytest
import torch
from helpers import random_sources, tiny_model

VARIANTS = {
    "post-norm": {},
    "pre-norm-gelu-learned": {"norm_first": True, "activation": "gelu", "positions": "learned"},
    "tied-shared-silu-halves": {
        "tie_output": True,
        "share_embeddings": True,
        "tgt_vocab_size": 61,
        "activation": "silu",
        "sinusoid_layout": "halves",
        "output_bias": True,
        "scale_embeddings": False,
    },
}


def _full_log_probs(model, src, tgt):
    cross_kv = model.cross_keys_values(model.encode(src))
    return torch.log_softmax(model.decode(tgt, cross_kv, model.source_mask(src)), -1)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("chunk", [1, 3])
def test_cached_steps_equal_full_recomputation(variant, chunk):
    """Feeding the target `chunk` tokens at a time through the cache gives the full-pass output."""
    model = tiny_model(seed=1, **VARIANTS[variant])
    src = random_sources(model, [7, 4, 9], seed=2)
    generator = torch.Generator().manual_seed(3)
    tgt = torch.randint(3, model.config.tgt_vocab_size, (3, 10), generator=generator)

    with torch.no_grad():
        expected = _full_log_probs(model, src, tgt)
        cross_kv = model.cross_keys_values(model.encode(src))
        cache = model.new_cache()
        steps = [
            model.decode_step(tgt[:, i : i + chunk], cross_kv, model.source_mask(src), cache)
            for i in range(0, tgt.shape[1], chunk)
        ]
    actual = torch.cat(steps, dim=1)
    assert cache.past_len == tgt.shape[1]
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(actual.argmax(-1), expected.argmax(-1))


def test_padded_batch_equals_rows_alone():
    model = tiny_model(seed=4)
    lengths = [3, 11, 6]
    src = random_sources(model, lengths, seed=5)
    tgt = torch.randint(
        3, model.config.tgt_vocab_size, (3, 5), generator=torch.Generator().manual_seed(6)
    )
    with torch.no_grad():
        batched = _full_log_probs(model, src, tgt)
        for row, length in enumerate(lengths):
            alone = _full_log_probs(model, src[row : row + 1, :length], tgt[row : row + 1])
            torch.testing.assert_close(batched[row : row + 1], alone, rtol=1e-5, atol=1e-5)


def test_padding_content_cannot_change_the_output():
    """No position attends to padding: rewriting the padded slots changes nothing."""
    model = tiny_model(seed=7)
    src = random_sources(model, [4, 8], seed=8)
    tgt = torch.randint(
        3, model.config.tgt_vocab_size, (2, 6), generator=torch.Generator().manual_seed(9)
    )
    with torch.no_grad():
        expected = _full_log_probs(model, src, tgt)
        encoder_out = model.encode(src)

        # the same mask, other embeddings behind it: replace the pad token's embedding row
        model.src_embed.weight.data[model.config.pad_id].normal_()
        perturbed = _full_log_probs(model, src, tgt)
    torch.testing.assert_close(perturbed, expected, rtol=0, atol=1e-6)
    # the real positions of the encoder output are unchanged too
    with torch.no_grad():
        encoder_after = model.encode(src)
    torch.testing.assert_close(encoder_after[0, :4], encoder_out[0, :4], rtol=0, atol=1e-6)


def test_no_target_position_sees_the_future():
    """Changing target token t leaves the outputs at positions before t unchanged."""
    model = tiny_model(seed=10)
    src = random_sources(model, [6, 6], seed=11)
    tgt = torch.randint(
        3, model.config.tgt_vocab_size, (2, 8), generator=torch.Generator().manual_seed(12)
    )
    changed = tgt.clone()
    changed[:, 5] = (tgt[:, 5] + 1) % model.config.tgt_vocab_size
    with torch.no_grad():
        before, after = _full_log_probs(model, src, tgt), _full_log_probs(model, src, changed)
    torch.testing.assert_close(after[:, :5], before[:, :5], rtol=0, atol=0)
    assert not torch.allclose(after[:, 5:], before[:, 5:])


def test_cross_attention_reads_the_source():
    """A different source changes the decoder output (cross-attention is wired to the encoder)."""
    model = tiny_model(seed=13)
    tgt = torch.tensor([[model.config.bos_id, 5, 6]])
    with torch.no_grad():
        a = _full_log_probs(model, random_sources(model, [5], seed=14), tgt)
        b = _full_log_probs(model, random_sources(model, [5], seed=15), tgt)
    assert not torch.allclose(a, b)


def test_tied_output_shares_the_embedding_matrix():
    model = tiny_model(tie_output=True, share_embeddings=True, tgt_vocab_size=61)
    assert model.output_proj.weight is model.tgt_embed.weight
    assert model.src_embed is model.tgt_embed
