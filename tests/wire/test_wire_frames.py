"""Framing: 4-byte big-endian length + one msgpack map; the decoder distrusts every byte."""

from __future__ import annotations

import struct
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gobucket.wire.frames import (
    DEFAULT_MAX_FRAME,
    MAX_DEPTH,
    FrameDecoder,
    FrameError,
    encode_frame,
    pack,
)


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def nested(depth: int) -> dict[str, Any]:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return {"t": "x", "v": value}


# --- encoding -----------------------------------------------------------------------------


def test_encode_frame_is_big_endian_length_then_msgpack_body() -> None:
    message = {"t": "ping", "seq": 7}
    data = encode_frame(message)
    (length,) = struct.unpack(">I", data[:4])
    assert length == len(data) - 4
    assert msgpack.unpackb(data[4:], raw=False) == message


def test_encode_frame_refuses_a_body_over_the_limit() -> None:
    with pytest.raises(FrameError):
        encode_frame({"t": "fill", "data": b"x" * 100}, max_frame=64)
    assert len(encode_frame({"t": "fill", "data": b"x" * 10}, max_frame=64)) <= 68


def test_pack_keeps_bytes_and_str_apart() -> None:
    body = pack({"s": "text", "b": b"\x00\xff"})
    assert msgpack.unpackb(body, raw=False) == {"s": "text", "b": b"\x00\xff"}


@pytest.mark.parametrize("value", [object(), {1, 2}, 2**70, frozenset()])
def test_pack_refuses_what_msgpack_cannot_carry(value: Any) -> None:
    with pytest.raises((TypeError, ValueError, OverflowError)):
        pack(value)


# --- decoding -----------------------------------------------------------------------------


def test_decoder_rejects_a_max_frame_below_16() -> None:
    with pytest.raises(ValueError):
        FrameDecoder(15)
    assert FrameDecoder(16).max_frame == 16


def test_decoder_round_trips_several_messages_in_one_feed() -> None:
    messages = [{"t": "ping", "seq": i, "blob": b"\x00" * i} for i in range(5)]
    decoder = FrameDecoder()
    assert decoder.feed(b"".join(encode_frame(m) for m in messages)) == messages
    assert decoder.buffered == 0


def test_decoder_reassembles_a_frame_fed_one_byte_at_a_time() -> None:
    message = {"t": "fill", "id": "process::1", "data": pack({"name": "Johnson"})}
    data = encode_frame(message) + encode_frame({"t": "ready"})
    decoder = FrameDecoder()
    out: list[dict[str, Any]] = []
    for index in range(len(data)):
        out.extend(decoder.feed(data[index : index + 1]))
        if index < len(data) - 1:
            assert out in ([], [message])
    assert out == [message, {"t": "ready"}]
    assert decoder.buffered == 0


def test_decoder_keeps_a_partial_frame_buffered() -> None:
    data = encode_frame({"t": "ping", "seq": 1})
    decoder = FrameDecoder()
    assert decoder.feed(data[:-1]) == []
    assert decoder.buffered == len(data) - 1
    assert decoder.feed(data[-1:]) == [{"t": "ping", "seq": 1}]


def test_take_buffered_hands_over_the_bytes_after_the_last_whole_frame() -> None:
    decoder = FrameDecoder()
    rest = b"\x00\x01record bytes"
    assert decoder.feed(encode_frame({"t": "noise"}) + rest) == [{"t": "noise"}]
    assert decoder.take_buffered() == rest
    assert decoder.buffered == 0
    assert decoder.take_buffered() == b""


def test_the_limit_can_be_raised_once_authenticated() -> None:
    decoder = FrameDecoder(64)
    big = encode_frame({"t": "x", "data": b"y" * 100})
    with pytest.raises(FrameError):
        FrameDecoder(64).feed(big)
    decoder.max_frame = 1 << 20
    assert decoder.feed(big) == [{"t": "x", "data": b"y" * 100}]


def test_decoder_refuses_an_oversized_frame_from_its_header_alone() -> None:
    decoder = FrameDecoder(1024)
    with pytest.raises(FrameError, match="exceeds"):
        decoder.feed(struct.pack(">I", 1025))  # no body needed: refused before reading it


def test_decoder_accepts_a_frame_exactly_at_the_limit() -> None:
    message = {"t": "x", "p": b"\x00" * 90}
    body = pack(message)
    assert FrameDecoder(len(body)).feed(frame(body)) == [message]
    with pytest.raises(FrameError):
        FrameDecoder(len(body) - 1).feed(frame(body))


def test_default_limit_is_one_mebibyte() -> None:
    assert DEFAULT_MAX_FRAME == 1 << 20
    with pytest.raises(FrameError):
        FrameDecoder().feed(struct.pack(">I", (1 << 20) + 1))


@pytest.mark.parametrize(
    "body",
    [
        b"\xc1",  # never-used msgpack byte
        b"\x81\xa1t",  # map with a key and no value (truncated)
        b"\x92\x01",  # array of 2 with one item
        b"\x81\xa1t\xa3abc\xff",  # trailing garbage after the value
        b"",  # empty body
    ],
)
def test_decoder_refuses_malformed_msgpack(body: bytes) -> None:
    with pytest.raises(FrameError):
        FrameDecoder().feed(frame(body))


