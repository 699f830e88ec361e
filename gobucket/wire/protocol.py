"""The messages of the group protocol, their validation, and the HMAC proofs.

Every frame is a map with a type under ``"t"``. The full protocol is written
down in ``docs/wire.md``; this module is its single source of truth in code.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
from typing import Any

__all__ = [
    "PROTOCOL_VERSION",
    "MessageType",
    "ProtocolError",
    "RefusalCode",
    "make_proof",
    "new_nonce",
    "validate",
    "verify_proof",
]

PROTOCOL_VERSION = 1
"""Bumped on any incompatible change; peers with another version are refused."""


class MessageType(enum.StrEnum):
    """The ``"t"`` field of a frame."""

    HELLO = "hello"
    AUTH = "auth"
    READY = "ready"
    PING = "ping"
    PONG = "pong"
    FILL = "fill"
    ACK = "ack"
    ERROR = "error"


class RefusalCode(enum.StrEnum):
    """Why a peer refused a fill (the ``"code"`` of a negative ACK)."""

    FULL = "full"
    DUPLICATE = "duplicate"
    NO_SUCH_BUCKET = "no_bucket"
    BAD_DATA = "bad_data"
    CLOSED = "closed"
    INTERNAL = "internal"


class ProtocolError(Exception):
    """A peer broke the protocol; the connection is closed with an ERROR frame."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


_FIELDS: dict[str, dict[str, type | tuple[type, ...]]] = {
    MessageType.HELLO: {"v": int, "cluster": str, "node": str, "nonce": bytes, "port": int},
    MessageType.AUTH: {"proof": bytes},
    MessageType.READY: {},
    MessageType.PING: {"seq": int},
    MessageType.PONG: {"seq": int, "loads": dict},
    MessageType.FILL: {
        "rid": int,
        "bucket": str,
        "id": str,
        "type": str,
        "run_after": (int, float),
        "life_span": (int, float),
    },
    MessageType.ACK: {"rid": int, "ok": bool},
    MessageType.ERROR: {"code": str, "msg": str},
}


def validate(message: dict[str, Any]) -> MessageType:
    """Check a decoded frame's type and fields; return its type.

    Raises:
        ProtocolError: unknown type or a missing/mistyped field.
    """
    kind = message.get("t")
    if not isinstance(kind, str) or kind not in _FIELDS:
        raise ProtocolError("unknown_type", f"unknown message type {kind!r}")
    for field, expected in _FIELDS[kind].items():
        value = message.get(field)
        if isinstance(value, bool) and expected is not bool:
            raise ProtocolError("bad_message", f"field {field!r} of {kind!r} is invalid")
        if not isinstance(value, expected):
            raise ProtocolError("bad_message", f"field {field!r} of {kind!r} is invalid")
    if kind == MessageType.PONG:
        for name, load in message["loads"].items():
            if (
                not isinstance(name, str)
                or not isinstance(load, list)
                or len(load) != 2
                or not all(isinstance(n, int) and not isinstance(n, bool) for n in load)
            ):
                raise ProtocolError("bad_message", "loads must map bucket names to [alive, max]")
    return MessageType(kind)


def new_nonce() -> bytes:
    """16 fresh random bytes for a handshake."""
    return os.urandom(16)


def make_proof(
    secret: bytes, role: bytes, my_nonce: bytes, peer_nonce: bytes, cluster: str, node: str
) -> bytes:
    """HMAC-SHA256 proving knowledge of ``secret`` over both fresh nonces.

    ``role`` (b"client" or b"server") keeps one side's proof from being
    replayed as the other's.
    """
    mac = hmac.new(secret, digestmod=hashlib.sha256)
    for part in (b"gobucket/1", role, peer_nonce, my_nonce, cluster.encode(), node.encode()):
        mac.update(len(part).to_bytes(2, "big"))
        mac.update(part)
    return mac.digest()


def verify_proof(
    secret: bytes,
    role: bytes,
    proof: bytes,
    their_nonce: bytes,
    my_nonce: bytes,
    cluster: str,
    their_node: str,
) -> bool:
    """Check the peer's proof (constant time)."""
    expected = make_proof(secret, role, their_nonce, my_nonce, cluster, their_node)
    return hmac.compare_digest(expected, proof)
