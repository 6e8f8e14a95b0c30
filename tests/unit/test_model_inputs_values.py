"""``treeline infer``'s request values: valid per input kind, or read from an ``--inputs`` .npz file
with one clear line for a missing or mis-shaped array; and what a failed request carried."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from treeline_cli.input_values import (
    DEFAULT_VOCAB,
    InputFileError,
    describe,
    generate,
    input_kind,
    load_npz,
    placement_inputs,
    random_inputs,
)

IDS = {"name": "input_ids", "shape": [1, 16], "dtype": "int64", "index_limit": 30522}
MASK = {"name": "attention_mask", "shape": [1, 16], "dtype": "int64"}
TYPES = {"name": "token_type_ids", "shape": [1, 16], "dtype": "int64"}
POSITIONS = {"name": "position_ids", "shape": [1, 16], "dtype": "int64"}
IMAGE = {"name": "pixel_values", "shape": [1, 3, 8, 8], "dtype": "float32"}
VECTOR = {"name": "x", "shape": [1, 8], "dtype": "float32"}


@pytest.mark.parametrize(("spec", "kind"), [
    (IDS, "token_ids"), (MASK, "mask"), (TYPES, "token_type"), (POSITIONS, "position"), (IMAGE, "image"),
    (VECTOR, "float"), ({"name": "idx", "shape": [4], "dtype": "int32", "index_limit": 7}, "index"),
    ({"name": "count", "shape": [1], "dtype": "int64"}, "integer"),
    ({"name": "mask", "shape": [1, 4], "dtype": "bool"}, "mask"),
])
def test_kinds(spec: dict[str, Any], kind: str) -> None:
    assert input_kind(spec) == kind


def test_values_are_valid_for_their_kind() -> None:
    rng = np.random.default_rng(0)
    ids = generate(IDS, rng)
    assert ids.dtype == np.int64 and ids.shape == (1, 16)
    assert ids.min() >= 1 and ids.max() < 30522 and ids.max() > DEFAULT_VOCAB  # the vocabulary, no padding
    unknown_vocab = generate({**IDS, "index_limit": None}, rng)
    assert unknown_vocab.min() >= 1 and unknown_vocab.max() < DEFAULT_VOCAB
    assert (generate(MASK, rng) == 1).all() and (generate(TYPES, rng) == 0).all()
    assert generate(POSITIONS, rng)[0].tolist() == list(range(16))
    image = generate(IMAGE, rng)
    assert image.dtype == np.float32 and image.min() >= 0.0 and image.max() < 1.0
    assert generate(VECTOR, rng).min() < 0.0  # standard normal: negatives too
    index = generate({"name": "idx", "shape": [200], "dtype": "int32", "index_limit": 7}, rng)
    assert index.min() >= 0 and index.max() < 7
    symbolic = generate({"name": "x", "shape": ["batch", 4], "dtype": "float32"}, rng)
    assert symbolic.shape == (1, 4)


def test_random_inputs_cover_every_input_and_accept_a_single_spec() -> None:
    [sample] = list(random_inputs([IDS, MASK], 1, seed=3))
    assert sorted(sample) == ["attention_mask", "input_ids"]
    assert [sorted(s) for s in random_inputs(VECTOR, 2)] == [["x"], ["x"]]
    again = next(random_inputs([IDS, MASK], 1, seed=3))
    assert np.array_equal(again["input_ids"], sample["input_ids"])  # seeded


def test_placement_inputs_prefer_the_list() -> None:
    assert placement_inputs({"input": IDS, "inputs": [IDS, MASK]}) == [IDS, MASK]
    assert placement_inputs({"input": VECTOR}) == [VECTOR]
    assert placement_inputs({}) == []


def test_npz_one_sample_or_a_stack(tmp_path: Path) -> None:
    one = tmp_path / "one.npz"
    np.savez(one, input_ids=np.full((1, 16), 7), attention_mask=np.ones((1, 16), dtype=np.int64))
    [sample] = load_npz(one, [IDS, MASK])
    assert sample["input_ids"].dtype == np.int64 and int(sample["input_ids"][0, 0]) == 7
    stack = tmp_path / "stack.npz"
    np.savez(stack, x=np.zeros((3, 1, 8)))  # float64 becomes float32 (same kind)
    samples = load_npz(stack, [VECTOR])
    assert len(samples) == 3 and samples[0]["x"].shape == (1, 8) and samples[0]["x"].dtype == np.float32


@pytest.mark.parametrize(("arrays", "words"), [
    ({"input_ids": np.ones((1, 16), dtype=np.int64)},
     "has no array 'attention_mask' (expected int64 [1, 16]); it has ['input_ids']"),
    ({"input_ids": np.ones((1, 8), dtype=np.int64), "attention_mask": np.ones((1, 16), dtype=np.int64)},
     "array 'input_ids' in"),
    ({"input_ids": np.ones((1, 16)), "attention_mask": np.ones((1, 16), dtype=np.int64)},
     "has dtype float64; the service expects int64"),
    ({"input_ids": np.ones((2, 1, 16), dtype=np.int64),
      "attention_mask": np.ones((3, 1, 16), dtype=np.int64)},
     "different numbers of samples"),
])
def test_npz_errors_are_one_line_naming_the_array(tmp_path: Path, arrays: dict[str, np.ndarray],
                                                  words: str) -> None:
    path = tmp_path / "in.npz"
    np.savez(path, **arrays)  # type: ignore[arg-type]
    with pytest.raises(InputFileError) as info:
        load_npz(path, [IDS, MASK])
    assert words in str(info.value) and "\n" not in str(info.value)
    if "shape" in str(info.value):
        assert "has shape [1, 8]; the service expects [1, 16]" in str(info.value)


def test_npz_unreadable(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="no such file"):
        load_npz(tmp_path / "missing.npz", [IDS])
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(InputFileError, match=r"not a \.npz file"):
        load_npz(junk, [IDS])


def test_describe_names_shapes_dtypes_and_ranges() -> None:
    text = describe({"input_ids": np.array([[101, 2000, 102]]), "attention_mask": np.ones((1, 3), np.int64)})
    assert text == "input_ids int64 [1, 3] in [101, 2000]; attention_mask int64 [1, 3] in [1, 1]"
