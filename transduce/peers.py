"""The same weights in the engines a user might pick instead: CTranslate2 and HF transformers.

`ctranslate2_from_model()` writes a CTranslate2 model directory through its Python model-spec
API (no checkpoint format in between), so the benchmark compares engines on identical weights.
`marian_from_model()` builds a Hugging Face `MarianMTModel` of the same sizes for the
transformers peer. Both packages are optional (the `bench` extra); a missing one raises
`PeerUnavailable`, which the benchmark reports instead of failing.

How our state dict maps onto CTranslate2's Transformer spec:

    ours                                   CTranslate2
    norm_first                             pre_norm (LayerNorm inside each sub-layer spec)
    has_final_norm                         no_final_norm = not has_final_norm (pre-norm only)
    src_embed / tgt_embed                  encoder.embeddings[0] / decoder.embeddings
    embed_scale (sqrt(D) or 1)             scale_embeddings (a float, or False)
    pos_table (either sinusoid layout)     position_encodings.encodings: our table, as stored
    self_attn.{q,k,v}_proj                 self_attention.linear[0] (fused rows q, k, v)
    cross_attn.q_proj / {k,v}_proj         attention.linear[0] / attention.linear[1] (fused)
    *.out_proj                             linear[-1]
    *_residual.norm                        <sub-layer>.layer_norm
    ffn.up / ffn.down                      ffn.linear_0 / ffn.linear_1
    output_proj (tied or not, bias)        decoder.projection

Token ids cross the CTranslate2 API as strings: id i is the token `ID_TOKEN % i`, so any id
sequence maps to the same ids inside CTranslate2.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import torch

from transduce.model.transformer import Transformer

logger = logging.getLogger(__name__)

ID_TOKEN = "<%d>"  # the CTranslate2 vocabulary entry of token id i
CT2_QUANTIZATIONS = ("float32", "int8", "int8_float32", "int16")


class PeerUnavailable(RuntimeError):
    """A peer engine is not installed or cannot represent the model; the message says which."""


def id_tokens(ids) -> list[str]:
    """Token ids -> CTranslate2 token strings."""
    return [ID_TOKEN % int(i) for i in ids]


def token_ids(tokens: list[str]) -> list[int]:
    """CTranslate2 token strings -> token ids (the inverse of `id_tokens`)."""
    return [int(token[1:-1]) for token in tokens]


def _array(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().float().cpu().numpy().copy()


def _linear(spec, *layers: torch.nn.Linear) -> None:
    """Fill a LinearSpec from one or more nn.Linear (rows concatenated in order)."""
    spec.weight = np.concatenate([_array(layer.weight) for layer in layers])
    if layers[0].bias is not None:
        spec.bias = np.concatenate([_array(layer.bias) for layer in layers])


def _layer_norm(spec, norm: torch.nn.LayerNorm) -> None:
    spec.gamma, spec.beta = _array(norm.weight), _array(norm.bias)


def _common(spec, model: Transformer, embedding: torch.nn.Embedding) -> None:
    """Embeddings, their scale and the position table of one stack."""
    config = model.config
    embeddings = spec.embeddings[0] if isinstance(spec.embeddings, list) else spec.embeddings
    embeddings.weight = _array(embedding.weight)
    spec.scale_embeddings = model.embed_scale if config.scale_embeddings else False
    table = model.pos_embed.weight if config.positions == "learned" else model.pos_table
    spec.position_encodings.encodings = _array(table)


def _ct2_problems(model: Transformer) -> list[str]:
    config = model.config
    problems = []
    if config.has_final_norm and not config.norm_first:
        problems.append(
            "a post-norm model with a final LayerNorm (final_norm=True) has no CTranslate2 "
            "Transformer spec (its final norm exists only for pre-norm)"
        )
    return problems


def ctranslate2_spec(model: Transformer):
    """The CTranslate2 TransformerSpec holding `model`'s weights (fp32, not yet quantized).

    Raises:
        PeerUnavailable: ctranslate2 is not installed, or the model has a feature its spec
            cannot express.
    """
    try:
        from ctranslate2.specs import common_spec, transformer_spec
    except ImportError as error:
        raise PeerUnavailable(
            f"ctranslate2 is not installed ({error}); pip install -e '.[bench]'"
        ) from error
    problems = _ct2_problems(model)
    if problems:
        raise PeerUnavailable("; ".join(problems))
    config = model.config
    activation = {
        "relu": common_spec.Activation.RELU,
        "gelu": common_spec.Activation.GELU,
        "silu": common_spec.Activation.SWISH,
    }[config.activation]
    no_final_norm = not config.has_final_norm
    encoder = transformer_spec.TransformerEncoderSpec(
        config.n_encoder_layers,
        config.n_heads,
        pre_norm=config.norm_first,
        no_final_norm=no_final_norm,
        activation=activation,
    )
    decoder = transformer_spec.TransformerDecoderSpec(
        config.n_decoder_layers,
        config.n_heads,
        pre_norm=config.norm_first,
        no_final_norm=no_final_norm,
        activation=activation,
    )

    # encoder: fused self-attention projections, post- or pre-norm LayerNorms in place
    _common(encoder, model, model.src_embed)
    for spec, layer in zip(encoder.layer, model.encoder_layers, strict=True):
        attn = layer.self_attn
        _linear(spec.self_attention.linear[0], attn.q_proj, attn.k_proj, attn.v_proj)
        _linear(spec.self_attention.linear[1], attn.out_proj)
        _layer_norm(spec.self_attention.layer_norm, layer.self_attn_residual.norm)
        _linear(spec.ffn.linear_0, layer.ffn.up)
        _linear(spec.ffn.linear_1, layer.ffn.down)
        _layer_norm(spec.ffn.layer_norm, layer.ffn_residual.norm)
    if config.has_final_norm:
        _layer_norm(encoder.layer_norm, model.encoder_norm)

    # decoder: cross-attention keeps queries apart from the fused keys/values
    _common(decoder, model, model.tgt_embed)
    for spec, layer in zip(decoder.layer, model.decoder_layers, strict=True):
        attn, cross = layer.self_attn, layer.cross_attn
        _linear(spec.self_attention.linear[0], attn.q_proj, attn.k_proj, attn.v_proj)
        _linear(spec.self_attention.linear[1], attn.out_proj)
        _layer_norm(spec.self_attention.layer_norm, layer.self_attn_residual.norm)
        _linear(spec.attention.linear[0], cross.q_proj)
        _linear(spec.attention.linear[1], cross.k_proj, cross.v_proj)
        _linear(spec.attention.linear[2], cross.out_proj)
        _layer_norm(spec.attention.layer_norm, layer.cross_attn_residual.norm)
        _linear(spec.ffn.linear_0, layer.ffn.up)
        _linear(spec.ffn.linear_1, layer.ffn.down)
        _layer_norm(spec.ffn.layer_norm, layer.ffn_residual.norm)
    if config.has_final_norm:
        _layer_norm(decoder.layer_norm, model.decoder_norm)
    _linear(decoder.projection, model.output_proj)

    spec = transformer_spec.TransformerSpec(encoder, decoder)
    spec.config.layer_norm_epsilon = config.layer_norm_eps
    spec.config.bos_token = ID_TOKEN % config.bos_id
    spec.config.eos_token = ID_TOKEN % config.eos_id
    spec.config.decoder_start_token = ID_TOKEN % config.bos_id
    # CTranslate2 needs an unknown token; every id we send exists, so pad stands in for it
    spec.config.unk_token = ID_TOKEN % config.pad_id
    spec.register_source_vocabulary(id_tokens(range(config.src_vocab_size)))
    spec.register_target_vocabulary(id_tokens(range(config.tgt_vocab_size)))
    return spec


def ctranslate2_from_model(
    model: Transformer, output_dir: str | Path, *, quantization: str = "float32"
) -> Path:
    """Write `model` as a CTranslate2 model directory, weights quantized as asked.

    Args:
        model: the reference model (fp32).
        output_dir: replaced if it exists.
        quantization: one of CT2_QUANTIZATIONS ("float32", "int8", ...).

    Returns:
        The directory.

    Raises:
        PeerUnavailable: see `ctranslate2_spec`.
    """
    if quantization not in CT2_QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {CT2_QUANTIZATIONS}, got {quantization!r}")
    spec = ctranslate2_spec(model)
    spec.validate()
    spec.optimize(quantization=quantization)
    output_dir = Path(output_dir)
    shutil.rmtree(output_dir, ignore_errors=True)
    output_dir.mkdir(parents=True)
    spec.save(str(output_dir))
    logger.info("Wrote CTranslate2 model %s (%s)", output_dir.name, quantization)
    return output_dir


def marian_from_model(model: Transformer):
    """A Hugging Face MarianMTModel of the same sizes, holding `model`'s weights (eval, fp32).

    Marian computes its own sinusoids in the "halves" layout and starts decoding from
    `decoder_start_token_id`; both are set from our config. With the "interleaved" layout the
    position table differs, so outputs differ from ours while the work per token is the same
    (the benchmark's fixed-length workload only times it).

    Raises:
        PeerUnavailable: transformers is not installed, or the model has a feature Marian lacks.
    """
    try:
        from transformers import MarianConfig, MarianMTModel
    except ImportError as error:
        raise PeerUnavailable(
            f"transformers is not installed ({error}); pip install transformers"
        ) from error
    config = model.config
    problems = []
    if config.norm_first or config.has_final_norm:
        problems.append("Marian is post-norm without a final LayerNorm")
    if config.src_vocab_size != config.tgt_vocab_size:
        problems.append("this mapping assumes one vocabulary size for source and target")
    if config.positions != "sinusoidal":
        problems.append("Marian has sinusoidal positions only")
    if problems:
        raise PeerUnavailable("cannot express the model as Marian: " + "; ".join(problems))
    activation = {"relu": "relu", "gelu": "gelu", "silu": "swish"}[config.activation]
    hf_config = MarianConfig(
        vocab_size=config.tgt_vocab_size,
        d_model=config.d_model,
        encoder_layers=config.n_encoder_layers,
        decoder_layers=config.n_decoder_layers,
        encoder_attention_heads=config.n_heads,
        decoder_attention_heads=config.n_heads,
        encoder_ffn_dim=config.d_ff,
        decoder_ffn_dim=config.d_ff,
        activation_function=activation,
        max_position_embeddings=config.max_positions,
        scale_embedding=config.scale_embeddings,
        share_encoder_decoder_embeddings=config.share_embeddings,
        tie_word_embeddings=config.tie_output,
        pad_token_id=config.pad_id,
        eos_token_id=config.eos_id,
        decoder_start_token_id=config.bos_id,
        forced_eos_token_id=None,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
    )
    hf = MarianMTModel(hf_config).eval()
    state = {}
    for stack, ours in (("encoder", model.encoder_layers), ("decoder", model.decoder_layers)):
        for i, layer in enumerate(ours):
            prefix = f"model.{stack}.layers.{i}."
            attns = [("self_attn", layer.self_attn, layer.self_attn_residual)]
            if stack == "decoder":
                attns.append(("encoder_attn", layer.cross_attn, layer.cross_attn_residual))
            for name, attn, residual in attns:
                for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                    state[f"{prefix}{name}.{proj}.weight"] = getattr(attn, proj).weight
                    state[f"{prefix}{name}.{proj}.bias"] = getattr(attn, proj).bias
                state[f"{prefix}{name}_layer_norm.weight"] = residual.norm.weight
                state[f"{prefix}{name}_layer_norm.bias"] = residual.norm.bias
            state[f"{prefix}fc1.weight"], state[f"{prefix}fc1.bias"] = (
                layer.ffn.up.weight,
                layer.ffn.up.bias,
            )
            state[f"{prefix}fc2.weight"], state[f"{prefix}fc2.bias"] = (
                layer.ffn.down.weight,
                layer.ffn.down.bias,
            )
            state[f"{prefix}final_layer_norm.weight"] = layer.ffn_residual.norm.weight
            state[f"{prefix}final_layer_norm.bias"] = layer.ffn_residual.norm.bias
    state["model.encoder.embed_tokens.weight"] = model.src_embed.weight
    state["model.decoder.embed_tokens.weight"] = model.tgt_embed.weight
    state["lm_head.weight"] = model.output_proj.weight
    if config.output_bias:
        state["final_logits_bias"] = model.output_proj.bias[None]
    missing, unexpected = hf.load_state_dict(
        {k: v.detach().clone() for k, v in state.items()}, strict=False
    )
    # Marian computes its positions; tied aliases and a zero logits bias may show as missing
    computed = ("embed_positions", "shared", "final_logits_bias")  # zeros unless output_bias
    left = [n for n in missing if not any(c in n for c in computed)]
    if unexpected or left:
        raise PeerUnavailable(f"Marian weight mapping failed: missing {left}, extra {unexpected}")
    logger.debug(
        "Built a MarianMTModel with %d parameters", sum(p.numel() for p in hf.parameters())
    )
    return hf
