"""Importing Hugging Face Marian (OPUS-MT) models: transduce must compute what transformers does.

Small MarianMTModels are built with random weights and saved with save_pretrained (no download):
logits must match transformers' forward pass, and the golden greedy and beam decoders must return
the same tokens and scores as transformers' generate(). The SentencePiece tokenizer is checked
against transformers' MarianTokenizer on tiny models trained here.

Run: pytest tests/model/test_import_marian.py
"""

from __future__ import annotations

import io
import json
import random
import shutil
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is a test dependency")
sentencepiece = pytest.importorskip("sentencepiece", reason="sentencepiece is a test dependency")

from marian_helpers import EOS, PAD, UNK, V, marian_model, padded_sources  # noqa: E402
from transformers import MarianTokenizer  # noqa: E402
from transformers.models.marian.modeling_marian import (  # noqa: E402
    MarianSinusoidalPositionalEmbedding,
)

from transduce.cli import main as transduce_main  # noqa: E402
from transduce.model.checkpoint import load_checkpoint  # noqa: E402
from transduce.model.golden import beam_search, greedy  # noqa: E402
from transduce.model.import_marian import (  # noqa: E402
    BANNED_LOGIT,
    ModelImportError,
    config_from_marian,
    import_marian,
    model_from_marian,
)
from transduce.model.transformer import sinusoid_table  # noqa: E402
from transduce.text import SentencePieceTokenizer, VocabTokenizer, load_tokenizer  # noqa: E402

VARIANTS = {
    # the settings of every OPUS-MT model
    "opus-mt": {"activation_function": "swish", "scale_embedding": True},
    "separate-vocabularies": {
        "share_encoder_decoder_embeddings": False,
        "decoder_vocab_size": 53,
        "pad_token_id": 52,
        "decoder_start_token_id": 52,
        "activation_function": "gelu",
        "scale_embedding": True,
    },
    # transformers 5 unties every embedding table when tie_word_embeddings is false
    "untied-relu": {"tie_word_embeddings": False, "activation_function": "relu"},
}
# its flatter outputs need a larger push towards EOS for rows to end within the budget
EOS_BOOST = {"untied-relu": 3.5}


def hf_tokens(row: torch.Tensor, eos: int) -> list[int]:
    """A generate() output row without its start token, cut after the first EOS."""
    tokens = row[1:].tolist()
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


def assert_same_tokens(expected: list[int], actual: list[int], what: str) -> None:
    if expected != actual:
        step = next(
            (i for i, (a, b) in enumerate(zip(expected, actual, strict=False)) if a != b),
            min(len(expected), len(actual)),
        )
        raise AssertionError(
            f"{what}: first difference at step {step}\n  transformers {expected}\n"
            f"  transduce    {actual}"
        )


@pytest.fixture(scope="module", params=list(VARIANTS))
def saved(request, tmp_path_factory):
    """(transformers model, its save_pretrained directory, the imported model) per variant."""
    hf_model = marian_model(
        seed=3, eos_boost=EOS_BOOST.get(request.param, 1.5), **VARIANTS[request.param]
    )
    directory = tmp_path_factory.mktemp(request.param)
    hf_model.save_pretrained(directory)
    return hf_model, directory, model_from_marian(directory)


# -- the model ------------------------------------------------------------------------------------


def test_config_carries_every_marian_setting():
    config = config_from_marian(marian_model(**VARIANTS["opus-mt"]).config.to_dict())
    assert (config.src_vocab_size, config.tgt_vocab_size, config.d_model) == (V, V, 32)
    assert (config.n_heads, config.d_ff, config.max_positions) == (4, 64, 64)
    assert (config.activation, config.sinusoid_layout, config.positions) == (
        "silu",
        "halves",
        "sinusoidal",
    )
    assert config.scale_embeddings and config.share_embeddings and config.tie_output
    assert config.output_bias and not config.norm_first and not config.has_final_norm
    assert (config.pad_id, config.bos_id, config.eos_id) == (PAD, PAD, EOS)


@pytest.mark.parametrize("n_positions, d_model", [(512, 512), (64, 32), (100, 33)])
def test_sinusoid_tables_are_bit_identical(n_positions, d_model):
    marian = MarianSinusoidalPositionalEmbedding(n_positions, d_model).create_weight()
    assert torch.equal(sinusoid_table(n_positions, d_model, "halves"), marian)


