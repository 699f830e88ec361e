"""Every wire message is built and parsed in gobucket.wire.protocol: round trips.

The builders must put on the wire exactly the bytes the protocol always had
(``docs/wire.md``): each is compared with the literal map, key order included.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from gobucket.wire import protocol
from gobucket.wire.frames import FrameDecoder, FrameError, encode_frame, pack
from gobucket.wire.protocol import PROTOCOL_VERSION, MessageType


def _wire(message: dict[str, Any]) -> bytes:
    return encode_frame(message)


def _read(message: dict[str, Any]) -> dict[str, Any]:
    """What the other side reads: the frame decoded and validated."""
    (decoded,) = FrameDecoder().feed(_wire(message))
    protocol.validate(decoded)
    return decoded


def test_builders_put_the_same_bytes_on_the_wire_as_ever() -> None:
    assert _wire(protocol.ping()) == _wire({"t": "ping"})
    assert _wire(protocol.pong(3, {"b": [1, 2]})) == _wire(
        {"t": "pong", "seq": 3, "loads": {"b": [1, 2]}}
    )
    assert _wire(protocol.ack(7)) == _wire({"t": "ack", "rid": 7, "ok": True})
    assert _wire(protocol.refusal(7, "full", "no room")) == _wire(
        {"t": "ack", "rid": 7, "ok": False, "code": "full", "msg": "no room"}
    )
    assert _wire(protocol.error("bad_frame", "x" * 300)) == _wire(
        {"t": "error", "code": "bad_frame", "msg": "x" * 200}
    )
    assert _wire(protocol.ready()) == _wire({"t": "ready"})
    assert _wire(protocol.noise("c", b"m")) == _wire(
        {"t": "noise", "v": PROTOCOL_VERSION, "cluster": "c", "m": b"m"}
    )
    assert _wire(protocol.hello("c", "n", 1, ("a", "b"))) == _wire(
        {
            "t": "hello",
            "v": PROTOCOL_VERSION,
            "cluster": "c",
            "node": "n",
            "port": 1,
            "buckets": ["a", "b"],
        }
    )
    fill = protocol.fill("b", "id", pack({"k": 1}), "time_bomb", 0.5, 2.0)
    assert _wire(fill) == _wire(
        {
            "t": "fill",
            "bucket": "b",
            "id": "id",
            "data": pack({"k": 1}),
            "type": "time_bomb",
            "run_after": 0.5,
            "life_span": 2.0,
        }
    )


def test_plain_hello_carries_a_fresh_nonce_and_no_auth() -> None:
    first = protocol.plain_hello("c", "n", 1, ())
    second = protocol.plain_hello("c", "n", 1, ())
    assert list(first) == ["t", "v", "cluster", "node", "port", "buckets", "nonce", "auth"]
    assert first["auth"] is False
    assert len(first["nonce"]) == 16 and first["nonce"] != second["nonce"]
    assert protocol.validate(_read(first)) is MessageType.HELLO


def test_fill_round_trips_to_a_typed_value() -> None:
    sent = {**protocol.fill("b", "id", pack([1, "x"]), "immediate", 0.0, 5.0), "rid": 9}
    parsed = protocol.parse(_read(sent))
    assert parsed == protocol.Fill(9, "b", "id", "immediate", 0.0, 5.0, pack([1, "x"]))
    assert isinstance(parsed, protocol.Fill)
    assert protocol.fill_data(parsed.data, FrameDecoder()) == [1, "x"]


def test_replies_round_trip_to_typed_values() -> None:
    assert protocol.parse(_read(protocol.ack(4))) == protocol.Ack(4, True)
    assert protocol.parse(_read(protocol.refusal(4, "duplicate", "twice"))) == protocol.Ack(
        4, False, "duplicate", "twice"
    )
    assert protocol.parse(_read({**protocol.ping(), "seq": 2})) == protocol.Ping(2)
    assert protocol.parse(_read(protocol.pong(2, {"b": [0, 8]}))) == protocol.Pong(2, {"b": [0, 8]})
    assert protocol.parse(_read(protocol.error("timeout", "quiet"))) == protocol.Error(
        "timeout", "quiet"
    )


@pytest.mark.parametrize("message", [protocol.ready(), protocol.hello("c", "n", 1, ())])
def test_handshake_messages_parse_to_none_after_the_handshake(message: dict[str, Any]) -> None:
    assert protocol.parse(_read(message)) is None


def test_fill_data_refuses_what_is_not_msgpack_bytes() -> None:
    decoder = FrameDecoder()
    assert protocol.fill_data(None, decoder) is None
    with pytest.raises(ValueError, match="msgpack bytes"):
        protocol.fill_data("text", decoder)
    with pytest.raises(FrameError):
        protocol.fill_data(b"\xc1", decoder)  # never used in msgpack
    with pytest.raises(FrameError):
        protocol.fill_data(pack(1) + pack(2), decoder)  # two values


def _wrapped(decoder: FrameDecoder, raw: bytes) -> Any:
    """How task data used to be decoded: as the one field of a map."""
    return decoder.decode_body(b"\x81\xa1d" + raw)["d"]


def _nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


RAWS = [
    pack(None),
    pack({"a": [1, 2, {"b": b"x"}]}),
    pack([[]] * 1023),  # the container budget exactly (1,024 with the wrapping map)
    pack([[]] * 1024),  # one container too many
    pack({1: "int keys"}),
    msgpack.packb({(1, 2): 3}, use_bin_type=True),  # a key that is not str/int
    pack(_nested(31)),  # deep, but within the limit
    pack(_nested(32)),  # one level too deep
    msgpack.packb(msgpack.ExtType(1, b"x")),  # ext types are refused
]


@pytest.mark.parametrize("raw", RAWS)
def test_task_data_is_decoded_within_the_same_limits_as_before(raw: bytes) -> None:
    decoder = FrameDecoder(16_384)  # 1,024 containers
    try:
        before: Any = _wrapped(decoder, raw)
    except FrameError:
        with pytest.raises(FrameError):
            decoder.decode_value(raw)
        return
    assert decoder.decode_value(raw) == before
