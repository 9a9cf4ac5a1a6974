"""Import a Hugging Face Marian model (the OPUS-MT family) as a transduce checkpoint.

A Marian directory holds `config.json`, the weights (`model.safetensors`, or the older
`pytorch_model.bin`, possibly sharded with an index) and the SentencePiece tokenizer
(`source.spm`, `target.spm`, `vocab.json`). Nothing is downloaded. Marian is the paper's
post-norm Transformer with these differences, all carried into the ModelConfig:

    config.json                          transduce ModelConfig
    activation_function "swish"          activation "silu" ("gelu", "relu" also map)
    sinusoids: sin half, then cos half   sinusoid_layout "halves" (bit-identical tables)
    scale_embedding                      scale_embeddings
    share_encoder_decoder_embeddings     share_embeddings (else separate vocabulary sizes)
    tie_word_embeddings                  tie_output
    final_logits_bias                    output_bias=True
    decoder_start_token_id (the pad id)  bos_id
    pad_token_id, eos_token_id           pad_id, eos_id
    max_position_embeddings              max_positions
    (LayerNorm eps fixed at 1e-5)        layer_norm_eps 1e-5

Weights, inside decoder layer i (encoder layers have no encoder_attn):

    model.decoder.layers.i.self_attn.{q,k,v,out}_proj     decoder_layers.i.self_attn.*
    model.decoder.layers.i.self_attn_layer_norm           decoder_layers.i.self_attn_residual.norm
    model.decoder.layers.i.encoder_attn.{q,k,v,out}_proj  decoder_layers.i.cross_attn.*
    model.decoder.layers.i.encoder_attn_layer_norm        decoder_layers.i.cross_attn_residual.norm
    model.decoder.layers.i.fc1 / fc2                      decoder_layers.i.ffn.up / ffn.down
    model.decoder.layers.i.final_layer_norm               decoder_layers.i.ffn_residual.norm
    model.shared / model.{en,de}coder.embed_tokens        src_embed / tgt_embed
    lm_head (when not tied)                               output_proj.weight
    final_logits_bias (1, V)                              output_proj.bias (V,)

Stored sinusoid tables (`model.*.embed_positions.weight`, in older files) are checked against
the computed ones and not stored. Sharing and tying follow the tensors (see _resolve_ties()).
Problems are reported in one ModelImportError each: first every setting transduce cannot
represent, then (once the config is sound) every missing, unexpected or misshapen weight.

The shared pieces of importing (the error type, reading weight files without unpickling code,
matching names) live here and are reused by `import_torch_transformer`.

Example:
    transduce import marian ~/models/opus-mt-en-de --output ~/models/en-de-transduce
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pickle
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from transduce.model.checkpoint import save_checkpoint, stored_state
from transduce.model.config import ModelConfig
from transduce.model.transformer import Transformer, sinusoid_table
from transduce.text import SentencePieceTokenizer
from transduce.text import sentencepiece as spm_files

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
# in order of preference; an index file names the shards of a large model
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
ACTIVATIONS = {"swish": "silu", "silu": "silu", "gelu": "gelu", "relu": "relu"}
# a logit far below any real one that stays finite in fp16: a banned token's probability is 0
BANNED_LOGIT = -1.0e4
# stored sinusoid tables are float32 copies of the same float64 formula
POSITIONS_ATOL = 1e-5

# ours -> Marian's names, inside one layer; the attention projections keep their names
_LAYER_PARTS = (
    ("self_attn_residual.norm", "self_attn_layer_norm"),
    ("self_attn", "self_attn"),
    ("cross_attn_residual.norm", "encoder_attn_layer_norm"),
    ("cross_attn", "encoder_attn"),
    ("ffn.up", "fc1"),
    ("ffn.down", "fc2"),
    ("ffn_residual.norm", "final_layer_norm"),
)
_LAYER_NAME = re.compile(r"(encoder|decoder)_layers\.(\d+)\.(.+)")


class ModelImportError(ValueError):
    """A foreign model that cannot be imported; the message lists every problem."""


def raise_problems(source: str | Path, problems: list[str]) -> None:
    """Raise one ModelImportError listing `problems`, if there are any."""
    if problems:
        count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
        raise ModelImportError(
            f"cannot import {source} ({count}):\n" + "\n".join(f"  - {p}" for p in problems)
        )


def read_weights(path: str | Path, *, state_key: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, without running any code from it.

    `.safetensors` files are read with safetensors; anything else with
    `torch.load(weights_only=True)`, which unpickles tensors and plain containers only.

    Args:
        path: a `.safetensors` file, or a file written by `torch.save`.
        state_key: for a torch file holding a dict of several things (say, {"model": ...,
            "optimizer": ...}), the key of the state dict; None takes the file's top level.

    Returns:
        name -> tensor, on the CPU.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            return load_file(path)
        except (SafetensorError, OSError) as error:
            raise ModelImportError(f"{path} is not a readable safetensors file: {error}") from error
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        raise ModelImportError(
            f"{path} cannot be read with torch.load(weights_only=True): {error}; save the "
            "model's state_dict() (not the module) or convert it to safetensors"
        ) from error
    if state_key is not None:
        if not isinstance(loaded, dict) or state_key not in loaded:
            keys = sorted(loaded) if isinstance(loaded, dict) else type(loaded).__name__
            raise ModelImportError(f"{path} has no entry {state_key!r}; it holds {keys}")
        loaded = loaded[state_key]
    if not isinstance(loaded, dict) or not all(
        isinstance(value, torch.Tensor) for value in loaded.values()
    ):
        entries = sorted(loaded) if isinstance(loaded, dict) else type(loaded).__name__
        raise ModelImportError(
            f"{path} does not hold a state dict (name -> tensor) at its top level but {entries}; "
            "name the entry that does with state_key (--state-key)"
        )
    return loaded


def map_weights(
    model: Transformer,
    weights: dict[str, torch.Tensor],
    names: Callable[[str], tuple[str, ...]],
    *,
    transforms: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
    ignored: Iterable[str] = (),
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Pick the tensors of `model`'s stored state out of a foreign state dict.

    Args:
        model: the target model; every tensor its checkpoint stores must be found.
        weights: the foreign state dict.
        names: our name -> the foreign names of that tensor, canonical first. Any one of them
            suffices; when several are present (tied copies) they must be equal.
        transforms: foreign name -> a function applied to its tensor (a reshape).
        ignored: foreign names that are understood and checked elsewhere (not "unexpected").

    Returns:
        (our name -> float32 tensor, problems): everything missing, unexpected, misshapen or
        inconsistent, in words that name the foreign tensors.
    """
    transforms = transforms or {}
    state, problems, used = {}, [], set(ignored)
    for ours, expected in stored_state(model).items():
        candidates = names(ours)
        present = [name for name in candidates if name in weights]
        if not present:
            problems.append(f"missing weight {candidates[0]} {tuple(expected.shape)}")
            continue
        used.update(present)
        tensors = [transforms.get(name, lambda t: t)(weights[name]) for name in present]
        if tensors[0].shape != expected.shape:
            problems.append(
                f"{present[0]} has shape {tuple(tensors[0].shape)}, the config implies "
                f"{tuple(expected.shape)}"
            )
            continue
        if not tensors[0].is_floating_point():
            problems.append(f"{present[0]} has dtype {tensors[0].dtype}, expected floating point")
            continue
        for name, tensor in zip(present[1:], tensors[1:], strict=True):
            if tensor.shape != tensors[0].shape or not torch.equal(tensor, tensors[0]):
                problems.append(
                    f"{name} differs from {present[0]}, but the config says they are one tensor"
                )
        state[ours] = tensors[0].float()
    problems += [
        f"unexpected weight {name} {tuple(weights[name].shape)}"
        for name in weights
        if name not in used
    ]
    converted = sorted({str(t.dtype) for t in weights.values() if t.dtype != torch.float32})
    if converted and not problems:
        logger.info("Converted weights from %s to float32", ", ".join(converted))
    return state, problems


