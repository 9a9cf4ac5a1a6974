"""Shape specs and the optimization profiles derived from them and an export manifest's I/O table.

Run: .venv/bin/python -m pytest tests/engines/test_profiles.py
"""

from __future__ import annotations

import pytest
from engine_helpers import export_manifest

from transduce.engines.profiles import (
    ShapeRange,
    ShapeSpec,
    check_specs,
    profiles_from_json,
    profiles_from_manifest,
    profiles_to_json,
)


def test_defaults_resolve_to_the_model_limits() -> None:
    spec = ShapeSpec(max_batch=4).resolved(max_positions=64)
    assert spec == ShapeSpec(4, 64, 64, 4, 64, 64)
    assert ShapeSpec(4, 32, 16, opt_batch=2).axis_ranges(64) == {
        "batch": (1, 2, 4),
        "src_len": (1, 32, 32),
        "capacity": (1, 16, 16),
    }


def test_every_problem_is_reported_at_once() -> None:
    spec = ShapeSpec(max_batch=0, max_src_len=100, max_tgt_len=65, opt_src_len=101)
    with pytest.raises(ValueError) as raised:
        check_specs([spec], max_positions=64)
    message = str(raised.value)
    assert "max_batch must be at least 1, got 0" in message
    # the zero stops the range checks that need it; a second spec shows them
    spec = ShapeSpec(max_batch=4, max_src_len=100, max_tgt_len=65, opt_src_len=101, opt_batch=5)
    with pytest.raises(ValueError, match=r"invalid shape spec") as raised:
        check_specs([spec], max_positions=64)
    lines = str(raised.value).splitlines()[1:]
    assert lines == [
        "  - max_src_len (100) exceeds the model's max_positions (64); use --max-src-len 64 "
        "or less",
        "  - max_tgt_len (65) exceeds the model's max_positions (64); use --max-tgt-len 64 or less",
        "  - opt_batch (5) is outside [1, max_batch = 4]; lower --opt-batch or raise --max-batch",
        "  - opt_src_len (101) is outside [1, max_src_len = 100]; lower --opt-src-len or raise "
        "--max-src-len",
    ]


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("max_tgt_len", 0, r"max_tgt_len must be at least 1, got 0 \(profiles never start at 0"),
        ("opt_batch", 0, r"opt_batch must be at least 1, got 0"),
        ("max_batch", 2.5, r"max_batch must be an integer, got 2\.5"),
        ("max_src_len", True, r"max_src_len must be an integer, got True"),
    ],
)
def test_zero_and_non_integer_values_are_refused(field: str, value, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_specs([ShapeSpec(**{"max_batch": 4, field: value})], max_positions=64)


def test_problems_name_their_profile_when_there_are_several() -> None:
    with pytest.raises(ValueError, match=r"profile 1: max_batch must be at least 1"):
        check_specs([ShapeSpec(4), ShapeSpec(0)], max_positions=64)
    with pytest.raises(ValueError, match=r"at least one profile is needed"):
        check_specs([], max_positions=64)


def test_profiles_cover_every_dynamic_input_with_min_one() -> None:
    spec = ShapeSpec(max_batch=8, max_src_len=32, max_tgt_len=48, opt_batch=4, opt_src_len=16)
    profiles = profiles_from_manifest(export_manifest(), [spec])
    (encoder,) = profiles["encoder"]
    (decoder,) = profiles["decoder"]
    assert encoder == {"src_tokens": ShapeRange((1, 1), (4, 16), (8, 32))}
    # position is static (1,): no range; every other decoder input has one
    assert "position" not in decoder
    assert set(decoder) == {
        "tgt_tokens",
        "src_mask",
        "cross_keys.0",
        "cross_keys.1",
        "cross_values.0",
        "cross_values.1",
        "cache_keys.0",
        "cache_keys.1",
        "cache_values.0",
        "cache_values.1",
    }
    assert decoder["tgt_tokens"] == ShapeRange((1, 1), (4, 1), (8, 1))
    assert decoder["cross_keys.1"] == ShapeRange((1, 4, 1, 8), (4, 4, 16, 8), (8, 4, 32, 8))
    assert decoder["cache_values.0"] == ShapeRange((1, 4, 1, 8), (4, 4, 48, 8), (8, 4, 48, 8))
    for profile in (encoder, decoder):
        assert all(min(rng.min) >= 1 for rng in profile.values())


def test_several_profiles_in_order_and_json_round_trip() -> None:
    small, large = ShapeSpec(max_batch=2, max_src_len=16), ShapeSpec(max_batch=32)
    profiles = profiles_from_manifest(export_manifest(), [small, large])
    assert [p["src_tokens"].max for p in profiles["encoder"]] == [(2, 16), (32, 64)]
    as_json = profiles_to_json(profiles["decoder"])
    assert as_json[0]["tgt_tokens"] == {"min": [1, 1], "opt": [2, 1], "max": [2, 1]}
    assert profiles_from_json(as_json) == profiles["decoder"]


def test_unknown_axis_words_in_the_manifest_are_listed() -> None:
    manifest = export_manifest()
    manifest["graphs"]["decoder"]["inputs"][0]["shape"] = ["batch", "tgt_len"]
    manifest["graphs"]["decoder"]["inputs"][1]["shape"] = [0]
    with pytest.raises(ValueError, match=r"cannot make profiles") as raised:
        profiles_from_manifest(manifest, [ShapeSpec(4)])
    message = str(raised.value)
    assert "decoder input tgt_tokens has dimension 'tgt_len'" in message
    assert "decoder input position has dimension 0" in message


def test_spec_dict_round_trip_and_unknown_keys() -> None:
    spec = ShapeSpec(4, 32, 16, 2, 8, 8)
    assert ShapeSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match=r"unknown keys \['max_beams'\]"):
        ShapeSpec.from_dict({"max_batch": 4, "max_beams": 2})