@pytest.mark.parametrize("value", [[1, 2], "text", 5, None, b"bytes", 1.5, True])
def test_decoder_refuses_a_frame_that_is_not_a_map(value: Any) -> None:
    with pytest.raises(FrameError, match="map"):
        FrameDecoder().feed(frame(pack(value)))


def test_decoder_refuses_nesting_deeper_than_the_limit() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(encode_frame(nested(MAX_DEPTH))) == [nested(MAX_DEPTH)]
    with pytest.raises(FrameError, match="deeper"):
        FrameDecoder().feed(encode_frame(nested(MAX_DEPTH + 1)))


def test_decoder_refuses_very_deep_nesting_without_recursion_error() -> None:
    body = b"\x81\xa1v" + b"\x91" * 5000 + b"\x01"
    with pytest.raises(FrameError):
        FrameDecoder(1 << 16).feed(frame(body))


@pytest.mark.parametrize("key", [b"bytes-key", 1.5, None])
def test_decoder_refuses_maps_with_odd_keys(key: Any) -> None:
    body = msgpack.packb({key: 1}, use_bin_type=True)
    with pytest.raises(FrameError):
        FrameDecoder().feed(frame(body))


def test_decoder_refuses_unhashable_map_keys() -> None:
    body = b"\x81\x91\x01\x02"  # {[1]: 2}
    with pytest.raises(FrameError):
        FrameDecoder().feed(frame(body))


@pytest.mark.parametrize(
    "body",
    [
        msgpack.packb({"t": msgpack.ExtType(5, b"abc")}),
        b"\x81\xa1t\xd6\xff\x00\x00\x00\x01",  # a timestamp ext
    ],
)
def test_decoder_refuses_ext_types(body: bytes) -> None:
    with pytest.raises(FrameError):
        FrameDecoder().feed(frame(body))


def test_decoder_turns_an_empty_ext_into_an_inert_value() -> None:
    out = FrameDecoder().feed(frame(b"\x81\xa1t\xc7\x00\x05"))  # {"t": empty ext8}
    assert out == [{"t": msgpack.ExtType(5, b"")}]


def test_decoder_refuses_a_string_longer_than_the_frame_claims() -> None:
    body = b"\x81\xa1t\xdb\xff\xff\xff\xff"  # str32 of 4 GiB inside a tiny frame
    with pytest.raises(FrameError):
        FrameDecoder().feed(frame(body))


def test_decoder_refuses_a_huge_array_header_without_allocating() -> None:
    body = b"\x81\xa1t\xdd\x7f\xff\xff\xff"  # array32 claiming 2**31-1 items
    with pytest.raises(FrameError):
        FrameDecoder().feed(frame(body))


# --- fuzzing ------------------------------------------------------------------------------

msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=8,
)
messages = st.dictionaries(st.text(max_size=8), msgpack_values, max_size=4)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600), st.integers(min_value=16, max_value=4096))
def test_fuzz_random_bytes_only_ever_raise_frame_error(data: bytes, max_frame: int) -> None:
    decoder = FrameDecoder(max_frame)
    try:
        out = decoder.feed(data)
    except FrameError:
        return
    assert all(isinstance(m, dict) for m in out)
    assert decoder.buffered <= len(data)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=12))
def test_fuzz_random_bytes_in_chunks_only_ever_raise_frame_error(chunks: list[bytes]) -> None:
    decoder = FrameDecoder(256)
    for chunk in chunks:
        try:
            decoder.feed(chunk)
        except FrameError:
            return


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(messages, min_size=1, max_size=3), st.data())
def test_fuzz_valid_frames_round_trip_and_truncations_only_wait(
    batch: list[dict[str, Any]], data: st.DataObject
) -> None:
    stream = b"".join(encode_frame(m) for m in batch)
    cut = data.draw(st.integers(min_value=0, max_value=len(stream)))
    decoder = FrameDecoder()
    head = decoder.feed(stream[:cut])
    assert head == batch[: len(head)]  # a truncated stream yields a prefix, never garbage
    tail = decoder.feed(stream[cut:])
    assert head + tail == batch
    assert decoder.buffered == 0


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages, st.data())
def test_fuzz_corrupted_frames_only_ever_raise_frame_error(
    message: dict[str, Any], data: st.DataObject
) -> None:
    raw = bytearray(encode_frame(message))
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        index = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
        raw[index] = data.draw(st.integers(min_value=0, max_value=255))
    cut = data.draw(st.integers(min_value=0, max_value=len(raw)))
    decoder = FrameDecoder(512)
    try:
        decoder.feed(bytes(raw[:cut]))
        decoder.feed(bytes(raw[cut:]))
    except FrameError:
        pass


def test_a_frame_of_too_many_lists_and_maps_is_refused_quickly():
    import time

    decoder = FrameDecoder()  # 1 MiB frames: at most 65,536 lists/maps
    costly = msgpack.packb({"t": "fill", "data": [[] for _ in range(250_000)]})
    assert len(costly) < decoder.max_frame
    # CPU time of this thread, not wall time: a loaded machine must not fail it.
    started = time.thread_time()
    with pytest.raises(FrameError, match="lists/maps"):
        decoder.decode_body(costly)
    assert time.thread_time() - started < 0.2  # whole decode took ~0.35 s of CPU before
    fine = msgpack.packb({"t": "x", "rows": [{"a": i} for i in range(60_000)]})
    assert len(decoder.decode_body(fine)["rows"]) == 60_000