def load_mapped_state(model: Transformer, state: dict[str, torch.Tensor]) -> Transformer:
    """Load a complete stored state (from map_weights) into `model`; returns it in eval mode."""
    with torch.no_grad():
        model.load_state_dict(state, strict=False)  # the tied aliases follow their owners
    return model.eval()


def config_from_marian(hf_config: dict, source: str | Path = "config.json") -> ModelConfig:
    """The ModelConfig of a Marian config.json (as a dict); every unsupported setting at once."""
    problems = []

    def get(key: str, default=None, *, required: bool = False):
        if key not in hf_config:
            if required:
                problems.append(f"config.json lacks {key!r}")
            return default
        return hf_config[key]

    if get("model_type") != "marian":
        problems.append(f"model_type is {get('model_type')!r}; this importer reads 'marian'")
    architectures = get("architectures") or ["MarianMTModel"]
    if "MarianMTModel" not in architectures:
        problems.append(
            f"architectures is {architectures}; transduce imports MarianMTModel (the "
            "encoder-decoder with its language-model head)"
        )
    sizes = {
        key: get(key, required=True)
        for key in (
            "vocab_size",
            "d_model",
            "encoder_layers",
            "decoder_layers",
            "encoder_attention_heads",
            "decoder_attention_heads",
            "encoder_ffn_dim",
            "decoder_ffn_dim",
            "max_position_embeddings",
            "pad_token_id",
            "eos_token_id",
            "decoder_start_token_id",
        )
    }
    for ours, (encoder_key, decoder_key) in {
        "n_heads": ("encoder_attention_heads", "decoder_attention_heads"),
        "d_ff": ("encoder_ffn_dim", "decoder_ffn_dim"),
    }.items():
        if sizes[encoder_key] != sizes[decoder_key]:
            problems.append(
                f"{encoder_key} ({sizes[encoder_key]}) != {decoder_key} ({sizes[decoder_key]}); "
                f"transduce has one {ours} for both stacks"
            )
    activation = get("activation_function", "gelu")  # transformers' MarianConfig defaults
    if activation not in ACTIVATIONS:
        problems.append(
            f"activation_function {activation!r} is not supported; transduce maps "
            f"{sorted(ACTIVATIONS)}"
        )
    eos = sizes["eos_token_id"]
    if isinstance(eos, list):
        if len(eos) != 1:
            problems.append(f"eos_token_id lists {eos}; transduce ends a row at one id")
        eos = eos[0] if eos else None
    if sizes["decoder_start_token_id"] is None:
        problems.append("decoder_start_token_id is null; decoding needs a first token")

    # keys of older config.json files (inherited from BART) that transformers' Marian ignores;
    # a value other than the default would describe a different architecture
    for key, supported, meaning in (
        ("normalize_before", False, "pre-norm layers"),
        ("normalize_embedding", False, "a LayerNorm on the embeddings (layernorm_embedding)"),
        ("add_final_layer_norm", False, "a LayerNorm after each stack"),
        ("static_position_embeddings", True, "learned positions"),
        ("add_bias_logits", False, "a second logits bias"),
        ("is_decoder", False, "a decoder-only model"),
    ):
        if get(key, supported) != supported:
            problems.append(
                f"{key}={get(key)} ({meaning}) cannot be represented; transduce imports "
                f"Marian models with {key}={supported}"
            )

    shared = bool(get("share_encoder_decoder_embeddings", True))
    vocab_size = sizes["vocab_size"]
    tgt_vocab_size = get("decoder_vocab_size") or vocab_size
    if shared and tgt_vocab_size != vocab_size:
        problems.append(
            f"share_encoder_decoder_embeddings is true but decoder_vocab_size "
            f"({tgt_vocab_size}) != vocab_size ({vocab_size})"
        )
    raise_problems(source, problems)

    try:
        return ModelConfig(
            src_vocab_size=vocab_size,
            tgt_vocab_size=vocab_size if shared else tgt_vocab_size,
            d_model=sizes["d_model"],
            n_heads=sizes["encoder_attention_heads"],
            d_ff=sizes["encoder_ffn_dim"],
            n_encoder_layers=sizes["encoder_layers"],
            n_decoder_layers=sizes["decoder_layers"],
            max_positions=sizes["max_position_embeddings"],
            dropout=float(get("dropout", 0.1)),
            activation=ACTIVATIONS[activation],
            norm_first=False,
            layer_norm_eps=1e-5,  # transformers' Marian uses nn.LayerNorm's default
            positions="sinusoidal",
            sinusoid_layout="halves",
            scale_embeddings=bool(get("scale_embedding", False)),
            share_embeddings=shared,
            tie_output=bool(get("tie_word_embeddings", True)),
            output_bias=True,
            pad_id=sizes["pad_token_id"],
            bos_id=sizes["decoder_start_token_id"],
            eos_id=eos,
        )
    except ValueError as error:
        raise ModelImportError(f"cannot import {source}: {error}") from error


