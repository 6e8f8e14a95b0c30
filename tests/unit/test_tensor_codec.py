"""The boundary-tensor codecs (treeline_common.tensor_codec): round-trip bounds, refusals, framing."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from treeline_common import tensor_codec as codec
from treeline_common.tensor_wire import pack, unpack

FLOATS = hnp.arrays(np.float32, hnp.array_shapes(min_dims=0, max_dims=3, max_side=6),
                    elements=st.floats(-1e4, 1e4, width=32))


@settings(max_examples=150, deadline=None)
@given(FLOATS)
def test_fp16_round_trip_is_within_half_precision(x: np.ndarray) -> None:
    sent = codec.encode({"x": x}, codec.FP16)
    assert list(sent) == ["x::fp16"] and sent["x::fp16"].dtype == np.float16
    y = codec.decode(sent)["x"]
    assert y.dtype == np.float32 and y.shape == x.shape
    bound = np.maximum(np.abs(x) * 2.0**-11, 2.0**-25)
    assert np.all(np.abs(y - x) <= bound)


@settings(max_examples=150, deadline=None)
@given(FLOATS)
def test_int8_round_trip_is_within_half_a_step(x: np.ndarray) -> None:
    sent = codec.encode({"x": x}, codec.INT8)
    assert sent["x::int8"].dtype == np.int8 and sent["x::scale"].dtype == np.float32
    scale = float(sent["x::scale"])
    assert np.all(np.abs(sent["x::int8"].astype(np.int32)) <= 127)
    y = codec.decode(sent)["x"]
    assert y.dtype == np.float32 and y.shape == x.shape
    assert np.all(np.abs(y - x) <= scale / 2 * (1 + 1e-5) + 1e-30)


def test_sizes_shrink_as_the_planner_charges() -> None:
    x = np.random.default_rng(0).standard_normal((1, 32, 28, 28)).astype(np.float32)
    for name in codec.CODECS:
        sent = codec.encode({"x": x}, name)
        assert sum(a.nbytes for a in sent.values()) == codec.encoded_bytes(x.nbytes, name)
    assert codec.encoded_bytes(1000, "") == 1000


def test_zeros_and_negative_values() -> None:
    zeros = np.zeros((2, 3), np.float32)
    sent = codec.encode({"z": zeros}, codec.INT8)
    assert float(sent["z::scale"]) == 1.0
    assert np.array_equal(codec.decode(sent)["z"], zeros)
    negative = np.array([-3.0, -1.5, -0.001], np.float32)
    y = codec.round_trip({"n": negative}, codec.INT8)["n"]
    assert y[0] == pytest.approx(-3.0) and np.all(y <= 0)
    assert np.allclose(codec.round_trip({"n": negative}, codec.FP16)["n"], negative, rtol=1e-3)


def test_non_finite_tensors_are_sent_uncompressed_by_int8_and_kept_by_fp16() -> None:
    x = np.array([1.0, np.nan, np.inf, -np.inf], np.float32)
    sent = codec.encode({"x": x}, codec.INT8)
    assert list(sent) == ["x"] and sent["x"] is x
    half = codec.round_trip({"x": x}, codec.FP16)["x"]
    assert np.isnan(half[1]) and half[2] == np.inf and half[3] == -np.inf
    big = np.array([1e6], np.float32)  # beyond float16: would become inf
    assert list(codec.encode({"b": big}, codec.FP16)) == ["b"]


def test_only_float32_is_compressed_and_plain_tensors_are_not_copied() -> None:
    ids = np.arange(4, dtype=np.int64)
    half = np.ones(3, np.float16)
    x = np.ones(3, np.float32)
    sent = codec.encode({"ids": ids, "h": half, "x": x}, codec.INT8)
    assert sent["ids"] is ids and sent["h"] is half and "x::int8" in sent
    plain = {"ids": ids, "x": x}
    back = codec.decode(plain)
    assert back["ids"] is ids and back["x"] is x and not codec.is_encoded(plain)


def test_decode_refuses_malformed_int8_naming_the_tensor() -> None:
    q = np.ones(3, np.int8)
    with pytest.raises(codec.CodecError, match="'a::int8' comes without its scale 'a::scale'"):
        codec.decode({"a::int8": q})
    with pytest.raises(codec.CodecError, match="'a::scale' must be one float32"):
        codec.decode({"a::int8": q, "a::scale": np.ones(2, np.float32)})
    with pytest.raises(codec.CodecError, match="finite and positive"):
        codec.decode({"a::int8": q, "a::scale": np.array(0.0, np.float32)})


def test_unknown_codec_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown compression 'zip'; known: fp16, int8"):
        codec.encode({}, "zip")


def test_entries_for_passes_a_compressed_tensor_on_without_decoding() -> None:
    sent = codec.encode({"skip": np.ones(4, np.float32)}, codec.INT8)
    assert set(codec.entries_for(sent, "skip") or {}) == {"skip::int8", "skip::scale"}
    assert codec.entries_for(sent, "other") is None
    again = codec.encode(sent, codec.FP16)  # already compressed: passed on as it is, scale included
    assert set(again) == {"skip::int8", "skip::scale"} and again["skip::scale"] is sent["skip::scale"]


def test_encoded_tensors_survive_the_wire() -> None:
    x = np.random.default_rng(1).standard_normal((1, 8, 4, 4)).astype(np.float32)
    for name in codec.CODECS:
        frames = pack("request", "r1", codec.encode({"x": x}, name), stage="d/1/1")
        _, arrays = unpack([bytes(f) if not isinstance(f, np.ndarray) else f.tobytes() for f in frames])
        assert np.allclose(codec.decode(arrays)["x"], x, atol=float(np.abs(x).max()) / 127)
