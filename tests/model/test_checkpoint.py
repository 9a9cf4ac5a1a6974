"""Checkpoints: exact round trip, atomic replacement, and every mismatch reported at once.

Run: pytest tests/model/test_checkpoint.py
"""

import json

import pytest
import torch
from helpers import random_sources, tiny_model
from safetensors.torch import load_file, save_file

from transduce.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from transduce.model.demo import demo_tokenizer
from transduce.text import VocabTokenizer


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {
            "tie_output": True,
            "share_embeddings": True,
            "tgt_vocab_size": 61,
            "positions": "learned",
        },
    ],
)
def test_round_trip_is_exact(tmp_path, overrides):
    model = tiny_model(seed=31, **overrides)
    save_checkpoint(model, tmp_path / "ckpt", demo_tokenizer())
    loaded = load_checkpoint(tmp_path / "ckpt")

    assert loaded.config == model.config
    for (name, a), (_, b) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    if model.config.tie_output:
        assert loaded.output_proj.weight is loaded.tgt_embed.weight
    src = random_sources(model, [5, 3])
    with torch.no_grad():
        assert torch.equal(model.encode(src), loaded.encode(src))
    assert VocabTokenizer.load(tmp_path / "ckpt").tokens == demo_tokenizer().tokens


def test_tied_weights_are_stored_once(tmp_path):
    model = tiny_model(tie_output=True, share_embeddings=True, tgt_vocab_size=61)
    save_checkpoint(model, tmp_path / "ckpt")
    names = set(load_file(tmp_path / "ckpt" / "model.safetensors"))
    assert "tgt_embed.weight" in names
    assert not names & {"output_proj.weight", "src_embed.weight"}


def test_saving_over_a_checkpoint_replaces_it_whole(tmp_path):
    save_checkpoint(tiny_model(seed=1), tmp_path / "ckpt")
    second = tiny_model(seed=2)
    save_checkpoint(second, tmp_path / "ckpt")
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert torch.equal(loaded.tgt_embed.weight, second.tgt_embed.weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"], "no staging leftovers"


def test_every_weight_mismatch_is_reported(tmp_path):
    model = tiny_model()
    save_checkpoint(model, tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "model.safetensors"
    state = load_file(weights)
    del state["encoder_layers.0.ffn.up.weight"]
    state["decoder_layers.1.ffn.down.bias"] = torch.zeros(7)
    state["extra.weight"] = torch.zeros(2)
    save_file(state, weights)

    with pytest.raises(
        CheckpointError, match=r"does not match its config.json \(3 problems\)"
    ) as e:
        load_checkpoint(tmp_path / "ckpt")
    message = str(e.value)
    assert "missing weight encoder_layers.0.ffn.up.weight (64, 32)" in message
    assert "unexpected weight extra.weight" in message
    assert "decoder_layers.1.ffn.down.bias has shape (7,), config.json implies (32,)" in message


def test_config_from_another_model_is_refused(tmp_path):
    save_checkpoint(tiny_model(), tmp_path / "ckpt")
    config_path = tmp_path / "ckpt" / "config.json"
    config = json.loads(config_path.read_text())
    config["d_ff"] = 128
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"ffn.up.weight has shape \(64, 32\)"):
        load_checkpoint(tmp_path / "ckpt")


def test_corrupted_weights_file_gives_a_clear_error(tmp_path):
    save_checkpoint(tiny_model(), tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="is not a readable safetensors file"):
        load_checkpoint(tmp_path / "ckpt")


def test_missing_or_invalid_config(tmp_path):
    with pytest.raises(CheckpointError, match="config.json does not exist"):
        load_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="is not a valid model config"):
        load_checkpoint(tmp_path)
