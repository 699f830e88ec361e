"""Message validation, HMAC proofs, nonces, and peer address parsing."""

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
    make_proof,
    new_nonce,
    validate,
    verify_proof,
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
    MessageType.AUTH: {"t": "auth", "proof": b"\x01" * 32},
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
    MessageType.ERROR: {"t": "error", "code": "auth", "msg": "no"},
}


# --- validate -----------------------------------------------------------------------------


def test_protocol_version_is_one() -> None:
    assert PROTOCOL_VERSION == 1


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
OPTIONAL = {("hello", "buckets"), ("hello", "auth"), ("fill", "data")}


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
        ("hello", "nonce", "not-bytes"),
        ("hello", "port", 1.5),
        ("hello", "cluster", None),
        ("auth", "proof", "hex-string"),
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
        st.sampled_from(["t", "v", "seq", "rid", "ok", "loads", "proof", "code", "msg", "x"]),
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


# --- proofs -------------------------------------------------------------------------------

SECRET = b"cluster-key"
CLIENT_NONCE = b"c" * 16
SERVER_NONCE = b"s" * 16


def client_proof(secret: bytes = SECRET, node: str = "client-node") -> bytes:
    return make_proof(secret, b"client", CLIENT_NONCE, SERVER_NONCE, "default", node)


def test_make_proof_is_a_deterministic_sha256_hmac() -> None:
    proof = client_proof()
    assert isinstance(proof, bytes) and len(proof) == 32
    assert proof == client_proof()


def test_verify_proof_accepts_the_proof_made_by_the_other_side() -> None:
    # the server checks the client's proof with its own view: their nonce first
    assert verify_proof(
        SECRET, b"client", client_proof(), CLIENT_NONCE, SERVER_NONCE, "default", "client-node"
    )


@pytest.mark.parametrize(
    ("secret", "role", "their_nonce", "my_nonce", "cluster", "node"),
    [
        (b"wrong-key", b"client", CLIENT_NONCE, SERVER_NONCE, "default", "client-node"),
        (SECRET, b"server", CLIENT_NONCE, SERVER_NONCE, "default", "client-node"),  # replay
        (SECRET, b"client", SERVER_NONCE, CLIENT_NONCE, "default", "client-node"),  # swapped
        (SECRET, b"client", b"x" * 16, SERVER_NONCE, "default", "client-node"),  # stale nonce
        (SECRET, b"client", CLIENT_NONCE, b"y" * 16, "default", "client-node"),
        (SECRET, b"client", CLIENT_NONCE, SERVER_NONCE, "other", "client-node"),
        (SECRET, b"client", CLIENT_NONCE, SERVER_NONCE, "default", "someone-else"),
    ],
)
def test_verify_proof_refuses_any_mismatch(
    secret: bytes, role: bytes, their_nonce: bytes, my_nonce: bytes, cluster: str, node: str
) -> None:
    assert not verify_proof(secret, role, client_proof(), their_nonce, my_nonce, cluster, node)


@pytest.mark.parametrize("proof", [b"", b"\x00" * 32, client_proof()[:-1], client_proof() + b"x"])
def test_verify_proof_refuses_forged_or_truncated_proofs(proof: bytes) -> None:
    assert not verify_proof(
        SECRET, b"client", proof, CLIENT_NONCE, SERVER_NONCE, "default", "client-node"
    )


def test_proof_fields_are_length_prefixed_so_boundaries_cannot_shift() -> None:
    # moving a character from the cluster name into the node id must change the proof
    a = make_proof(SECRET, b"client", CLIENT_NONCE, SERVER_NONCE, "ab", "c")
    b = make_proof(SECRET, b"client", CLIENT_NONCE, SERVER_NONCE, "a", "bc")
    assert a != b


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