SHARED = "model.shared.weight"
SRC_EMBED = "model.encoder.embed_tokens.weight"
TGT_EMBED = "model.decoder.embed_tokens.weight"
LM_HEAD = "lm_head.weight"


def _embedding_names(weights: dict[str, torch.Tensor]) -> tuple[str, str]:
    """The names of the tables the encoder and the decoder read, as found in the file.

    Files keep the shared table under model.shared, under each stack's embed_tokens, or under
    all three. Each stack reads its own embed_tokens (transformers 5 unties them from
    model.shared when tie_word_embeddings is false); model.shared stands in when it is absent.
    """
    src = SRC_EMBED if SRC_EMBED in weights else SHARED
    tgt = TGT_EMBED if TGT_EMBED in weights else SHARED
    return src, tgt


def _resolve_ties(config: ModelConfig, weights: dict[str, torch.Tensor]) -> ModelConfig:
    """Sharing and tying as the stored tensors have them; config.json's flags are hints.

    The same flags mean different things in transformers 4 (share_encoder_decoder_embeddings
    alone shares the tables) and 5 (tie_word_embeddings=false unties everything), so the
    tensors decide: equal tables are one table, different ones stay apart.
    """
    src, tgt = _embedding_names(weights)
    if src not in weights or tgt not in weights:
        return config  # reported as missing by map_weights
    same = weights[src].shape == weights[tgt].shape and torch.equal(weights[src], weights[tgt])
    share = same and config.src_vocab_size == config.tgt_vocab_size
    tie = LM_HEAD not in weights or (
        weights[LM_HEAD].shape == weights[tgt].shape and torch.equal(weights[LM_HEAD], weights[tgt])
    )
    if (share, tie) != (config.share_embeddings, config.tie_output):
        logger.info(
            "The stored tensors give share_embeddings=%s, tie_output=%s (config.json's flags "
            "suggest %s, %s); following the tensors",
            share,
            tie,
            config.share_embeddings,
            config.tie_output,
        )
    return dataclasses.replace(config, share_embeddings=share, tie_output=tie)


