"""The demo task: numbers written in digits, translated into English words.

"40512" -> "forty thousand five hundred twelve". The target is longer than the source and its
words do not line up one-to-one with the digits ("1" is "one", "ten" or part of "eleven"
depending on its neighbours; zeros vanish), so the model must learn real transduction. The
data is generated from the rules below, deterministically from a seed: nothing is downloaded.

Held out: every number of 100 and above whose hash falls in the test partition (about 1 in 50)
is never drawn for training, so the test set measures generalisation, not recall. Numbers
below 100 are the building blocks (the only place "zero" or a lone "thirteen" appears) and
always belong to training.
"""

from __future__ import annotations

import random

from transduce.model.config import ModelConfig
from transduce.model.train import make_batch
from transduce.text import VocabTokenizer

MAX_DIGITS = 6  # numbers 0 .. 999,999
ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
SPECIALS = ["<pad>", "<s>", "</s>"]
TEST_PARTITION = 50  # one number in TEST_PARTITION belongs to the held-out side


def number_to_words(n: int) -> str:
    """English words for 0 <= n < 10**MAX_DIGITS, without "and" or hyphens."""
    if not 0 <= n < 10**MAX_DIGITS:
        raise ValueError(f"n ({n}) must be in [0, {10**MAX_DIGITS})")
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ("" if n % 10 == 0 else " " + ONES[n % 10])
    if n < 1000:
        rest = "" if n % 100 == 0 else " " + number_to_words(n % 100)
        return ONES[n // 100] + " hundred" + rest
    rest = "" if n % 1000 == 0 else " " + number_to_words(n % 1000)
    return number_to_words(n // 1000) + " thousand" + rest


def demo_tokenizer() -> VocabTokenizer:
    words = sorted(set(ONES) | set(TENS[2:]) | {"hundred", "thousand"})
    digits = [str(d) for d in range(10)]
    return VocabTokenizer(SPECIALS + digits + words, src_split="chars", tgt_split="words")


def demo_config() -> ModelConfig:
    """A small post-norm model that learns the task on 2 CPU cores in a few minutes."""
    tokenizer = demo_tokenizer()
    return ModelConfig(
        src_vocab_size=len(tokenizer),
        tgt_vocab_size=len(tokenizer),
        d_model=128,
        n_heads=4,
        d_ff=256,
        n_encoder_layers=2,
        n_decoder_layers=2,
        max_positions=32,
        dropout=0.0,
        share_embeddings=True,
        tie_output=True,
        pad_id=tokenizer.pad_id,
        bos_id=tokenizer.bos_id,
        eos_id=tokenizer.eos_id,
    )


def is_held_out(n: int) -> bool:
    """True for the numbers reserved for testing (a fixed multiplicative hash, not Python's)."""
    return n >= 100 and (n * 2_654_435_761) % 2**32 % TEST_PARTITION == 0


def sample_numbers(count: int, *, held_out: bool, seed: int) -> list[int]:
    """`count` numbers from one side of the split, digit counts equally likely.

    Training draws with repetition from 1..MAX_DIGITS digits; the held-out side draws distinct
    numbers of 3..MAX_DIGITS digits (the only sizes it has).
    """
    rng = random.Random(seed)
    low_digits = 3 if held_out else 1
    numbers: list[int] = []
    seen: set[int] = set()
    while len(numbers) < count:
        digits = rng.randint(low_digits, MAX_DIGITS)
        n = rng.randrange(0 if digits == 1 else 10 ** (digits - 1), 10**digits)
        if is_held_out(n) != held_out or (held_out and n in seen):
            continue
        seen.add(n)
        numbers.append(n)
    return numbers


def demo_pairs(count: int, *, split: str, seed: int = 0) -> list[tuple[str, str]]:
    """(digits, words) pairs; split is "train" or "test" (disjoint sets of numbers)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    # the two splits draw from different seeds as well as different partitions
    numbers = sample_numbers(count, held_out=split == "test", seed=seed * 2 + (split == "test"))
    return [(str(n), number_to_words(n)) for n in numbers]


def demo_batches(tokenizer: VocabTokenizer, batch_size: int, seed: int = 0):
    """An endless stream of training batches, each freshly drawn from the training side."""
    rng = random.Random(seed)
    while True:
        pairs = demo_pairs(batch_size, split="train", seed=rng.randrange(2**31))
        yield make_batch(pairs, tokenizer)
