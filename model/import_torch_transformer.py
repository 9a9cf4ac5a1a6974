"""Import the state dict of a model built around torch.nn.Transformer.

The expected model (the usual wrapper, as in PyTorch's translation tutorial); each part lives
under a prefix of the state dict, given by `prefixes` (defaults in PREFIXES):

    class Seq2Seq(nn.Module):
        def __init__(self):
            self.src_embed = nn.Embedding(src_vocab_size, d_model)    # "src_embed"
            self.tgt_embed = nn.Embedding(tgt_vocab_size, d_model)    # "tgt_embed" (may be the
                                                                      #  same module)
            self.pos = PositionalEncoding(...)                        # "pos": one table or none
            self.transformer = nn.Transformer(d_model, nhead, ...)    # "transformer"
            self.generator = nn.Linear(d_model, tgt_vocab_size)       # "generator"

        def forward(self, src, tgt):
            src_x = self.pos(self.src_embed(src) * math.sqrt(d_model))
            tgt_x = self.pos(self.tgt_embed(tgt) * math.sqrt(d_model))
            hidden = self.transformer(
                src_x, tgt_x, tgt_mask=<causal>, src_key_padding_mask=src == pad_id,
                memory_key_padding_mask=src == pad_id)
            return self.generator(hidden)

For the tutorial's own names pass `src_embed=src_tok_emb.embedding`,
`tgt_embed=tgt_tok_emb.embedding` and `pos=positional_encoding`. `batch_first` does not
matter (the weights are the same).

What the weights say is read from them: vocabulary sizes, d_model, d_ff, the number of layers,
shared embeddings (one module, or equal tables), a tied generator (absent, or equal to the
target table), the generator's bias, and nn.Transformer's final LayerNorms (`final_norm`,
present even in post-norm models). What they do not say comes from `settings`, a dict of
ModelConfig fields: `n_heads`, `pad_id`, `bos_id` and `eos_id` are required; `activation`,
`norm_first`, `layer_norm_eps`, `scale_embeddings` and the positions default to ModelConfig's
defaults, which are nn.Transformer's (relu, post-norm, 1e-5) and the tutorial's (scaled
embeddings, interleaved sinusoids).

Positions: no tensor under the "pos" prefix means sinusoids computed on the fly (layout and
max_positions from settings). One tensor, of shape (N, D), (N, 1, D) or (1, N, D), is imported
verbatim as a table (`positions="learned"`), so the imported model computes exactly what the
original did even when the table holds sinusoids; with `positions="sinusoidal"` in settings it
must match transduce's sinusoids instead.

Weight mapping, inside layer i (nn.MultiheadAttention packs q, k, v in one matrix, split here):

    transformer.{en,de}coder.layers.i.self_attn.in_proj_{weight,bias}  rows [0:D] [D:2D] [2D:3D]
                                                     -> *_layers.i.self_attn.{q,k,v}_proj
    transformer.decoder.layers.i.multihead_attn.*    -> decoder_layers.i.cross_attn.*
    *.out_proj                                       -> *.out_proj
    *.linear1 / linear2                              -> *.ffn.up / ffn.down
    encoder norm1 / norm2                            -> self_attn_residual / ffn_residual .norm
    decoder norm1 / norm2 / norm3                    -> self_attn / cross_attn / ffn _residual.norm
    transformer.{en,de}coder.norm                    -> {en,de}coder_norm

A model made with `bias=False` has no biases at all; they are imported as zeros. Anything
else (custom layers, add_bias_kv, separate positions per side, modules outside the five parts)
cannot be mapped and is reported, every problem at once.

Example:
    transduce import torch-transformer model.pt --config settings.json --output ckpt
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import Any

import torch

from transduce.model.checkpoint import stored_state
from transduce.model.config import ModelConfig
from transduce.model.import_marian import (
    ModelImportError,
    load_mapped_state,
    map_weights,
    raise_problems,
    read_weights,
)
from transduce.model.transformer import Transformer, sinusoid_table

__all__ = [
    "PREFIXES",
    "ModelImportError",
    "config_from_torch_transformer",
    "model_from_torch_transformer",
]

logger = logging.getLogger(__name__)

# the parts of the expected wrapper and their default prefixes in the state dict
PREFIXES = {
    "src_embed": "src_embed",
    "tgt_embed": "tgt_embed",
    "pos": "pos",
    "transformer": "transformer",
    "generator": "generator",
}
REQUIRED_SETTINGS = ("n_heads", "pad_id", "bos_id", "eos_id")
# a sinusoid table computed in float32 (as tutorials do) is off by up to ~1e-7 * position
SINUSOID_ATOL = 1e-3

# ours -> nn.Transformer's names inside one layer, per stack; order matters (longest first)
_LAYER_PARTS = {
    "encoder": (
        ("self_attn_residual.norm", "norm1"),
        ("ffn_residual.norm", "norm2"),
        ("ffn.up", "linear1"),
        ("ffn.down", "linear2"),
        ("self_attn", "self_attn"),
    ),
    "decoder": (
        ("self_attn_residual.norm", "norm1"),
        ("cross_attn_residual.norm", "norm2"),
        ("ffn_residual.norm", "norm3"),
        ("ffn.up", "linear1"),
        ("ffn.down", "linear2"),
        ("self_attn", "self_attn"),
        ("cross_attn", "multihead_attn"),
    ),
}
_PROJECTIONS = ("q_proj", "k_proj", "v_proj")  # the row blocks of in_proj, in order
_LAYER_NAME = re.compile(r"(encoder|decoder)_layers\.(\d+)\.(.+)")


def _slice_name(name: str, index: int, d_model: int) -> str:
    """The name of one row block of a packed in_proj tensor, as reported to users."""
    return f"{name}[{index * d_model}:{(index + 1) * d_model}]"


def _split_in_proj(
    weights: dict[str, torch.Tensor], d_model: int
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Replace every packed in_proj tensor (3D, ...) by its three row blocks, named by slice."""
    split, problems = {}, []
    for name, tensor in weights.items():
        if not name.endswith(("in_proj_weight", "in_proj_bias")):
            split[name] = tensor
        elif tensor.shape[0] != 3 * d_model:
            problems.append(
                f"{name} has shape {tuple(tensor.shape)}; a packed q, k, v projection of "
                f"d_model {d_model} has {3 * d_model} rows"
            )
        else:
            for index in range(3):
                split[_slice_name(name, index, d_model)] = tensor[
                    index * d_model : (index + 1) * d_model
                ]
    return split, problems