def _marian_names(
    config: ModelConfig, weights: dict[str, torch.Tensor]
) -> tuple[Callable[[str], tuple[str, ...]], list[str]]:
    """Our state-dict name -> the Marian names of the same tensor, canonical first.

    Also returns the Marian names that are understood but not read (a model.shared table that
    neither stack reads).
    """
    src, tgt = _embedding_names(weights)
    if src == tgt == SHARED and not config.share_embeddings:
        src, tgt = SRC_EMBED, TGT_EMBED  # for the "missing" messages
    tgt_names = (tgt,) + ((src,) if config.share_embeddings and src != tgt else ())
    tied = {
        "tgt_embed.weight": tgt_names + ((LM_HEAD,) if config.tie_output else ()),
        "src_embed.weight": (src,),
        "output_proj.weight": (LM_HEAD,),
        "output_proj.bias": ("final_logits_bias",),
    }
    unread = [SHARED] if SHARED in weights and SHARED not in (src, tgt) else []

    def names(ours: str) -> tuple[str, ...]:
        if ours in tied:
            return tied[ours]
        match = _LAYER_NAME.fullmatch(ours)
        if match:
            stack, index, rest = match.groups()
            for our_part, their_part in _LAYER_PARTS:
                if rest.startswith(our_part + "."):
                    rest = their_part + rest[len(our_part) :]
                    return (f"model.{stack}.layers.{index}.{rest}",)
        return (f"<no Marian name for {ours}>",)

    return names, unread


