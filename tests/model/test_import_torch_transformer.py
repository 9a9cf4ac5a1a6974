"""Importing torch.nn.Transformer-based models: the import computes what the original computes.

Small seeded models with the documented layout (embeddings, positions, nn.Transformer,
generator) are saved with torch.save or safetensors and imported; logits and greedy tokens must
equal the original's own forward pass.

Run: pytest tests/model/test_import_torch_transformer.py
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from transduce.cli import main as transduce_main
from transduce.model.checkpoint import load_checkpoint
from transduce.model.golden import greedy
from transduce.model.import_marian import ModelImportError
from transduce.model.import_torch_transformer import model_from_torch_transformer

pytestmark = [
    # nn.TransformerEncoder on its nested-tensor fast path, and why pre-norm layers skip it
    pytest.mark.filterwarnings("ignore:enable_nested_tensor is True"),
    pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors"),
]

PAD, BOS, EOS = 0, 1, 2
SETTINGS = {"n_heads": 4, "pad_id": PAD, "bos_id": BOS, "eos_id": EOS}


class TutorialPositions(nn.Module):
    """PyTorch's translation tutorial: a persistent float32 sinusoid buffer, (N, 1, D)."""

    def __init__(self, d_model: int, max_len: int = 5000, persistent: bool = True) -> None:
        super().__init__()
        rates = torch.exp(-torch.arange(0, d_model, 2) * math.log(10000) / d_model)
        positions = torch.arange(0, max_len).reshape(max_len, 1)
        table = torch.zeros((max_len, d_model))
        table[:, 0::2] = torch.sin(positions * rates)
        table[:, 1::2] = torch.cos(positions * rates)
        self.register_buffer("pos_embedding", table.unsqueeze(-2), persistent=persistent)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, N, D)
        return x + self.pos_embedding[: x.shape[1], 0]


