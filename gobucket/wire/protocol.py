"""The messages of the group protocol and their validation.

Every frame is a map with a type under ``"t"``. The full protocol is written
down in ``docs/wire.md``; this module is its single source of truth in code.
The cryptography of the handshake is in :mod:`gobucket.wire.noise`.
"""

from __future__ import annotations

import enum
import os
from typing import Any

__all__ = [
    "PROTOCOL_VERSION",
    "MessageType",
    "ProtocolError",
    "RefusalCode",
    "new_nonce",
    "validate",
]

PROTOCOL_VERSION = 2
"""Bumped on any incompatible change; peers with another version are refused."""


class MessageType(enum.StrEnum):
    """The ``"t"`` field of a frame."""

    HELLO = "hello"
    NOISE = "noise"
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
    MessageType.HELLO: {"v": int, "cluster": str, "node": str, "port": int},
    MessageType.NOISE: {"v": int, "cluster": str, "m": bytes},
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
    """16 fresh random bytes (the plaintext HELLO's ``nonce``, kept for version-1 nodes)."""
    return os.urandom(16)