def _check_position_tables(
    config: ModelConfig, weights: dict[str, torch.Tensor]
) -> tuple[list[str], list[str]]:
    """Older files store the sinusoid tables; they must be the ones transduce computes.

    Returns (the names seen, problems).
    """
    names = [n for n in weights if re.fullmatch(r"model\.(en|de)coder\.embed_positions\.weight", n)]
    expected = sinusoid_table(config.max_positions, config.d_model, config.sinusoid_layout)
    problems = []
    for name in names:
        table = weights[name].float()
        if table.shape != expected.shape:
            problems.append(
                f"{name} has shape {tuple(table.shape)}, the config implies {tuple(expected.shape)}"
            )
        elif not torch.allclose(table, expected, rtol=0.0, atol=POSITIONS_ATOL):
            diff = (table - expected).abs().max().item()
            problems.append(
                f"{name} differs from Marian's sinusoids by up to {diff:.3g}; transduce computes "
                "the positions and cannot import a trained table"
            )
    return names, problems


def _banned_tokens(directory: Path, hf_config: dict, config: ModelConfig) -> list[int]:
    """The single-token bad_words_ids of the generation defaults (generation_config.json, or
    config.json in older directories); logs the defaults that cannot be carried over."""
    path = directory / GENERATION_CONFIG_FILE
    generation = json.loads(path.read_text()) if path.is_file() else hf_config
    bad_words = generation.get("bad_words_ids") or []
    banned = sorted({ids[0] for ids in bad_words if len(ids) == 1})
    longer = [ids for ids in bad_words if len(ids) > 1]
    if longer:
        logger.warning(
            "Not applying the multi-token bad_words_ids %s: transduce's decoders have no "
            "banned sequences",
            longer,
        )
    # LIMITATION: transformers forces forced_eos_token_id as the last token when max_length is
    # reached; transduce's decoders leave such a hypothesis unfinished. Outputs differ only for
    # rows that hit the length budget; a forced-EOS option in the decoders would remove it.
    if generation.get("forced_eos_token_id") is not None:
        logger.warning(
            "Not applying forced_eos_token_id=%s: a row that reaches the length budget ends "
            "without EOS in transduce, with a forced EOS in transformers",
            generation["forced_eos_token_id"],
        )
    defaults = {k: generation[k] for k in ("num_beams", "max_length") if k in generation}
    if defaults:
        logger.info("Generation defaults of %s: %s", path.parent.name, defaults)
    out_of_range = [i for i in banned if not 0 <= i < config.tgt_vocab_size]
    raise_problems(
        path, [f"bad_words_ids has id {i}, outside the target vocabulary" for i in out_of_range]
    )
    return banned


def _weights_path(directory: Path) -> Path:
    for name in WEIGHT_FILES:
        if (directory / name).is_file():
            return directory / name
    found = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
    raise FileNotFoundError(
        f"{directory} has no PyTorch weights (looked for {', '.join(WEIGHT_FILES)}); it "
        f"holds {found}"
    )


def _read_marian_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.name.endswith(".index.json"):
        return read_weights(path)
    shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
    weights = {}
    for shard in shards:
        weights.update(read_weights(path.parent / shard))
    return weights


