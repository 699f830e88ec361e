"""The messages of the group protocol: built, validated and parsed here only.

Every frame is a map with a type under ``"t"``. The full protocol is written
down in ``docs/wire.md``; this module is its single source of truth in code:
every message a node sends is made by one of the builders below (``hello``,
``noise``, ``ready``, ``ping``, ``pong``, ``fill``, ``ack``, ``refusal``,
``status``, ``status_reply``, ``error``), and every message read after the
handshake is turned into a typed value by :func:`parse`. The cryptography of the handshake is in
:mod:`gobucket.wire.noise`.
"""

from __future__ import annotations

import enum
import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gobucket.types import BucketStats, NodeStatus, PeerInfo
from gobucket.wire.frames import FrameDecoder

__all__ = [
    "PROTOCOL_VERSION",
    "Ack",
    "Error",
    "Fill",
    "Message",
    "MessageType",
    "Ping",
    "Pong",
    "ProtocolError",
    "RefusalCode",
    "StatusReply",
    "StatusRequest",
    "ack",
    "error",
    "fill",
    "fill_data",
    "hello",
    "new_nonce",
    "noise",
    "parse",
    "ping",
    "plain_hello",
    "pong",
    "ready",
    "refusal",
    "status",
    "status_reply",
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
    STATUS = "status"
    STATUS_REPLY = "status_reply"
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
    MessageType.STATUS: {"rid": int},
    MessageType.STATUS_REPLY: {
        "rid": int,
        "node": str,
        "cluster": str,
        "uptime": (int, float),
        "buckets": list,
        "peers": list,
    },
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


MAX_ERROR_TEXT = 200
"""Characters of an ERROR frame's text that are sent (the rest is cut off)."""


# --- builders (a dict per message; keys in the order they go on the wire) ----------------


def hello(cluster: str, node: str, port: int, buckets: Iterable[str]) -> dict[str, Any]:
    """HELLO: who this node is (inside the Noise handshake, or in clear without a secret)."""
    return {
        "t": MessageType.HELLO.value,
        "v": PROTOCOL_VERSION,
        "cluster": cluster,
        "node": node,
        "port": port,
        "buckets": list(buckets),
    }


def plain_hello(cluster: str, node: str, port: int, buckets: Iterable[str]) -> dict[str, Any]:
    """The plaintext HELLO of a node without a secret.

    ``nonce`` is unused since version 2; a version-1 node needs it to report the version.
    """
    return {**hello(cluster, node, port, buckets), "nonce": new_nonce(), "auth": False}


def noise(cluster: str, handshake_message: bytes) -> dict[str, Any]:
    """NOISE: one Noise handshake message (its payload is the sender's HELLO)."""
    return {
        "t": MessageType.NOISE.value,
        "v": PROTOCOL_VERSION,
        "cluster": cluster,
        "m": handshake_message,
    }


def ready() -> dict[str, Any]:
    """READY: the handshake is done."""
    return {"t": MessageType.READY.value}


def ping() -> dict[str, Any]:
    """PING asking for the peer's loads (its ``seq`` is added when it is sent)."""
    return {"t": MessageType.PING.value}


def pong(seq: int, loads: dict[str, list[int]]) -> dict[str, Any]:
    """PONG: the answer to PING ``seq``, with each bucket's ``[alive, max]``."""
    return {"t": MessageType.PONG.value, "seq": seq, "loads": loads}


def fill(
    bucket: str,
    task_id: str,
    packed_data: bytes,
    task_type: str,
    run_after: float,
    life_span: float,
) -> dict[str, Any]:
    """FILL asking a peer to take a task (its ``rid`` is added when it is sent).

    ``packed_data`` is the task's data, msgpack-encoded once by the sender.
    """
    return {
        "t": MessageType.FILL.value,
        "bucket": bucket,
        "id": task_id,
        "data": packed_data,
        "type": task_type,
        "run_after": run_after,
        "life_span": life_span,
    }


def ack(rid: int) -> dict[str, Any]:
    """ACK: the FILL ``rid`` was accepted."""
    return {"t": MessageType.ACK.value, "rid": rid, "ok": True}


def refusal(rid: int, code: str, text: str) -> dict[str, Any]:
    """A negative ACK: the FILL ``rid`` was refused (``code`` is a :class:`RefusalCode`)."""
    return {"t": MessageType.ACK.value, "rid": rid, "ok": False, "code": code, "msg": text}


def status(rid: int) -> dict[str, Any]:
    """STATUS: ask a node what it holds and knows (answered by a STATUS_REPLY ``rid``)."""
    return {"t": MessageType.STATUS.value, "rid": rid}


_ENDS = {
    "finished": "finished",
    "execute_errors": "execute_error",
    "exhausted": "exhausted",
    "panicked": "panicked",
    "drained": "drained",
    "handed_off": "handed_off",
}
"""BucketStats field -> the key of its count under a bucket's ``"ends"`` on the wire."""

_BUCKET_COUNTS = ("alive", "filled", "running", "queued", "overrunning")
_REFUSALS = {"refused_full": "full", "refused_duplicate": "duplicate"}
_POOL = ("ready", "delayed", "claimed")
"""A shared pool's depth for a bucket (``BucketStats.pool_<key>``), sent only when not 0."""


def status_reply(
    rid: int,
    node: str,
    cluster: str,
    uptime: float,
    buckets: Iterable[BucketStats],
    peers: Iterable[PeerInfo],
    now: float,
) -> dict[str, Any]:
    """STATUS_REPLY: this node's buckets and peers (``now``: this process's monotonic time).

    A peer's ``last_seen`` goes out as ``seen_ago``, seconds before the reply.
    """
    return {
        "t": MessageType.STATUS_REPLY.value,
        "rid": rid,
        "node": node,
        "cluster": cluster,
        "uptime": float(uptime),
        "buckets": [_bucket_out(b) for b in buckets],
        "peers": [_peer_out(p, now) for p in peers],
    }


def _bucket_out(stats: BucketStats) -> dict[str, Any]:
    out: dict[str, Any] = {"name": stats.name, "max": stats.max_bucket}
    for field_name in _BUCKET_COUNTS:
        out[field_name] = getattr(stats, field_name)
    out["ends"] = {key: getattr(stats, name) for name, key in _ENDS.items()}
    out["refused"] = {key: getattr(stats, name) for name, key in _REFUSALS.items()}
    out["crashed"] = stats.crashed
    out["closed"] = stats.closed
    out["rate_10s"] = float(stats.end_rate_10s)
    out["rate_60s"] = float(stats.end_rate_60s)
    if stats.pool_ready or stats.pool_delayed or stats.pool_claimed:
        out["pool"] = {key: getattr(stats, f"pool_{key}") for key in _POOL}
    return out


def _peer_out(peer: PeerInfo, now: float) -> dict[str, Any]:
    return {
        "address": [peer.address[0], peer.address[1]],
        "node": peer.node,
        "up": peer.up,
        "source": peer.source,
        "reason": peer.reason,
        "seen_ago": None if peer.last_seen is None else max(0.0, now - peer.last_seen),
        "loads": {name: [load[0], load[1]] for name, load in peer.loads.items()},
        "buckets": list(peer.buckets),
    }


def error(code: str, text: str) -> dict[str, Any]:
    """ERROR: the sender closes the connection, and says why."""
    return {"t": MessageType.ERROR.value, "code": code, "msg": text[:MAX_ERROR_TEXT]}


# --- parsed messages (what is read after the handshake) -----------------------------------


@dataclass(frozen=True, slots=True)
class Ping:
    """A PING: answer with a PONG of the same ``seq``."""

    seq: int


@dataclass(frozen=True, slots=True)
class Pong:
    """A PONG: the peer's loads, bucket name to ``[alive, max]``."""

    seq: int
    loads: dict[str, list[int]]


@dataclass(frozen=True, slots=True)
class Fill:
    """A FILL: a peer asks this node to take a task.

    ``data`` is as sent: msgpack bytes (decode it with :func:`fill_data`), or
    ``None`` for no data; anything else is refused when it is decoded.
    """

    rid: int
    bucket: str
    task_id: str
    task_type: str
    run_after: float
    life_span: float
    data: Any = None


@dataclass(frozen=True, slots=True)
class Ack:
    """An ACK: the FILL ``rid`` was accepted (``ok``), or refused with ``code`` and ``text``."""

    rid: int
    ok: bool
    code: Any = None
    text: Any = None


@dataclass(frozen=True, slots=True)
class Error:
    """An ERROR: the peer closes the connection."""

    code: str
    text: str


@dataclass(frozen=True, slots=True)
class StatusRequest:
    """A STATUS: answer with a STATUS_REPLY of the same ``rid``."""

    rid: int


@dataclass(frozen=True, slots=True)
class StatusReply:
    """A STATUS_REPLY: what the node holds and knows.

    ``status.address`` is left empty (``("", 0)``): the asker knows where it dialled.
    """

    rid: int
    status: NodeStatus


Message = Ping | Pong | Fill | Ack | StatusRequest | StatusReply | Error
"""What :func:`parse` returns."""


def parse(message: dict[str, Any]) -> Message | None:
    """The typed value of a message read after the handshake (already :func:`validate`-d).

    ``None`` for a handshake message (HELLO, NOISE, READY): none belongs there, and
    the reader says so in its own words (it knows whether it is the client or the server).
    """
    kind = message["t"]
    if kind == MessageType.FILL:
        return Fill(
            message["rid"],
            message["bucket"],
            message["id"],
            message["type"],
            message["run_after"],
            message["life_span"],
            message.get("data"),
        )
    if kind == MessageType.ACK:
        return Ack(message["rid"], message["ok"], message.get("code"), message.get("msg"))
    if kind == MessageType.PING:
        return Ping(message["seq"])
    if kind == MessageType.PONG:
        return Pong(message["seq"], message["loads"])
    if kind == MessageType.STATUS:
        return StatusRequest(message["rid"])
    if kind == MessageType.STATUS_REPLY:
        return StatusReply(message["rid"], _node_status(message))
    if kind == MessageType.ERROR:
        return Error(message["code"], message["msg"])
    return None


# --- the STATUS_REPLY, read distrustfully ----------------------------------------------


def _bad(what: str) -> ProtocolError:
    return ProtocolError("bad_message", f"status_reply: {what} is invalid")


def _count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _bad(what)
    return value


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(what)
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise _bad(what)
    return number


def _text(value: Any, what: str, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise _bad(what)
    return value


def _map(value: Any, what: str) -> dict[Any, Any]:
    if not isinstance(value, dict):
        raise _bad(what)
    return value


def _node_status(message: dict[str, Any]) -> NodeStatus:
    buckets = tuple(_bucket_in(b) for b in message["buckets"])
    peers = tuple(_peer_in(p) for p in message["peers"])
    return NodeStatus(
        message["node"],
        message["cluster"],
        ("", 0),
        buckets,
        peers,
        _number(message["uptime"], "uptime"),
    )


def _bucket_in(raw: Any) -> BucketStats:
    raw = _map(raw, "a bucket")
    name = _text(raw.get("name"), "a bucket's name")
    ends = _map(raw.get("ends"), f"the ends of {name!r}")
    refused = _map(raw.get("refused", {}), f"the refusals of {name!r}")
    fields: dict[str, Any] = {
        key: _count(raw.get(key), f"{key} of {name!r}") for key in _BUCKET_COUNTS
    }
    for field_name, key in _ENDS.items():
        fields[field_name] = _count(ends.get(key, 0), f"ends {key} of {name!r}")
    for field_name, key in _REFUSALS.items():
        fields[field_name] = _count(refused.get(key, 0), f"refused {key} of {name!r}")
    closed = raw.get("closed", False)
    if not isinstance(closed, bool):
        raise _bad(f"closed of {name!r}")
    pool = _map(raw.get("pool", {}), f"the pool of {name!r}")
    for key in _POOL:
        fields[f"pool_{key}"] = _count(pool.get(key, 0), f"pool {key} of {name!r}")
    return BucketStats(
        name=name,
        max_bucket=_count(raw.get("max"), f"max of {name!r}"),
        crashed=_count(raw.get("crashed", 0), f"crashed of {name!r}"),
        closed=closed,
        end_rate_10s=_number(raw.get("rate_10s", 0.0), f"rate_10s of {name!r}"),
        end_rate_60s=_number(raw.get("rate_60s", 0.0), f"rate_60s of {name!r}"),
        **fields,
    )


def _peer_in(raw: Any) -> PeerInfo:
    raw = _map(raw, "a peer")
    address = raw.get("address")
    if (
        not isinstance(address, list)
        or len(address) != 2
        or not isinstance(address[0], str)
        or isinstance(address[1], bool)
        or not isinstance(address[1], int)
    ):
        raise _bad("a peer's address")
    where = f"peer {address[0]}:{address[1]}"
    up = raw.get("up")
    if not isinstance(up, bool):
        raise _bad(f"up of {where}")
    loads: dict[str, tuple[int, int]] = {}
    for name, load in _map(raw.get("loads", {}), f"loads of {where}").items():
        if not isinstance(name, str) or not isinstance(load, list) or len(load) != 2:
            raise _bad(f"loads of {where}")
        loads[name] = (_count(load[0], f"loads of {where}"), _count(load[1], f"loads of {where}"))
    buckets = raw.get("buckets", [])
    if not isinstance(buckets, list) or not all(isinstance(b, str) for b in buckets):
        raise _bad(f"buckets of {where}")
    seen_ago = raw.get("seen_ago")
    return PeerInfo(
        (address[0], address[1]),
        _text(raw.get("node"), f"node of {where}", optional=True),
        up,
        _text(raw.get("source"), f"source of {where}"),
        loads,
        None if seen_ago is None else time.monotonic() - _number(seen_ago, f"seen_ago of {where}"),
        tuple(buckets),
        _text(raw.get("reason"), f"reason of {where}", optional=True),
    )


def fill_data(data: Any, decoder: FrameDecoder) -> Any:
    """Decode a FILL's task data (msgpack bytes, or ``None``) with the distrustful decoder.

    Raises:
        ValueError: the data is not bytes.
        FrameError: the bytes are not one msgpack value within the decoder's limits.
    """
    if data is None:
        return None
    if not isinstance(data, bytes):
        raise ValueError("task data must be sent as msgpack bytes")
    return decoder.decode_value(data)
