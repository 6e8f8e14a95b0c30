"""Tensor framing: round trips over every dtype the data plane carries, and framing errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from treeline_common.tensor_wire import (
    FramingError,
    ReplyTo,
    TensorHeader,
    pack,
    payload_bytes,
    signed_by,
    unpack,
)

DTYPES = ["float32", "float64", "float16", "int64", "int32", "int8", "uint8", "bool"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_each_dtype(dtype: str) -> None:
    rng = np.random.default_rng(0)
    array = (rng.standard_normal((2, 3, 4)) * 10).astype(dtype)
    header, arrays = unpack(pack("request", "r1", {"x": array}, stage="d/0"))
    assert header.kind == "request" and header.request_id == "r1" and header.stage == "d/0"
    assert arrays["x"].dtype == np.dtype(dtype)
    np.testing.assert_array_equal(arrays["x"], array)


def test_round_trip_several_tensors_keeps_order_timings_and_error() -> None:
    tensors = {
        "b": np.arange(6, dtype=np.int64).reshape(2, 3),
        "a": np.ones((1, 4), dtype=np.float32),
        "scalar": np.array(3.5, dtype=np.float64),
        "empty": np.zeros((0, 5), dtype=np.float32),
    }
    frames = pack("reply", "r2", tensors, timings={"d/0": 1.5, "d/1": 2.0}, error="")
    header, arrays = unpack(frames)
    assert list(arrays) == ["b", "a", "scalar", "empty"]
    for name, array in tensors.items():
        assert arrays[name].shape == array.shape
        np.testing.assert_array_equal(arrays[name], array)
    assert header.timings == {"d/0": 1.5, "d/1": 2.0}
    assert payload_bytes(tensors) == sum(a.nbytes for a in tensors.values())


def test_non_contiguous_input_is_sent_correctly() -> None:
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    view = base[:, ::2]
    assert not view.flags.c_contiguous
    _, arrays = unpack(pack("request", "r", {"v": view}))
    np.testing.assert_array_equal(arrays["v"], view)


def test_unpacked_arrays_are_read_only_views_over_received_bytes() -> None:
    frames = pack("request", "r", {"x": np.ones(4, dtype=np.float32)})
    received = [bytes(memoryview(f)) for f in frames]
    _, arrays = unpack(received)
    assert not arrays["x"].flags.writeable


def test_error_message_round_trip() -> None:
    header, arrays = unpack(pack("error", "r3", {}, stage="s", error="boom"))
    assert header.kind == "error" and header.error == "boom" and arrays == {}


@pytest.mark.parametrize(
    "frames, message",
    [
        ([], "empty"),
        ([b"not json"], "not JSON"),
        ([json.dumps({"v": 99, "kind": "request"}).encode()], "version"),
        ([json.dumps({"v": 1, "kind": "bogus"}).encode()], "kind"),
    ],
)
def test_bad_headers_raise_framing_error(frames: list[bytes], message: str) -> None:
    with pytest.raises(FramingError, match=message):
        unpack(frames)


def test_tensor_count_mismatch_raises() -> None:
    frames = pack("request", "r", {"x": np.ones(2, dtype=np.float32)})
    with pytest.raises(FramingError, match="lists 1 tensors, message has 0"):
        unpack(frames[:1])


def test_wrong_byte_count_raises() -> None:
    frames = pack("request", "r", {"x": np.ones((2, 2), dtype=np.float32)})
    with pytest.raises(FramingError, match="tensor"):
        unpack([frames[0], b"\x00" * 12])


def test_header_bytes_round_trip() -> None:
    header = TensorHeader(kind="reply", request_id="x", stage="s", timings={"s": 1.0})
    assert TensorHeader.from_bytes(header.to_bytes()) == header


def test_reply_to_round_trips_and_is_signed() -> None:
    key = bytes(range(32))
    reply_to = ReplyTo("tcp://127.0.0.1:5555", "abc", "k" * 40)
    frames = pack("request", "r1", {"x": np.ones(3, np.float32)}, stage="d/1", key=key, reply_to=reply_to)
    header, arrays = unpack(frames)
    assert header.reply_to == reply_to
    assert signed_by(header, list(arrays.values()), [key])
    header.reply_to = ReplyTo("tcp://10.0.0.1:1", "abc")  # redirected: no longer verifies
    assert not signed_by(header, list(arrays.values()), [key])


def test_headers_without_reply_to_sign_as_before() -> None:
    header = TensorHeader("request", "r1", "d/0", timings={"a": 1.0})
    assert header.signed_part() == b'["request","r1","d/0",[],{"a":1.0}]'
    assert "reply_to" not in json.loads(header.to_bytes())
    assert TensorHeader.from_bytes(header.to_bytes()).reply_to is None


@pytest.mark.parametrize(("reply_to", "field"), [
    ("tcp://a:1", "reply_to must be an object"),
    ({"endpoint": "ipc:///x", "request_id": "r"}, "reply_to.endpoint"),
    ({"endpoint": "tcp://a:1", "request_id": ""}, "reply_to.request_id"),
    ({"endpoint": "tcp://a:1", "request_id": "r", "curve_server_key": "short"}, "reply_to.curve_server_key"),
])
def test_bad_reply_to_names_the_field(reply_to: object, field: str) -> None:
    body = {"v": 1, "kind": "request", "request_id": "r", "reply_to": reply_to}
    with pytest.raises(FramingError, match=field):
        TensorHeader.from_bytes(json.dumps(body).encode())


def test_ack_last_round_trips_and_must_be_a_bool() -> None:
    assert TensorHeader.from_bytes(TensorHeader("ack", "r", last=True).to_bytes()).last
    assert not TensorHeader.from_bytes(TensorHeader("ack", "r").to_bytes()).last
    with pytest.raises(FramingError, match="last"):
        TensorHeader.from_bytes(json.dumps({"v": 1, "kind": "ack", "request_id": "r", "last": 1}).encode())
