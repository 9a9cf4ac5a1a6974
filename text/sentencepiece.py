"""SentencePiece tokenization for imported Marian (OPUS-MT) models, torch-free.

Marian keeps one SentencePiece model per side (`source.spm`, `target.spm`) and maps their pieces
to model ids with a vocabulary of its own (`vocab.json`, piece -> id, shared by both sides unless
`target_vocab.json` gives the target side its own). SentencePiece's internal ids are not the
model's ids, so pieces always go through that vocabulary. Encoding and decoding follow
transformers' MarianTokenizer: a leading language code such as `>>fra<<` is kept as one token,
unknown pieces map to `<unk>`, the source ends with EOS, and decoding drops the special tokens.

The `sentencepiece` package is imported only when a tokenizer is made, so `transduce.text`
stays importable without it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

CONFIG_FILE = "sentencepiece.json"  # the vocabularies and special tokens, written by save()
SOURCE_MODEL_FILE = "source.spm"
TARGET_MODEL_FILE = "target.spm"
MARIAN_VOCAB_FILE = "vocab.json"
MARIAN_TARGET_VOCAB_FILE = "target_vocab.json"
MARIAN_TOKENIZER_CONFIG = "tokenizer_config.json"
FORMAT_VERSION = 1

# SentencePiece marks a word start with U+2581 ("lower one eighth block"), not a space
WORD_START = "\u2581"


def _processor(model_proto: bytes, name: str):
    """A SentencePieceProcessor for a serialized model."""
    try:
        import sentencepiece
    except ImportError as error:
        raise ModuleNotFoundError(
            "the sentencepiece package is needed to tokenize for imported Marian models; "
            "install it with: pip install sentencepiece"
        ) from error
    try:
        return sentencepiece.SentencePieceProcessor(model_proto=model_proto)
    except RuntimeError as error:
        raise ValueError(f"{name} is not a SentencePiece model: {error}") from error


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class SentencePieceTokenizer:
    """Source and target SentencePiece models plus Marian's piece -> id vocabularies.

    It has the interface of `VocabTokenizer` (encode_source, encode_target, decode_target,
    pad_id/bos_id/eos_id, save, load). Unlike that tokenizer it maps unknown pieces to `<unk>`,
    as the imported model was trained to expect. It does not apply the Moses punctuation
    normalization that MarianTokenizer applies when the optional `sacremoses` package is
    installed.
    """

    def __init__(
        self,
        source_model: bytes,
        target_model: bytes,
        source_vocab: dict[str, int],
        target_vocab: dict[str, int] | None = None,
        *,
        pad: str = "<pad>",
        eos: str = "</s>",
        unk: str = "<unk>",
        bos_id: int | None = None,
    ) -> None:
        """Make a tokenizer from serialized SentencePiece models and Marian vocabularies.

        Args:
            source_model: the source side's SentencePiece model (the bytes of `source.spm`).
            target_model: the target side's SentencePiece model (the bytes of `target.spm`).
            source_vocab: piece -> model id on the source side (Marian's `vocab.json`).
            target_vocab: piece -> model id on the target side, when it differs from the
                source side (Marian's `target_vocab.json`); None for one shared vocabulary.
            pad: the padding piece; Marian also starts decoding from it.
            eos: the end-of-sequence piece.
            unk: the piece that stands for anything outside the vocabulary.
            bos_id: the id decoding starts from (the model's `decoder_start_token_id`);
                None means the target side's pad id, as in every Marian model.
        """
        target_side = source_vocab if target_vocab is None else target_vocab
        problems = []
        for side, vocab in (("source", source_vocab), ("target", target_side)):
            for name, piece in (("pad", pad), ("eos", eos), ("unk", unk)):
                if piece not in vocab:
                    problems.append(f"{name} piece {piece!r} is not in the {side} vocabulary")
        if eos in source_vocab and eos in target_side and source_vocab[eos] != target_side[eos]:
            problems.append(
                f"eos piece {eos!r} has id {source_vocab[eos]} on the source side but "
                f"{target_side[eos]} on the target side; the model has one eos_id"
            )
        if problems:
            raise ValueError(
                "invalid SentencePiece vocabulary:\n" + "\n".join(f"  - {p}" for p in problems)
            )

        self.source_model, self.target_model = source_model, target_model
        self.source_vocab = dict(source_vocab)
        self.target_vocab = None if target_vocab is None else dict(target_vocab)
        self._source_spm = _processor(source_model, SOURCE_MODEL_FILE)
        self._target_spm = _processor(target_model, TARGET_MODEL_FILE)
        self._target_pieces = {i: piece for piece, i in target_side.items()}
        self._target_ids = target_side
        self._specials = {"pad": pad, "eos": eos, "unk": unk}
        self.pad_id, self.eos_id = source_vocab[pad], source_vocab[eos]  # padding: source side
        self.unk_id, self.target_unk_id = source_vocab[unk], target_side[unk]
        self.bos_id = target_side[pad] if bos_id is None else bos_id
        # decoding drops these, as transformers' decode(skip_special_tokens=True) does
        self.special_ids = {target_side[pad], self.bos_id, self.eos_id, self.target_unk_id}

    def __len__(self) -> int:
        """The number of source-side ids (the encoder's vocabulary)."""
        return len(self.source_vocab)

    @staticmethod
    def _split_language_code(text: str) -> tuple[list[str], str]:
        """'>>fra<< text' -> (['>>fra<<'], ' text'): multilingual models read the code."""
        if text.startswith(">>") and (end := text.find("<<")) != -1:
            return [text[: end + 2]], text[end + 2 :]
        return [], text

    def encode_source(self, text: str) -> list[int]:
        """Source text -> ids ending with EOS; pieces outside the vocabulary become <unk>."""
        code, text = self._split_language_code(text)
        pieces = code + self._source_spm.encode(text, out_type=str)
        return [self.source_vocab.get(piece, self.unk_id) for piece in pieces] + [self.eos_id]

    def encode_target(self, text: str) -> list[int]:
        """Target text -> ids, without BOS or EOS (training adds them)."""
        pieces = self._target_spm.encode(text, out_type=str)
        return [self._target_ids.get(piece, self.target_unk_id) for piece in pieces]

    def decode_target(self, ids: Sequence[int]) -> str:
        """Ids -> text, stopping at the first EOS and skipping the other special tokens."""
        pieces = []
        for i in ids:
            if i == self.eos_id:
                break
            if i in self.special_ids:
                continue
            if i not in self._target_pieces:
                raise ValueError(
                    f"id {i} is not in the target vocabulary ({len(self._target_pieces)} "
                    "pieces); was it produced by a different model?"
                )
            pieces.append(self._target_pieces[i])
        text = self._target_spm.decode_pieces(pieces)
        return text.replace(WORD_START, " ").strip()

    def save(self, directory: str | Path) -> Path:
        """Write source.spm, target.spm and sentencepiece.json into `directory`.

        Returns the path of sentencepiece.json. Each file is written under a temporary name
        and renamed, so a reader never sees half a file.
        """
        directory = Path(directory)
        _write_atomic(directory / SOURCE_MODEL_FILE, self.source_model)
        _write_atomic(directory / TARGET_MODEL_FILE, self.target_model)
        config = {
            "format": FORMAT_VERSION,
            **self._specials,
            "bos_id": self.bos_id,
            "source_vocab": self.source_vocab,
            "target_vocab": self.target_vocab,
        }
        path = directory / CONFIG_FILE
        _write_atomic(path, (json.dumps(config, ensure_ascii=False, indent=1) + "\n").encode())
        return path

    @classmethod
    def load(cls, directory: str | Path) -> SentencePieceTokenizer:
        """Read a tokenizer that save() wrote."""
        directory = Path(directory)
        missing = [
            name
            for name in (CONFIG_FILE, SOURCE_MODEL_FILE, TARGET_MODEL_FILE)
            if not (directory / name).is_file()
        ]
        if missing:
            raise FileNotFoundError(
                f"{directory} lacks {', '.join(missing)}; a checkpoint of an imported Marian "
                "model keeps its SentencePiece tokenizer there (re-run `transduce import marian`)"
            )
        config = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
        if config.get("format") != FORMAT_VERSION:
            raise ValueError(
                f"{directory / CONFIG_FILE} has format {config.get('format')!r}; this transduce "
                f"reads format {FORMAT_VERSION}"
            )
        return cls(
            (directory / SOURCE_MODEL_FILE).read_bytes(),
            (directory / TARGET_MODEL_FILE).read_bytes(),
            config["source_vocab"],
            config["target_vocab"],
            pad=config["pad"],
            eos=config["eos"],
            unk=config["unk"],
            bos_id=config["bos_id"],
        )

    @classmethod
    def from_marian(
        cls, directory: str | Path, *, bos_id: int | None = None
    ) -> SentencePieceTokenizer:
        """Read the tokenizer files of a Hugging Face Marian model directory.

        Args:
            directory: holds source.spm, target.spm, vocab.json and optionally
                target_vocab.json and tokenizer_config.json.
            bos_id: the model's decoder_start_token_id; None means the pad id.
        """
        directory = Path(directory)
        settings_path = directory / MARIAN_TOKENIZER_CONFIG
        settings = (
            json.loads(settings_path.read_text(encoding="utf-8")) if settings_path.is_file() else {}
        )
        separate = bool(settings.get("separate_vocabs", False))
        needed = [SOURCE_MODEL_FILE, TARGET_MODEL_FILE, MARIAN_VOCAB_FILE]
        needed += [MARIAN_TARGET_VOCAB_FILE] if separate else []
        missing = [name for name in needed if not (directory / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{directory} lacks the Marian tokenizer files {', '.join(missing)}; a "
                "downloaded OPUS-MT directory has source.spm, target.spm and vocab.json"
            )

        def read_vocab(name: str) -> dict[str, int]:
            vocab = json.loads((directory / name).read_text(encoding="utf-8"))
            if not isinstance(vocab, dict):
                raise ValueError(
                    f"{directory / name} must map pieces to ids (a JSON object), got a "
                    f"{type(vocab).__name__}; is it transduce's own vocab.json?"
                )
            return vocab

        return cls(
            (directory / SOURCE_MODEL_FILE).read_bytes(),
            (directory / TARGET_MODEL_FILE).read_bytes(),
            read_vocab(MARIAN_VOCAB_FILE),
            read_vocab(MARIAN_TARGET_VOCAB_FILE) if separate else None,
            pad=_token_text(settings.get("pad_token", "<pad>")),
            eos=_token_text(settings.get("eos_token", "</s>")),
            unk=_token_text(settings.get("unk_token", "<unk>")),
            bos_id=bos_id,
        )


def _token_text(token: str | dict) -> str:
    """A special token from tokenizer_config.json: a string, or an AddedToken dict."""
    return token["content"] if isinstance(token, dict) else token