class LearnedPositions(nn.Module):
    def __init__(self, d_model: int, max_len: int = 64) -> None:
        super().__init__()
        self.table = nn.Embedding(max_len, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.table.weight[: x.shape[1]]


class TokenEmbedding(nn.Module):
    """The tutorial's embedding, scaled by sqrt(D); it nests the table as `.embedding`."""

    def __init__(self, vocab_size: int, d_model: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.scale = math.sqrt(d_model)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.embedding(tokens) * self.scale


class Seq2Seq(nn.Module):
    """The layout the importer documents; `names` renames the parts, as users' models do."""

    def __init__(
        self,
        *,
        src_vocab_size: int = 41,
        tgt_vocab_size: int = 47,
        positions: str = "buffer",
        share: bool = False,
        tie: bool = False,
        generator_bias: bool = True,
        names: dict[str, str] | None = None,
        **transformer_options,
    ) -> None:
        super().__init__()
        d_model = 32
        self.names = {
            "src_embed": "src_embed",
            "tgt_embed": "tgt_embed",
            "pos": "pos",
            "transformer": "transformer",
            "generator": "generator",
            **(names or {}),
        }
        src_embed = TokenEmbedding(src_vocab_size, d_model)
        tgt_embed = src_embed if share else TokenEmbedding(tgt_vocab_size, d_model)
        pos = {
            "buffer": lambda: TutorialPositions(d_model),
            "computed": lambda: TutorialPositions(d_model, persistent=False),
            "learned": lambda: LearnedPositions(d_model),
        }[positions]()
        transformer = nn.Transformer(
            d_model,
            nhead=4,
            num_encoder_layers=2,
            num_decoder_layers=3,
            dim_feedforward=64,
            dropout=0.0,
            batch_first=True,
            **transformer_options,
        )
        generator = nn.Linear(d_model, tgt_embed.embedding.num_embeddings, bias=generator_bias)
        if tie:
            generator.weight = tgt_embed.embedding.weight
        for part, module in (
            ("src_embed", src_embed),
            ("tgt_embed", tgt_embed),
            ("pos", pos),
            ("transformer", transformer),
            ("generator", generator),
        ):
            self.add_module(self.names[part].split(".")[0], module)

        # random norms and biases, so that a mix-up in the mapping cannot go unnoticed
        with torch.no_grad():
            for name, param in self.named_parameters():
                if param.dim() == 1:
                    base = 1.0 if "norm" in name and name.endswith("weight") else 0.0
                    param.copy_(base + 0.1 * torch.randn_like(param))

    def part(self, name: str) -> nn.Module:
        return getattr(self, self.names[name].split(".")[0])

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        pos, padding = self.part("pos"), src == PAD
        causal = nn.Transformer.generate_square_subsequent_mask(tgt.shape[1])
        hidden = self.part("transformer")(
            pos(self.part("src_embed")(src)),
            pos(self.part("tgt_embed")(tgt)),
            tgt_mask=causal,
            src_key_padding_mask=padding,
            memory_key_padding_mask=padding,
            tgt_is_causal=True,
        )
        return self.part("generator")(hidden)

    def prefixes(self) -> dict[str, str]:
        """The `prefixes` argument for this model: the tables' paths (the tutorial nests them)."""
        return {
            **self.names,
            "src_embed": self.names["src_embed"] + ".embedding",
            "tgt_embed": self.names["tgt_embed"] + ".embedding",
        }


VARIANTS = {
    # post-norm relu, the tutorial's names and stored float32 sinusoids, separate vocabularies
    "tutorial": (
        {"names": {"src_embed": "src_tok_emb", "tgt_embed": "tgt_tok_emb", "pos": "positional"}},
        {},
    ),
    "pre-norm-gelu-learned-shared-tied": (
        {
            "positions": "learned",
            "share": True,
            "tie": True,
            "tgt_vocab_size": 41,
            "generator_bias": False,
            "norm_first": True,
            "activation": "gelu",
        },
        {"norm_first": True, "activation": "gelu"},
    ),
    # bias=False drops every bias (LayerNorms too); sinusoids computed, not stored
    "no-bias-silu-computed-positions": (
        {"positions": "computed", "bias": False, "activation": nn.functional.silu},
        {"activation": "silu", "max_positions": 64},
    ),
}


def original_and_settings(variant: str, seed: int = 0) -> tuple[Seq2Seq, dict]:
    options, settings = VARIANTS[variant]
    torch.manual_seed(seed)
    return Seq2Seq(**options).eval(), {**SETTINGS, **settings}


def padded_sources(lengths: list[int], vocab_size: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    rows = torch.full((len(lengths), max(lengths)), PAD, dtype=torch.long)
    for row, length in enumerate(lengths):
        rows[row, : length - 1] = torch.randint(3, vocab_size, (length - 1,), generator=generator)
        rows[row, length - 1] = EOS
    return rows


def own_greedy(model: Seq2Seq, src: torch.Tensor, max_new_tokens: int) -> list[list[int]]:
    """Greedy decoding with the original model's forward pass, recomputed every step."""
    prefixes = torch.full((src.shape[0], 1), BOS)
    for _ in range(max_new_tokens):
        best = model(src, prefixes)[:, -1].argmax(-1, keepdim=True)
        prefixes = torch.cat([prefixes, best], dim=1)
    rows = [row[1:].tolist() for row in prefixes]
    return [row[: row.index(EOS) + 1] if EOS in row else row for row in rows]


@pytest.fixture(params=list(VARIANTS))
def variant(request):
    return request.param


def test_imported_model_computes_what_the_original_computes(variant, tmp_path):
    original, settings = original_and_settings(variant)
    path = tmp_path / "model.pt"
    torch.save(original.state_dict(), path)
    model = model_from_torch_transformer(path, settings, prefixes=original.prefixes())

    assert model.config.has_final_norm, "nn.Transformer ends each stack with a LayerNorm"
    src = padded_sources([7, 3, 11, 1], model.config.src_vocab_size, seed=1)
    generator = torch.Generator().manual_seed(2)
    tgt = torch.randint(3, model.config.tgt_vocab_size, (4, 9), generator=generator)
    tgt[:, 0] = BOS
    with torch.no_grad():
        expected, actual = original(src, tgt), model(src, tgt)
        # measured max abs diff 7.6e-6 (the pre-norm variant, logits up to 42), 7e-7 for the
        # others (torch 2.13 CPU; under no_grad nn.Transformer may take its fused fast path)
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=2e-5)
        hypotheses = greedy(model, src, 10)
        assert [h.tokens for h in hypotheses] == own_greedy(original, src, 10)


def test_configs_read_from_the_weights():
    original, settings = original_and_settings("pre-norm-gelu-learned-shared-tied")
    config = model_from_torch_transformer(
        original.state_dict(), settings, prefixes=original.prefixes()
    ).config
    assert (config.src_vocab_size, config.d_model, config.d_ff) == (41, 32, 64)
    assert (config.n_encoder_layers, config.n_decoder_layers) == (2, 3)
    assert config.share_embeddings and config.tie_output and not config.output_bias
    assert (config.positions, config.max_positions) == ("learned", 64)

    original, settings = original_and_settings("tutorial")
    config = model_from_torch_transformer(
        original.state_dict(), settings, prefixes=original.prefixes()
    ).config
    assert (config.src_vocab_size, config.tgt_vocab_size, config.max_positions) == (41, 47, 5000)
    assert not config.share_embeddings and not config.tie_output and config.output_bias
    assert (config.activation, config.norm_first, config.final_norm) == ("relu", False, True)


def test_stored_sinusoids_can_be_checked_instead_of_imported(tmp_path):
    """With positions="sinusoidal" the tutorial's float32 table is checked and not stored."""
    original, settings = original_and_settings("tutorial")
    settings = {**settings, "positions": "sinusoidal"}
    model = model_from_torch_transformer(
        original.state_dict(), settings, prefixes=original.prefixes()
    )
    assert not hasattr(model, "pos_embed") and model.config.max_positions == 5000

    src = padded_sources([5, 2], model.config.src_vocab_size, seed=3)
    tgt = torch.full((2, 4), BOS)
    with torch.no_grad():
        torch.testing.assert_close(model(src, tgt), original(src, tgt), rtol=1e-5, atol=2e-5)

    with pytest.raises(ModelImportError, match="is not transduce's sinusoid table"):
        model_from_torch_transformer(
            original.state_dict(),
            {**settings, "sinusoid_layout": "halves"},
            prefixes=original.prefixes(),
        )


def test_safetensors_with_tied_copies(tmp_path):
    original, settings = original_and_settings("pre-norm-gelu-learned-shared-tied")
    # safetensors stores no aliases: every tied name becomes its own (equal) tensor
    state = {name: t.clone().contiguous() for name, t in original.state_dict().items()}
    save_file(state, tmp_path / "model.safetensors")
    model = model_from_torch_transformer(
        tmp_path / "model.safetensors", settings, prefixes=original.prefixes()
    )
    assert model.config.share_embeddings and model.config.tie_output
    src = padded_sources([4, 6], 41, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(model(src, src), original(src, src), rtol=1e-5, atol=2e-5)


def test_every_problem_is_reported_at_once():
    original, _ = original_and_settings("tutorial")
    with pytest.raises(ModelImportError, match=r"state dict \(5 problems\)") as error:
        model_from_torch_transformer(original.state_dict(), {"n_heads": 4, "d_model": 64})
    message = str(error.value)
    for key in ("pad_id", "bos_id", "eos_id"):
        assert f"settings lack '{key}'" in message
    assert "missing weight src_embed.weight (the src_embed table); set prefixes['src_embed']" in (
        message
    )
    assert "missing weight tgt_embed.weight" in message


def test_weights_outside_the_layout_are_unexpected():
    original, settings = original_and_settings("tutorial")
    state = dict(original.state_dict())
    state["transformer.encoder.layers.0.extra_norm.weight"] = torch.ones(32)
    state["layernorm_embedding.weight"] = torch.ones(32)
    del state["transformer.decoder.layers.2.multihead_attn.in_proj_bias"]
    with pytest.raises(ModelImportError, match=r"\(4 problems\)") as error:
        model_from_torch_transformer(state, {**settings, "d_ff": 128}, prefixes=original.prefixes())
    message = str(error.value)
    assert "unexpected weight transformer.encoder.layers.0.extra_norm.weight (32,)" in message
    assert "unexpected weight layernorm_embedding.weight (32,)" in message
    assert "missing weight transformer.decoder.layers.2.multihead_attn.in_proj_bias (96,)" in (
        message
    )
    assert "settings say d_ff=128, the weights say 64" in message


def test_a_checkpoint_with_several_entries_needs_its_key(tmp_path):
    original, settings = original_and_settings("tutorial")
    path = tmp_path / "training.pt"
    torch.save({"model": original.state_dict(), "step": 1200}, path)
    with pytest.raises(ModelImportError, match=r"name the entry that does with state_key"):
        model_from_torch_transformer(path, settings, prefixes=original.prefixes())
    model = model_from_torch_transformer(
        path, settings, prefixes=original.prefixes(), state_key="model"
    )
    assert model.config.d_model == 32


def test_import_command(tmp_path):
    original, settings = original_and_settings("tutorial", seed=4)
    torch.save(original.state_dict(), tmp_path / "model.pt")
    (tmp_path / "settings.json").write_text(json.dumps(settings))
    prefixes = [f"--prefix={part}={prefix}" for part, prefix in original.prefixes().items()]
    argv = ["import", "torch-transformer", str(tmp_path / "model.pt")]
    argv += ["--config", str(tmp_path / "settings.json"), "--output", str(tmp_path / "ck")]
    assert transduce_main(argv + prefixes) == 0

    model = load_checkpoint(tmp_path / "ck")
    src = padded_sources([6, 2, 9], model.config.src_vocab_size, seed=7)
    with torch.no_grad():
        torch.testing.assert_close(model(src, src), original(src, src), rtol=1e-5, atol=2e-5)


def test_import_command_rejects_a_malformed_prefix(tmp_path, caplog):
    argv = ["import", "torch-transformer", "x.pt", "--config", "c.json", "--output", "ck"]
    (tmp_path / "c.json").write_text("{}")
    argv[4] = str(tmp_path / "c.json")
    assert transduce_main(argv + ["--prefix", "generator"]) == 2
    assert "--prefix 'generator' must look like PART=PREFIX" in caplog.text
