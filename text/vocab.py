"""A vocabulary tokenizer for small tasks: characters or whitespace words on each side."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

SPLITS = ("chars", "words")
VOCAB_FILE = "vocab.json"


class VocabTokenizer:
    """Maps text to ids and back with a fixed token list, the same list for both sides.

    The source side appends EOS (the encoder sees where the input ends); the target side is
    decoded up to the first EOS, skipping special tokens. Text with a symbol outside the
    vocabulary is refused rather than mapped to an unknown id the model never saw.
    """

    def __init__(
        self,
        tokens: Sequence[str],
        *,
        src_split: str = "chars",
        tgt_split: str = "words",
        pad: str = "<pad>",
        bos: str = "<s>",
        eos: str = "</s>",
    ) -> None:
        problems = []
        if len(set(tokens)) != len(tokens):
            dupes = sorted({t for t in tokens if list(tokens).count(t) > 1})
            problems.append(f"tokens must be unique, repeated: {dupes}")
        for side, split in (("src_split", src_split), ("tgt_split", tgt_split)):
            if split not in SPLITS:
                problems.append(f"{side} must be one of {SPLITS}, got {split!r}")
        for name, token in (("pad", pad), ("bos", bos), ("eos", eos)):
            if token not in tokens:
                problems.append(f"{name} token {token!r} is not in the token list")
        if problems:
            raise ValueError("invalid vocabulary:\n" + "\n".join(f"  - {p}" for p in problems))

        self.tokens = list(tokens)
        self.src_split, self.tgt_split = src_split, tgt_split
        self.ids = {token: i for i, token in enumerate(self.tokens)}
        self.pad_id, self.bos_id, self.eos_id = self.ids[pad], self.ids[bos], self.ids[eos]
        self.special_ids = {self.pad_id, self.bos_id, self.eos_id}
        self._specials = {"pad": pad, "bos": bos, "eos": eos}

    def __len__(self) -> int:
        return len(self.tokens)

    @staticmethod
    def _split(text: str, split: str) -> list[str]:
        return list(text.replace(" ", "")) if split == "chars" else text.split()

    def _ids(self, pieces: list[str], text: str) -> list[int]:
        unknown = sorted({p for p in pieces if p not in self.ids})
        if unknown:
            raise ValueError(
                f"text {text!r} has symbols outside the vocabulary: {unknown}; the model can "
                "only read its own vocabulary (see vocab.json beside the checkpoint)"
            )
        return [self.ids[p] for p in pieces]

    def encode_source(self, text: str) -> list[int]:
        """Source text -> ids ending with EOS."""
        pieces = self._split(text, self.src_split)
        if not pieces:
            raise ValueError(f"source text {text!r} is empty; give at least one symbol")
        return self._ids(pieces, text) + [self.eos_id]

    def encode_target(self, text: str) -> list[int]:
        """Target text -> ids, without BOS or EOS (training adds them)."""
        return self._ids(self._split(text, self.tgt_split), text)

    def decode_target(self, ids: Sequence[int]) -> str:
        """Ids -> text, stopping at the first EOS and skipping the other special tokens."""
        pieces = []
        for i in ids:
            if i == self.eos_id:
                break
            if i not in self.special_ids:
                pieces.append(self.tokens[i])
        return ("" if self.tgt_split == "chars" else " ").join(pieces)

    def to_dict(self) -> dict:
        return {"tokens": self.tokens, "src_split": self.src_split, "tgt_split": self.tgt_split}

    def save(self, directory: str | Path) -> Path:
        """Write vocab.json into `directory` (atomically: a temporary name, then a rename)."""
        path = Path(directory) / VOCAB_FILE
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({**self.to_dict(), **self._specials}, indent=1) + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, directory: str | Path) -> VocabTokenizer:
        path = Path(directory) / VOCAB_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} does not exist; a checkpoint keeps its vocabulary there"
            )
        data = json.loads(path.read_text())
        return cls(
            data["tokens"],
            src_split=data["src_split"],
            tgt_split=data["tgt_split"],
            pad=data["pad"],
            bos=data["bos"],
            eos=data["eos"],
        )