def test_logits_equal_transformers(saved):
    hf_model, _, model = saved
    pad = hf_model.config.pad_token_id
    src = padded_sources([7, 3, 11, 1], pad, seed=1)
    generator = torch.Generator().manual_seed(2)
    tgt = torch.randint(2, model.config.tgt_vocab_size, (4, 9), generator=generator)
    tgt[:, 0] = model.config.bos_id
    with torch.no_grad():
        expected = hf_model(input_ids=src, attention_mask=src != pad, decoder_input_ids=tgt).logits
        actual = model(src, tgt)
    # measured max abs diff 1.1e-5 (opus-mt, logits up to 5.6; torch 2.13 CPU, transformers
    # 5.24 with its default sdpa attention), 2.7e-6 and 3.6e-6 for the other variants
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=5e-5)


@pytest.mark.parametrize("max_new_tokens", [12, 4])
def test_greedy_equals_generate(saved, max_new_tokens):
    hf_model, _, model = saved
    pad = hf_model.config.pad_token_id
    src = padded_sources([7, 3, 11, 1, 5, 9], pad, seed=4)
    output = hf_model.generate(
        input_ids=src,
        attention_mask=src != pad,
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
    )
    hypotheses = greedy(model, src, max_new_tokens)
    for row, hypothesis in enumerate(hypotheses):
        expected = hf_tokens(output[row], model.config.eos_id)
        assert_same_tokens(expected, hypothesis.tokens, f"greedy row {row}")


BEAM_CASES = {  # (beam size, length penalty, max new tokens)
    "k3-lp1": (3, 1.0, 12),
    "k4-lp0.6": (4, 0.6, 12),
    "k2-lp2": (2, 2.0, 10),
    # budgets that rows run out of: unfinished hypotheses compete with finished ones
    "k3-lp1-budget4": (3, 1.0, 4),
    "k5-lp1-budget6": (5, 1.0, 6),
}


def compare_beams(hf_model, model, src, beam_size, length_penalty, max_new_tokens, **generate):
    """Golden beam search vs generate(): every row's n-best tokens and normalized scores."""
    pad = hf_model.config.pad_token_id
    output = hf_model.generate(
        input_ids=src,
        attention_mask=src != pad,
        do_sample=False,
        num_beams=beam_size,
        num_return_sequences=beam_size,
        length_penalty=length_penalty,
        early_stopping=True,
        max_new_tokens=max_new_tokens,
        output_scores=True,
        return_dict_in_generate=True,
        **generate,
    )
    results = beam_search(
        model,
        src,
        beam_size=beam_size,
        max_new_tokens=max_new_tokens,
        length_penalty=length_penalty,
        n_best=beam_size,
    )
    finished = 0
    for row, hypotheses in enumerate(results):
        assert len(hypotheses) == beam_size
        for k, hypothesis in enumerate(hypotheses):
            flat = row * beam_size + k
            expected = hf_tokens(output.sequences[flat], model.config.eos_id)
            assert_same_tokens(expected, hypothesis.tokens, f"beam row {row}, hypothesis {k}")
            assert hypothesis.normalized_score == pytest.approx(
                output.sequences_scores[flat].item(), abs=1e-4
            ), f"beam row {row}, hypothesis {k}: normalized score"
            finished += hypothesis.tokens[-1] == model.config.eos_id
    return finished, sum(len(h) for h in results)


@pytest.mark.parametrize("case", BEAM_CASES)
def test_beam_search_equals_generate(saved, case):
    hf_model, _, model = saved
    beam_size, length_penalty, max_new_tokens = BEAM_CASES[case]
    src = padded_sources([7, 3, 11, 1, 5, 9], hf_model.config.pad_token_id, seed=4)
    finished, total = compare_beams(hf_model, model, src, beam_size, length_penalty, max_new_tokens)
    # the comparison has power only if some hypotheses end with EOS and others run out of budget
    assert 0 < finished < total