def _merge_missing_slices(problems: list[str]) -> list[str]:
    """Three "missing weight X[a:b]" lines for one packed tensor become one line for X."""
    pattern = re.compile(r"missing weight (.+)\[\d+:\d+\] \((\d+)(.*)\)")
    missing = [m for p in problems if (m := pattern.fullmatch(p))]
    counts = {}
    for match in missing:
        counts[match.group(1)] = counts.get(match.group(1), 0) + 1
    merged, done = [], set()
    for problem in problems:
        match = pattern.fullmatch(problem)
        if not match or counts[match.group(1)] != 3:
            merged.append(problem)
        elif match.group(1) not in done:
            done.add(match.group(1))
            rows, rest = int(match.group(2)), match.group(3)
            merged.append(f"missing weight {match.group(1)} ({3 * rows}{rest})")
    return merged


def _layer_count(weights: dict[str, torch.Tensor], stack_prefix: str) -> int:
    pattern = re.compile(re.escape(stack_prefix) + r"\.layers\.(\d+)\.")
    indices = {int(m.group(1)) for name in weights if (m := pattern.match(name))}
    return max(indices) + 1 if indices else 0


def _under(weights: dict[str, torch.Tensor], prefix: str) -> list[str]:
    return [name for name in weights if name.startswith(prefix + ".")]


def _position_table(
    weights: dict[str, torch.Tensor], prefix: str, problems: list[str]
) -> tuple[str | None, torch.Tensor | None]:
    """The one tensor under the positions prefix, as (N, D); (None, None) when there is none."""
    names = _under(weights, prefix)
    if len(names) > 1:
        problems.append(
            f"several tensors under {prefix!r}: {sorted(names)}; transduce has one positions "
            "table shared by source and target"
        )
    if len(names) != 1:
        return None, None
    table = weights[names[0]]
    if table.dim() == 3 and 1 in table.shape[:2]:
        table = table.reshape(-1, table.shape[-1])  # (N, 1, D) or (1, N, D) -> (N, D)
    if table.dim() != 2:
        problems.append(f"{names[0]} has shape {tuple(weights[names[0]].shape)}, not a table")
        return None, None
    return names[0], table


def _same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    return a is not None and b is not None and a.shape == b.shape and torch.equal(a, b)


