"""Tokenizers, torch-free, shared by the model (training) and the runtime (generate)."""

from __future__ import annotations

from pathlib import Path

from transduce.text import sentencepiece
from transduce.text.sentencepiece import SentencePieceTokenizer
from transduce.text.vocab import VOCAB_FILE, VocabTokenizer

__all__ = ["SentencePieceTokenizer", "VocabTokenizer", "load_tokenizer"]


def load_tokenizer(directory: str | Path) -> VocabTokenizer | SentencePieceTokenizer:
    """The tokenizer kept in a checkpoint directory, whichever kind it is.

    Looks for, in this order: sentencepiece.json (a checkpoint of an imported Marian model),
    source.spm (a Hugging Face Marian directory itself), vocab.json (transduce's own
    vocabulary tokenizer).
    """
    directory = Path(directory)
    if (directory / sentencepiece.CONFIG_FILE).is_file():
        return SentencePieceTokenizer.load(directory)
    if (directory / sentencepiece.SOURCE_MODEL_FILE).is_file():
        return SentencePieceTokenizer.from_marian(directory)
    if (directory / VOCAB_FILE).is_file():
        return VocabTokenizer.load(directory)
    raise FileNotFoundError(
        f"{directory} has no tokenizer: looked for {sentencepiece.CONFIG_FILE} (imported "
        f"models), {sentencepiece.SOURCE_MODEL_FILE} (a Marian directory) and {VOCAB_FILE} "
        "(transduce's own); was the checkpoint saved without one?"
    )
