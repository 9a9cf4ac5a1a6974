"""Import a trained model from Hugging Face Marian (OPUS-MT) or torch.nn.Transformer.

Writes an ordinary transduce checkpoint directory (config.json, model.safetensors and, for
Marian, the SentencePiece tokenizer); nothing is downloaded. Examples:
    transduce import marian ~/models/opus-mt-en-de --output ~/models/en-de
    transduce import torch-transformer model.pt --config settings.json --output ckpt
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from transduce.model.checkpoint import save_checkpoint
from transduce.model.import_marian import import_marian
from transduce.model.import_torch_transformer import PREFIXES, model_from_torch_transformer

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sources = parser.add_subparsers(dest="source", required=True, metavar="SOURCE")

    marian = sources.add_parser(
        "marian",
        help="a Hugging Face MarianMTModel directory (an OPUS-MT download)",
        description="Import a local Hugging Face Marian directory: config.json, "
        "model.safetensors or pytorch_model.bin, source.spm, target.spm, vocab.json.",
    )
    marian.add_argument("directory", type=Path, help="the Marian model directory")
    marian.add_argument("--output", type=Path, required=True, help="checkpoint directory to write")
    marian.add_argument(
        "--keep-bad-words",
        action="store_true",
        help="do not fold generation_config.json's single-token bad_words_ids (OPUS-MT bans "
        "<pad>) into the output bias; keeps the logits identical to transformers' forward pass",
    )

    torch_transformer = sources.add_parser(
        "torch-transformer",
        help="a state dict of a model built around torch.nn.Transformer",
        description="Import a state dict (torch.save, read with weights_only=True, or "
        "safetensors) of a model with token embeddings, positions, an nn.Transformer and an "
        "output projection; the layout and the mapping are in the docstring of "
        "transduce.model.import_torch_transformer (model/import_torch_transformer.py).",
    )
    torch_transformer.add_argument("file", type=Path, help="the weights file")
    torch_transformer.add_argument(
        "--config",
        type=Path,
        required=True,
        help="JSON with what the weights do not say: n_heads, pad_id, bos_id, eos_id, and any "
        "ModelConfig field that differs from nn.Transformer's defaults (activation, ...)",
    )
    torch_transformer.add_argument(
        "--output", type=Path, required=True, help="checkpoint directory to write"
    )
    torch_transformer.add_argument(
        "--prefix",
        action="append",
        default=[],
        metavar="PART=PREFIX",
        help=f"where a part lives in the state dict, for parts {sorted(PREFIXES)} (default: "
        "the part's own name); repeat for several parts",
    )
    torch_transformer.add_argument(
        "--state-key",
        default=None,
        help="the entry holding the state dict when the file holds several (say, model)",
    )


def _prefixes(pairs: list[str]) -> dict[str, str]:
    prefixes = {}
    for pair in pairs:
        part, sep, prefix = pair.partition("=")
        if not sep:
            raise ValueError(f"--prefix {pair!r} must look like PART=PREFIX, e.g. pos=pos_encoder")
        prefixes[part] = prefix
    return prefixes


def run(args: argparse.Namespace) -> int:
    if args.source == "marian":
        output = import_marian(args.directory, args.output, ban_bad_words=not args.keep_bad_words)
    else:
        if not args.config.is_file():
            raise FileNotFoundError(f"--config {args.config} does not exist")
        model = model_from_torch_transformer(
            args.file,
            json.loads(args.config.read_text()),
            prefixes=_prefixes(args.prefix),
            state_key=args.state_key,
        )
        output = save_checkpoint(model, args.output)
    print(f"checkpoint {output}")
    return 0