def _inferred_settings(
    weights: dict[str, torch.Tensor], prefixes: dict[str, str], problems: list[str]
) -> dict[str, Any]:
    """The ModelConfig fields that the weights determine."""
    t, g = prefixes["transformer"], prefixes["generator"]
    src = weights.get(f"{prefixes['src_embed']}.weight")
    tgt = weights.get(f"{prefixes['tgt_embed']}.weight")
    linear1 = weights.get(f"{t}.encoder.layers.0.linear1.weight")
    inferred: dict[str, Any] = {
        "n_encoder_layers": _layer_count(weights, f"{t}.encoder"),
        "n_decoder_layers": _layer_count(weights, f"{t}.decoder"),
    }
    for part, table in (("src_embed", src), ("tgt_embed", tgt)):
        if table is None:
            problems.append(
                f"missing weight {prefixes[part]}.weight (the {part} table); set "
                f"prefixes['{part}'] (--prefix {part}=...) to where it lives"
            )
    for key in ("n_encoder_layers", "n_decoder_layers"):
        if inferred[key] == 0:
            stack = key.split("_")[1]
            problems.append(
                f"no {t}.{stack}.layers.* weights; set prefixes['transformer'] (--prefix "
                "transformer=...) to the nn.Transformer's name"
            )
    if src is None or tgt is None or linear1 is None:
        if linear1 is None and inferred["n_encoder_layers"]:
            problems.append(f"missing weight {t}.encoder.layers.0.linear1.weight")
        return inferred

    inferred.update(
        src_vocab_size=src.shape[0],
        tgt_vocab_size=tgt.shape[0],
        d_model=tgt.shape[1],
        d_ff=linear1.shape[0],
        share_embeddings=prefixes["src_embed"] == prefixes["tgt_embed"] or _same(src, tgt),
        tie_output=f"{g}.weight" not in weights or _same(weights[f"{g}.weight"], tgt),
        output_bias=f"{g}.bias" in weights,
    )
    norms = [f"{t}.{stack}.norm.weight" in weights for stack in ("encoder", "decoder")]
    if norms[0] != norms[1]:
        problems.append(
            f"only the {'encoder' if norms[0] else 'decoder'} stack ends with a LayerNorm "
            f"({t}.{{encoder,decoder}}.norm); transduce has both or neither"
        )
    inferred["final_norm"] = norms[0]
    return inferred


# stand-ins for missing settings that weights do not depend on, so that the weights can still
# be checked (and their problems reported together with the missing settings)
_PROBES = {"n_heads": 1, "pad_id": 0, "bos_id": 1, "eos_id": 2}


def _config_and_problems(
    weights: dict[str, torch.Tensor], settings: dict[str, Any], prefixes: dict[str, str]
) -> tuple[ModelConfig | None, str | None, list[str]]:
    """(config, positions table name, problems); the config is None when none can be made.

    With problems, the config only serves to check the weights: settings the weights
    contradict are overruled by the weights, missing ones are stood in for.
    """
    problems = []
    known = {field.name for field in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(settings) - known)
    if unknown:
        problems.append(f"settings have unknown keys {unknown}; known keys are {sorted(known)}")
    problems += [
        f"settings lack {key!r}, which the weights do not determine"
        for key in REQUIRED_SETTINGS
        if key not in settings
    ]
    inferred = _inferred_settings(weights, prefixes, problems)
    if "d_model" not in inferred:
        return None, None, problems

    table_name, table = _position_table(weights, prefixes["pos"], problems)
    if table is not None:
        inferred["max_positions"] = table.shape[0]
        positions = settings.get("positions", "learned")
        if positions == "sinusoidal":
            layout = settings.get("sinusoid_layout", "interleaved")
            expected = sinusoid_table(table.shape[0], table.shape[1], layout)
            if table.shape != expected.shape or not torch.allclose(
                table.float(), expected, rtol=0.0, atol=SINUSOID_ATOL
            ):
                problems.append(
                    f"{table_name} is not transduce's sinusoid table (layout {layout!r}); leave "
                    "out 'positions' to import it verbatim as a table"
                )
        inferred["positions"] = positions
    for key, value in inferred.items():
        if key in settings and settings[key] != value:
            problems.append(f"settings say {key}={settings[key]!r}, the weights say {value!r}")

    values = {k: v for k, v in settings.items() if k in known}
    try:
        return ModelConfig(**{**_PROBES, **values, **inferred}), table_name, problems
    except ValueError as error:
        return None, table_name, problems + [str(error)]


def config_from_torch_transformer(
    weights: dict[str, torch.Tensor],
    settings: dict[str, Any],
    prefixes: dict[str, str] | None = None,
    source: str | Path = "state dict",
) -> ModelConfig:
    """The ModelConfig of an nn.Transformer state dict.

    Args:
        weights: the state dict, in_proj tensors still packed.
        settings: ModelConfig fields the weights do not determine (see the module docstring).
        prefixes: where each part lives, for the parts that differ from PREFIXES.
        source: what to call the weights in messages.

    Raises:
        ModelImportError: listing every problem with the settings.
    """
    config, _, problems = _config_and_problems(weights, settings, {**PREFIXES, **(prefixes or {})})
    raise_problems(source, problems)
    return config