def test_beam_search_when_the_beam_fills_on_the_last_step(tmp_path):
    """This row finishes its fifth hypothesis on the last step, where an unfinished
    continuation (score -9.082) must outrank a finished one (-9.095), as in generate()."""
    hf_model = marian_model(seed=3, **VARIANTS["opus-mt"])
    hf_model.save_pretrained(tmp_path)
    src = padded_sources([7, 3, 11, 1, 5, 9], PAD, seed=4)[3:4]
    compare_beams(hf_model, model_from_marian(tmp_path), src, 5, 0.0, 4)


def test_banned_pad_matches_opus_mt_generation_defaults(tmp_path):
    """OPUS-MT bans its pad token (bad_words_ids) and renormalizes; the import bakes that in."""
    hf_model = marian_model(seed=3, **VARIANTS["opus-mt"])
    with torch.no_grad():
        hf_model.final_logits_bias[0, PAD] += 2.5  # make the banned token worth picking
    hf_model.generation_config.bad_words_ids = [[PAD]]
    hf_model.generation_config.renormalize_logits = True
    hf_model.save_pretrained(tmp_path)
    banned, plain = model_from_marian(tmp_path), model_from_marian(tmp_path, ban_bad_words=False)

    src = padded_sources([7, 3, 11, 1, 5, 9], PAD, seed=4)
    tgt = padded_sources([9, 9], PAD, seed=5)
    tgt[:, 0] = PAD
    with torch.no_grad():
        expected = hf_model(
            input_ids=src[:2], attention_mask=src[:2] != PAD, decoder_input_ids=tgt
        ).logits
        actual = banned(src[:2], tgt)
    torch.testing.assert_close(actual[..., :PAD], expected[..., :PAD], rtol=1e-5, atol=5e-5)
    assert torch.all(actual[..., PAD] < BANNED_LOGIT / 2)

    # generate() takes bad_words_ids and renormalize_logits from the saved generation config
    output = hf_model.generate(input_ids=src, attention_mask=src != PAD, max_new_tokens=10)
    for row, hypothesis in enumerate(greedy(banned, src, 10)):
        assert_same_tokens(hf_tokens(output[row], EOS), hypothesis.tokens, f"greedy row {row}")
    assert [h.tokens for h in greedy(plain, src, 10)] != [
        h.tokens for h in greedy(banned, src, 10)
    ], "the model never picks pad, so this test shows nothing"
    compare_beams(hf_model, banned, src, 4, 1.0, 10)


