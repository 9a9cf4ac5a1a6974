"""ModelConfig: presets, validation messages, dict round trip.

Run: pytest tests/model/test_config.py
"""

import pytest

from transduce.model.config import PRESETS, ModelConfig, preset


def test_base_preset_is_the_paper_base_model():
    base = PRESETS["base"]
    assert (base.d_model, base.n_heads, base.d_ff) == (512, 8, 2048)
    assert (base.n_encoder_layers, base.n_decoder_layers) == (6, 6)
    assert base.head_dim == 64


def test_every_problem_is_reported_at_once():
    with pytest.raises(ValueError, match="invalid ModelConfig") as error:
        ModelConfig(d_model=30, n_heads=4, activation="tanh", dropout=1.5)
    message = str(error.value)
    assert "d_model (30) is not divisible by n_heads (4)" in message
    assert "activation must be one of" in message and "'tanh'" in message
    assert "dropout must be in [0, 1), got 1.5" in message


def test_shared_embeddings_need_one_vocabulary():
    with pytest.raises(ValueError, match=r"src_vocab_size \(100\) != tgt_vocab_size \(120\)"):
        ModelConfig(src_vocab_size=100, tgt_vocab_size=120, share_embeddings=True)


def test_special_ids_must_fit_both_vocabularies():
    with pytest.raises(ValueError, match=r"eos_id \(70\) must be a valid id"):
        preset("tiny", eos_id=70)


def test_eos_must_differ_from_pad():
    with pytest.raises(ValueError, match=r"eos_id \(0\) must differ"):
        preset("tiny", eos_id=0)


def test_dict_round_trip_and_unknown_keys():
    config = preset("tiny", norm_first=True, activation="gelu")
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match=r"unknown keys \['n_layers'\]"):
        ModelConfig.from_dict({**config.to_dict(), "n_layers": 3})


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown preset 'huge'.*'base'"):
        preset("huge")
