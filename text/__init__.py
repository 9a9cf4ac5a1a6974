"""Tokenizers, torch-free, shared by the model (training) and the runtime (generate)."""

from transduce.text.vocab import VocabTokenizer

__all__ = ["VocabTokenizer"]