def _names(config: ModelConfig, prefixes: dict[str, str], table_name: str | None):
    """Our state-dict name -> the foreign names of the same tensor (in_proj already split)."""
    src, tgt, t, g = (prefixes[k] for k in ("src_embed", "tgt_embed", "transformer", "generator"))
    tgt_names = (f"{tgt}.weight",)
    if config.share_embeddings and src != tgt:
        tgt_names += (f"{src}.weight",)
    if config.tie_output:
        tgt_names += (f"{g}.weight",)
    fixed = {
        "src_embed.weight": (f"{src}.weight",),
        "tgt_embed.weight": tgt_names,
        "pos_embed.weight": (table_name or f"{prefixes['pos']}.weight",),
        "output_proj.weight": (f"{g}.weight",),
        "output_proj.bias": (f"{g}.bias",),
    }

    def names(ours: str) -> tuple[str, ...]:
        if ours in fixed:
            return fixed[ours]
        for stack in ("encoder", "decoder"):
            if ours.startswith(f"{stack}_norm."):
                return (f"{t}.{stack}.norm.{ours.rsplit('.', 1)[1]}",)
        match = _LAYER_NAME.fullmatch(ours)
        if not match:
            return (f"<no nn.Transformer name for {ours}>",)
        stack, index, rest = match.groups()
        layer = f"{t}.{stack}.layers.{index}"
        for our_part, their_part in _LAYER_PARTS[stack]:
            if not rest.startswith(our_part + "."):
                continue
            rest = rest[len(our_part) + 1 :]
            projection, _, kind = rest.partition(".")
            if projection in _PROJECTIONS:  # a row block of the packed in_proj tensor
                packed = f"{layer}.{their_part}.in_proj_{kind}"
                return (_slice_name(packed, _PROJECTIONS.index(projection), config.d_model),)
            return (f"{layer}.{their_part}.{rest}",)
        return (f"<no nn.Transformer name for {ours}>",)

    return names


def _zero_biases(
    model: Transformer, weights: dict[str, torch.Tensor], names, transformer: str
) -> dict[str, torch.Tensor]:
    """For a model made with bias=False (no bias anywhere in it): every bias as zeros."""
    if any(name.startswith(transformer + ".") and "bias" in name for name in weights):
        return weights
    logger.info("%s has no biases (bias=False); importing them as zeros", transformer)
    zeros = {
        names(ours)[0]: torch.zeros_like(tensor)
        for ours, tensor in stored_state(model).items()
        if ours.endswith(".bias") and not ours.startswith("output_proj.")
    }
    return {**weights, **zeros}


def model_from_torch_transformer(
    weights: str | Path | dict[str, torch.Tensor],
    settings: dict[str, Any],
    *,
    prefixes: dict[str, str] | None = None,
    state_key: str | None = None,
) -> Transformer:
    """Import an nn.Transformer-based model's state dict as an eval-mode transduce model.

    Args:
        weights: a weights file (safetensors, or torch.save read with weights_only=True) or
            the state dict itself.
        settings: ModelConfig fields the weights do not determine; at least n_heads, pad_id,
            bos_id and eos_id.
        prefixes: part -> its prefix in the state dict, for the parts that differ from
            PREFIXES (say {"generator": "fc_out"}).
        state_key: the entry of a torch file that holds the state dict (see read_weights).

    Raises:
        ModelImportError: listing every setting and weight that cannot be imported.
    """
    source, name = "state dict", "the state dict"
    if isinstance(weights, (str, Path)):
        source, name = weights, Path(weights).name
        weights = read_weights(weights, state_key=state_key)
    unknown = sorted(set(prefixes or {}) - set(PREFIXES))
    if unknown:
        raise_problems(source, [f"prefixes name unknown parts {unknown}; see {sorted(PREFIXES)}"])
    prefixes = {**PREFIXES, **(prefixes or {})}

    config, table_name, problems = _config_and_problems(weights, settings, prefixes)
    if config is None:
        raise_problems(source, problems)
    assumed = {
        key: getattr(ModelConfig, key)
        for key in ("activation", "norm_first", "layer_norm_eps", "scale_embeddings")
        if key not in settings
    }
    if assumed and not problems:
        logger.info("Assuming nn.Transformer's and the tutorial's defaults %s", assumed)

    split, split_problems = _split_in_proj(weights, config.d_model)
    model = Transformer(config)
    names = _names(config, prefixes, table_name)
    split = _zero_biases(model, split, names, prefixes["transformer"])
    learned = config.positions == "learned" and table_name is not None
    state, mapping_problems = map_weights(
        model,
        split,
        names,
        transforms={table_name: lambda t: t.reshape(-1, t.shape[-1])} if learned else {},
        # a stored sinusoid table was checked against ours and is not imported
        ignored=[table_name] if table_name and not learned else [],
    )
    raise_problems(source, problems + split_problems + _merge_missing_slices(mapping_problems))
    logger.info(
        "Imported %s: %d + %d layers, d_model %d, %s parameters",
        name,
        config.n_encoder_layers,
        config.n_decoder_layers,
        config.d_model,
        f"{sum(t.numel() for t in state.values()):,}",
    )
    return load_mapped_state(model, state)
