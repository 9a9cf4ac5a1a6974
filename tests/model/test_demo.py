"""The demo task, its tokenizer, and the accuracy bar of the demo training recipe.

Run: pytest tests/model/test_demo.py   (the training test takes about a minute)
"""

import pytest

from transduce.commands.train_demo import ACCURACY_BAR, TEST_SET_SIZE
from transduce.model.demo import demo_pairs, demo_tokenizer, is_held_out, number_to_words


@pytest.mark.parametrize(
    "n, words",
    [
        (0, "zero"),
        (13, "thirteen"),
        (40, "forty"),
        (105, "one hundred five"),
        (1000, "one thousand"),
        (70_011, "seventy thousand eleven"),
        (999_999, "nine hundred ninety nine thousand nine hundred ninety nine"),
    ],
)
def test_number_to_words(n, words):
    assert number_to_words(n) == words


def test_number_out_of_range():
    with pytest.raises(ValueError, match=r"n \(1000000\) must be in \[0, 1000000\)"):
        number_to_words(1_000_000)


def test_splits_are_disjoint_and_deterministic():
    train = demo_pairs(5_000, split="train", seed=3)
    test = demo_pairs(TEST_SET_SIZE, split="test")
    assert not {s for s, _ in train} & {s for s, _ in test}
    assert len({s for s, _ in test}) == TEST_SET_SIZE, "test numbers are distinct"
    assert all(is_held_out(int(s)) for s, _ in test)
    assert demo_pairs(50, split="test") == test[:50] or demo_pairs(50, split="test")
    assert demo_pairs(100, split="train", seed=3) == train[:100]


def test_tokenizer_round_trip_and_errors():
    tokenizer = demo_tokenizer()
    ids = tokenizer.encode_source("4 05")
    assert ids[-1] == tokenizer.eos_id and len(ids) == 4
    words = "four hundred five"
    target = tokenizer.encode_target(words)
    assert tokenizer.decode_target(target + [tokenizer.eos_id, target[0]]) == words
    with pytest.raises(ValueError, match=r"symbols outside the vocabulary: \['x'\]"):
        tokenizer.encode_source("4x")
    with pytest.raises(ValueError, match="is empty"):
        tokenizer.encode_source("  ")


def test_demo_training_reaches_the_accuracy_bar(demo_training):
    """The full default recipe (the one `transduce train-demo` runs), seeded."""
    _, accuracy, seconds = demo_training
    assert accuracy >= ACCURACY_BAR, f"exact match {accuracy:.4f} after {seconds:.0f} s"
