"""Message validation, nonces, and peer address parsing (the handshake's cryptography is
tested in test_wire_crypto.py)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gobucket.discovery.base import PeerDown, PeerUp, parse_address
from gobucket.discovery.static import StaticDiscovery
from gobucket.wire.protocol import (
    PROTOCOL_VERSION,
    MessageType,
    ProtocolError,
    new_nonce,
    validate,
)

VALID: dict[MessageType, dict[str, Any]] = {
    MessageType.HELLO: {
        "t": "hello",
        "v": PROTOCOL_VERSION,
        "cluster": "default",
        "node": "n1",
        "nonce": b"\x00" * 16,
        "port": 6666,
        "buckets": ["sample"],
        "auth": True,
    },
    MessageType.NOISE: {
        "t": "noise",
        "v": PROTOCOL_VERSION,
        "cluster": "default",
        "m": b"\x01" * 48,
    },
    MessageType.READY: {"t": "ready"},
    MessageType.PING: {"t": "ping", "seq": 3},
    MessageType.PONG: {"t": "pong", "seq": 3, "loads": {"sample": [1, 10]}},
    MessageType.FILL: {
        "t": "fill",
        "rid": 1,
        "bucket": "sample",
        "id": "process::1",
        "data": b"\x80",
        "type": "immediate",
        "run_after": 0.0,
        "life_span": 5,
    },
    MessageType.ACK: {"t": "ack", "rid": 1, "ok": True},
    MessageType.STATUS: {"t": "status", "rid": 1},
    MessageType.STATUS_REPLY: {
        "t": "status_reply",
        "rid": 1,
        "node": "n1",
        "cluster": "default",
        "uptime": 1.5,
        "buckets": [],
        "peers": [],
    },
    MessageType.ERROR: {"t": "error", "code": "auth", "msg": "no"},
}


# --- validate -----------------------------------------------------------------------------


def test_protocol_version_is_two() -> None:
    assert PROTOCOL_VERSION == 2


def test_version_1s_auth_message_is_gone() -> None:
    with pytest.raises(ProtocolError) as info:
        validate({"t": "auth", "proof": b"\x01" * 32})
    assert info.value.code == "unknown_type"


def test_hello_no_longer_needs_a_nonce() -> None:
    hello = dict(VALID[MessageType.HELLO])
    del hello["nonce"]
    assert validate(hello) is MessageType.HELLO


@pytest.mark.parametrize("kind", list(MessageType))
def test_validate_accepts_every_well_formed_message(kind: MessageType) -> None:
    assert validate(dict(VALID[kind])) is kind


@pytest.mark.parametrize("t", [None, "", "HELLO", "bogus", 1, b"hello", ["hello"], True])
def test_validate_refuses_unknown_types(t: Any) -> None:
    message: dict[str, Any] = {"seq": 1}
    if t is not None:
        message["t"] = t
    with pytest.raises(ProtocolError) as info:
        validate(message)
    assert info.value.code == "unknown_type"


REQUIRED = [(kind, name) for kind, fields in VALID.items() for name in fields if name != "t"]
OPTIONAL = {("hello", "buckets"), ("hello", "auth"), ("hello", "nonce"), ("fill", "data")}


@pytest.mark.parametrize(("kind", "name"), [r for r in REQUIRED if r not in OPTIONAL])
def test_validate_refuses_a_missing_field(kind: MessageType, name: str) -> None:
    message = dict(VALID[kind])
    del message[name]
    with pytest.raises(ProtocolError) as info:
        validate(message)
    assert info.value.code == "bad_message"


@pytest.mark.parametrize(
    ("kind", "name", "value"),
    [
        ("hello", "v", "1"),
        ("hello", "v", True),  # a bool is not an int on the wire
        ("hello", "port", 1.5),
        ("hello", "cluster", None),
        ("noise", "m", "hex-string"),
        ("noise", "v", True),
        ("noise", "cluster", b"default"),
        ("ping", "seq", False),
        ("ping", "seq", 1.0),
        ("pong", "loads", [1, 2]),
        ("fill", "rid", "1"),
        ("fill", "run_after", "0"),
        ("fill", "life_span", True),
        ("fill", "id", 5),
        ("ack", "ok", 1),
        ("error", "code", 5),
    ],
)
def test_validate_refuses_a_mistyped_field(kind: str, name: str, value: Any) -> None:
    message = dict(VALID[MessageType(kind)])
    message[name] = value
    with pytest.raises(ProtocolError) as info:
        validate(message)
    assert info.value.code == "bad_message"


@pytest.mark.parametrize(
    "loads",
    [
        {"sample": [1]},
        {"sample": [1, 2, 3]},
        {"sample": (1, 2)},
        {"sample": [1, "2"]},
        {"sample": [True, 2]},
        {"sample": [1.0, 2]},
        {5: [1, 2]},
        {"sample": None},
    ],
)
def test_validate_refuses_malformed_pong_loads(loads: dict[Any, Any]) -> None:
    with pytest.raises(ProtocolError):
        validate({"t": "pong", "seq": 1, "loads": loads})


def test_validate_accepts_empty_loads_and_int_durations() -> None:
    assert validate({"t": "pong", "seq": 0, "loads": {}}) is MessageType.PONG
    fill = dict(VALID[MessageType.FILL], run_after=1, life_span=2.5)
    assert validate(fill) is MessageType.FILL


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["t", "v", "seq", "rid", "ok", "loads", "m", "code", "msg", "x"]),
        st.none()
        | st.booleans()
        | st.integers()
        | st.text(max_size=6)
        | st.binary(max_size=4)
        | st.sampled_from(list(MessageType))
        | st.dictionaries(st.text(max_size=3), st.lists(st.integers(), max_size=3), max_size=2),
        max_size=6,
    )
)
def test_fuzz_validate_returns_a_type_or_raises_protocol_error(message: dict[str, Any]) -> None:
    try:
        kind = validate(message)
    except ProtocolError as error:
        assert error.code in {"unknown_type", "bad_message"}
        return
    assert kind == message["t"]


# --- nonces ------------------------------------------------------------------------------


def test_new_nonce_is_16_fresh_bytes() -> None:
    nonces = {new_nonce() for _ in range(100)}
    assert len(nonces) == 100
    assert all(isinstance(n, bytes) and len(n) == 16 for n in nonces)


# --- discovery ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:6666", ("127.0.0.1", 6666)),
        ("  10.0.0.2:1 ", ("10.0.0.2", 1)),
        ("node-a.local:65535", ("node-a.local", 65535)),
        ("[::1]:6666", ("::1", 6666)),
        ("[fe80::1%eth0]:80", ("fe80::1%eth0", 80)),
    ],
)
def test_parse_address_accepts_host_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "127.0.0.1",
        "127.0.0.1:",
        ":6666",
        "127.0.0.1:0",
        "127.0.0.1:65536",
        "127.0.0.1:-1",
        "127.0.0.1:port",
        "[::1]",
        "[::1]6666",
        "[]:6666",
        None,
        6666,
    ],
)
def test_parse_address_refuses_anything_else(text: Any) -> None:
    with pytest.raises(ValueError):
        parse_address(text)


def test_parse_address_uses_the_default_port_only_when_none_is_given() -> None:
    assert parse_address("10.0.0.2", default_port=6666) == ("10.0.0.2", 6666)
    assert parse_address("[::1]", default_port=7) == ("::1", 7)
    assert parse_address("10.0.0.2:1", default_port=6666) == ("10.0.0.2", 1)
    with pytest.raises(ValueError):
        parse_address("10.0.0.2:x", default_port=6666)


def test_static_discovery_reports_each_peer_once_as_up() -> None:
    source = StaticDiscovery(["127.0.0.1:1", "[::1]:2"])
    events: list[Any] = []
    source.start(events.append)
    source.stop()
    assert events == [PeerUp(("127.0.0.1", 1), "static"), PeerUp(("::1", 2), "static")]
    assert not any(isinstance(e, PeerDown) for e in events)


def test_static_discovery_refuses_a_bad_address() -> None:
    with pytest.raises(ValueError):
        StaticDiscovery(["127.0.0.1:1", "nonsense"])