def test_pytorch_model_bin_with_every_alias_imports_the_same(saved, tmp_path):
    """Older directories: pytorch_model.bin with tied copies and the sinusoid tables stored."""
    hf_model, directory, model = saved
    shutil.copy(directory / "config.json", tmp_path / "config.json")
    state = hf_model.state_dict()
    assert "model.encoder.embed_positions.weight" in state
    torch.save(state, tmp_path / "pytorch_model.bin")
    from_bin = model_from_marian(tmp_path, ban_bad_words=False)
    assert from_bin.config == model.config
    for (name, a), (_, b) in zip(
        model.state_dict().items(), from_bin.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_every_weight_problem_is_reported_at_once(tmp_path):
    hf_model = marian_model()
    state = {name: t.clone() for name, t in hf_model.state_dict().items()}
    del state["model.encoder.layers.1.fc1.bias"]
    state["model.encoder.layernorm_embedding.weight"] = torch.ones(32)
    state["model.decoder.layers.0.fc2.weight"] = torch.zeros(32, 63)
    state["model.decoder.embed_positions.weight"] += 0.01
    hf_model.config.to_json_file(tmp_path / "config.json")
    torch.save(state, tmp_path / "pytorch_model.bin")

    with pytest.raises(ModelImportError, match=r"pytorch_model.bin \(4 problems\)") as error:
        model_from_marian(tmp_path)
    message = str(error.value)
    assert "missing weight model.encoder.layers.1.fc1.bias (64,)" in message
    assert "unexpected weight model.encoder.layernorm_embedding.weight (32,)" in message
    assert "model.decoder.layers.0.fc2.weight has shape (32, 63), the config implies (32, 64)" in (
        message
    )
    assert "model.decoder.embed_positions.weight differs from Marian's sinusoids" in message


def test_unsupported_settings_are_reported_at_once(tmp_path):
    settings = marian_model().config.to_dict()
    settings.update(
        normalize_before=True,
        activation_function="gelu_new",
        decoder_attention_heads=8,
    )
    del settings["d_model"]
    (tmp_path / "config.json").write_text(json.dumps(settings))
    with pytest.raises(ModelImportError, match=r"config.json \(4 problems\)") as error:
        model_from_marian(tmp_path)
    message = str(error.value)
    assert "config.json lacks 'd_model'" in message
    assert "encoder_attention_heads (4) != decoder_attention_heads (8)" in message
    assert "activation_function 'gelu_new' is not supported" in message
    assert "normalize_before=True (pre-norm layers) cannot be represented" in message


def test_weights_that_need_unpickling_code_are_refused(tmp_path):
    marian_model().config.to_json_file(tmp_path / "config.json")
    torch.save({"weights": io.BytesIO(b"not a tensor")}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ModelImportError, match=r"torch.load\(weights_only=True\)"):
        model_from_marian(tmp_path)


# -- the tokenizer --------------------------------------------------------------------------------

SOURCE_WORDS = "the a cat dog house tree runs sees green small river over quickly , ! ? 42 Zürich"
TARGET_WORDS = "der die das Katze Hund Haus Baum läuft sieht grün klein Fluss über schnell , ! ?"


def train_sentencepiece(words: str, seed: int) -> bytes:
    """A tiny unigram SentencePiece model trained on generated sentences."""
    rng = random.Random(seed)
    vocabulary = words.split()
    sentences = [
        " ".join(rng.choice(vocabulary) for _ in range(rng.randint(2, 8))) for _ in range(300)
    ]
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        vocab_size=60,
        model_type="unigram",
        character_coverage=1.0,
        num_threads=1,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    return model.getvalue()


def marian_vocab(*models: bytes) -> dict[str, int]:
    """Marian's piece -> id map: </s> 0, <unk> 1, the pieces of every model, <pad> last."""
    vocab = {"</s>": 0, "<unk>": 1}
    for model in models:
        processor = sentencepiece.SentencePieceProcessor(model_proto=model)
        for i in range(processor.get_piece_size()):
            if not (processor.is_control(i) or processor.is_unknown(i)):
                vocab.setdefault(processor.id_to_piece(i), len(vocab))
    vocab["<pad>"] = len(vocab)
    return vocab


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """A directory with Marian's tokenizer files: source.spm, target.spm, vocab.json."""
    directory = tmp_path_factory.mktemp("marian-tokenizer")
    source, target = train_sentencepiece(SOURCE_WORDS, 0), train_sentencepiece(TARGET_WORDS, 1)
    (directory / "source.spm").write_bytes(source)
    (directory / "target.spm").write_bytes(target)
    (directory / "vocab.json").write_text(json.dumps(marian_vocab(source, target)))
    return directory


def hf_tokenizer(directory, **kwargs) -> MarianTokenizer:
    with warnings.catch_warnings():  # "Recommended: pip install sacremoses" (optional)
        warnings.simplefilter("ignore")
        return MarianTokenizer(
            source_spm=str(directory / "source.spm"),
            target_spm=str(directory / "target.spm"),
            vocab=str(directory / "vocab.json"),
            **kwargs,
        )


TEXTS = [
    "the cat sees a dog",
    "Zürich runs quickly, over the river!",
    "unseen words: xyz and Q",
    "",
    ">>deu<< the small tree",
    "  spaces   around ",
]


def test_encoding_equals_marian_tokenizer(tokenizer_dir):
    expected, ours = hf_tokenizer(tokenizer_dir), load_tokenizer(tokenizer_dir)
    assert isinstance(ours, SentencePieceTokenizer)
    for text in TEXTS:
        assert ours.encode_source(text) == expected(text).input_ids, text
    assert UNK in ours.encode_source("unseen words: xyz and Q")


def test_decoding_equals_marian_tokenizer(tokenizer_dir):
    expected, ours = hf_tokenizer(tokenizer_dir), load_tokenizer(tokenizer_dir)
    rng = random.Random(7)
    n_ids = len(ours)
    for _ in range(100):
        ids = [rng.randrange(1, n_ids) for _ in range(rng.randint(0, 12))]
        text = expected.decode(ids, skip_special_tokens=True)
        assert ours.decode_target(ids + [EOS, n_ids - 1]) == text, ids


def test_separate_target_vocabulary(tokenizer_dir, tmp_path):
    for name in ("source.spm", "target.spm", "vocab.json"):
        shutil.copy(tokenizer_dir / name, tmp_path / name)
    target_vocab = marian_vocab((tokenizer_dir / "target.spm").read_bytes())
    (tmp_path / "target_vocab.json").write_text(json.dumps(target_vocab))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"separate_vocabs": True}))
    expected = hf_tokenizer(
        tmp_path, separate_vocabs=True, target_vocab_file=str(tmp_path / "target_vocab.json")
    )
    ours = load_tokenizer(tmp_path)
    ids = [target_vocab[p] for p in ("▁der", "▁Hund", "▁läuft") if p in target_vocab]
    assert len(ids) == 3
    assert ours.decode_target(ids) == expected.decode(ids, skip_special_tokens=True)
    assert ours.encode_target("der Hund") == expected(text_target="der Hund").input_ids[:-1]