def model_from_marian(directory: str | Path, *, ban_bad_words: bool = True) -> Transformer:
    """Read a Hugging Face Marian directory into an eval-mode transduce model.

    Args:
        directory: a local MarianMTModel directory (config.json and its weights).
        ban_bad_words: fold the single-token `bad_words_ids` of generation_config.json (every
            OPUS-MT model bans its pad token) into the output bias as a logit of -1e4, so that
            greedy and beam search never pick them, as transformers' generate() does. False
            keeps the logits identical to transformers' forward pass.

    Raises:
        ModelImportError: listing every setting and weight that cannot be imported.
    """
    directory = Path(directory)
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} does not exist; is {directory} a Marian model?")
    hf_config = json.loads(config_path.read_text())
    config = config_from_marian(hf_config, config_path)
    weights_path = _weights_path(directory)
    weights = _read_marian_weights(weights_path)

    config = _resolve_ties(config, weights)
    model = Transformer(config)
    position_names, problems = _check_position_tables(config, weights)
    names, unread = _marian_names(config, weights)
    state, mapping_problems = map_weights(
        model,
        weights,
        names,
        transforms={"final_logits_bias": lambda t: t.reshape(-1)},
        ignored=position_names + unread,
    )
    raise_problems(weights_path, problems + mapping_problems)

    banned = _banned_tokens(directory, hf_config, config)
    if banned and ban_bad_words:
        logger.info("Banning token ids %s from generation (bad_words_ids)", banned)
        state["output_proj.bias"] = state["output_proj.bias"].clone()
        state["output_proj.bias"][banned] = BANNED_LOGIT
    logger.info(
        "Imported %s: %d + %d layers, d_model %d, %s parameters",
        directory.name,
        config.n_encoder_layers,
        config.n_decoder_layers,
        config.d_model,
        f"{sum(t.numel() for t in state.values()):,}",
    )
    return load_mapped_state(model, state)


def tokenizer_from_marian(
    directory: str | Path, config: ModelConfig
) -> SentencePieceTokenizer | None:
    """The SentencePiece tokenizer of a Marian directory, checked against the model's config.

    Returns None (with a warning) when the directory has no tokenizer files at all.
    """
    directory = Path(directory)
    files = (spm_files.SOURCE_MODEL_FILE, spm_files.TARGET_MODEL_FILE, spm_files.MARIAN_VOCAB_FILE)
    if not any((directory / name).is_file() for name in files):
        logger.warning(
            "%s has no tokenizer files (%s); the checkpoint will take token ids only",
            directory.name,
            ", ".join(files),
        )
        return None
    tokenizer = SentencePieceTokenizer.from_marian(directory, bos_id=config.bos_id)

    problems = []
    for name in ("pad_id", "eos_id"):
        if getattr(tokenizer, name) != getattr(config, name):
            problems.append(
                f"the tokenizer's {name} is {getattr(tokenizer, name)}, config.json's is "
                f"{getattr(config, name)}"
            )
    target_vocab = tokenizer.target_vocab or tokenizer.source_vocab
    for side, vocab, size in (
        ("vocab.json", tokenizer.source_vocab, config.src_vocab_size),
        ("the target vocabulary", target_vocab, config.tgt_vocab_size),
    ):
        largest = max(vocab.values())
        if largest >= size:
            problems.append(f"{side} has id {largest}, but the model has {size} embeddings")
    raise_problems(directory, problems)
    return tokenizer


def import_marian(directory: str | Path, output: str | Path, *, ban_bad_words: bool = True) -> Path:
    """Write a transduce checkpoint (model and tokenizer) made from a Marian directory.

    See model_from_marian() for the arguments. Returns the checkpoint directory.
    """
    model = model_from_marian(directory, ban_bad_words=ban_bad_words)
    tokenizer = tokenizer_from_marian(directory, model.config)
    return save_checkpoint(model, output, tokenizer)