def test_tokenizer_save_load_round_trip(tokenizer_dir, tmp_path):
    tokenizer = SentencePieceTokenizer.from_marian(tokenizer_dir, bos_id=5)
    tokenizer.save(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, SentencePieceTokenizer)
    assert (loaded.pad_id, loaded.bos_id, loaded.eos_id) == (len(tokenizer) - 1, 5, EOS)
    for text in TEXTS:
        assert loaded.encode_source(text) == tokenizer.encode_source(text)


def test_load_tokenizer_picks_by_files(tmp_path):
    VocabTokenizer(["<pad>", "<s>", "</s>", "a"]).save(tmp_path)
    assert isinstance(load_tokenizer(tmp_path), VocabTokenizer)
    with pytest.raises(FileNotFoundError, match="has no tokenizer: looked for sentencepiece.json"):
        load_tokenizer(tmp_path / "empty")


# -- the command and the checkpoint ---------------------------------------------------------------


def test_import_command_writes_a_checkpoint_that_translates_like_transformers(
    tokenizer_dir, tmp_path
):
    """Text in, text out: the imported checkpoint and tokenizer vs transformers end to end."""
    vocab_size = len(json.loads((tokenizer_dir / "vocab.json").read_text()))
    hf_model = marian_model(
        seed=5,
        vocab_size=vocab_size,
        pad_token_id=vocab_size - 1,
        decoder_start_token_id=vocab_size - 1,
        **VARIANTS["opus-mt"],
    )
    marian_dir = tmp_path / "opus-mt-xx-yy"
    hf_model.save_pretrained(marian_dir)
    for name in ("source.spm", "target.spm", "vocab.json"):
        shutil.copy(tokenizer_dir / name, marian_dir / name)

    assert (
        transduce_main(["import", "marian", str(marian_dir), "--output", str(tmp_path / "ck")]) == 0
    )
    model, tokenizer = load_checkpoint(tmp_path / "ck"), load_tokenizer(tmp_path / "ck")
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [
        "config.json",
        "model.safetensors",
        "sentencepiece.json",
        "source.spm",
        "target.spm",
    ]

    texts = TEXTS[:3]
    hf_tok = hf_tokenizer(marian_dir)
    batch = hf_tok(texts, padding=True, return_tensors="pt")
    expected = hf_tok.batch_decode(
        hf_model.generate(**batch, num_beams=1, max_new_tokens=8), skip_special_tokens=True
    )
    src = torch.full_like(batch.input_ids, tokenizer.pad_id)
    for row, text in enumerate(texts):
        ids = tokenizer.encode_source(text)
        src[row, : len(ids)] = torch.tensor(ids)
    assert torch.equal(src, batch.input_ids)
    actual = [tokenizer.decode_target(h.tokens) for h in greedy(model, src, 8)]
    assert actual == expected


def test_import_without_tokenizer_files_warns(saved, tmp_path, caplog):
    _, directory, model = saved
    import_marian(directory, tmp_path / "ck")
    assert "has no tokenizer files" in caplog.text
    assert load_checkpoint(tmp_path / "ck").config == model.config


def test_import_command_reports_a_missing_directory(tmp_path, caplog):
    assert transduce_main(["import", "marian", str(tmp_path / "nothing"), "--output", "x"]) == 2
    assert "config.json does not exist" in caplog.text
