"""One group connection on asyncio: frames in and out, and the handshake.

Handshake (see ``docs/wire.md``): both sides send HELLO (version, cluster,
node id, a fresh nonce, listening port, bucket names). With a secret, both
then send AUTH with an HMAC proof over the two nonces, and each checks the
other's. The server ends with READY. Anything unexpected closes the
connection with an ERROR frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from gobucket.wire.frames import DEFAULT_MAX_FRAME, FrameDecoder, encode_frame
from gobucket.wire.protocol import (
    PROTOCOL_VERSION,
    MessageType,
    ProtocolError,
    make_proof,
    new_nonce,
    validate,
    verify_proof,
)

__all__ = ["Connection", "Identity", "PeerHello", "handshake"]

logger = logging.getLogger("gobucket.wire")

CLIENT = b"client"
SERVER = b"server"


@dataclass(frozen=True, slots=True)
class Identity:
    """Who this node says it is in a HELLO."""

    cluster: str
    node: str
    port: int
    buckets: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PeerHello:
    """What the other side said in its HELLO (after it was checked)."""

    node: str
    cluster: str
    port: int
    buckets: tuple[str, ...] = field(default=())
    host: str = ""


class Connection:
    """Length-prefixed msgpack frames over an asyncio stream pair."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        max_frame: int = DEFAULT_MAX_FRAME,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.max_frame = max_frame
        self._decoder = FrameDecoder(max_frame)
        self._ready: list[dict[str, Any]] = []
        peer = writer.get_extra_info("peername")
        self.peer_host: str = peer[0] if peer else ""
        self.peer_port: int = peer[1] if peer else 0
        self.closed = False
        self._corked: list[bytes] | None = None

    async def read(self, timeout: float | None = None) -> dict[str, Any]:
        """The next valid message; raises ConnectionError at EOF, FrameError/ProtocolError."""
        while not self._ready:
            if timeout is None:
                data = await self.reader.read(65536)
            else:
                data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                raise ConnectionError("connection closed by peer")
            self._ready.extend(self._decoder.feed(data))
        message = self._ready.pop(0)
        validate(message)
        return message

    def send(self, message: dict[str, Any]) -> None:
        """Queue a message for writing (call :meth:`flush` to wait for the socket).

        While :meth:`cork` is in effect frames are gathered and written together
        by :meth:`uncork` — one system call for a whole batch of pipelined frames.
        """
        if self.closed:
            raise ConnectionError("connection is closed")
        frame = encode_frame(message, self.max_frame)
        if self._corked is not None:
            self._corked.append(frame)
        else:
            self.writer.write(frame)

    def cork(self) -> None:
        """Gather further frames instead of writing each at once."""
        if self._corked is None:
            self._corked = []

    def uncork(self) -> None:
        """Write every gathered frame in one go."""
        frames, self._corked = self._corked, None
        if frames and not self.closed:
            self.writer.write(b"".join(frames))

    async def flush(self) -> None:
        """Wait until the kernel took what was queued (back-pressure)."""
        await self.writer.drain()

    def fail(self, code: str, text: str) -> None:
        """Send an ERROR frame (best effort) and close."""
        self.uncork()  # replies already made go out before the error
        if not self.closed:
            with contextlib.suppress(Exception):
                self.writer.write(encode_frame({"t": "error", "code": code, "msg": text[:200]}))
        self.close()

    def close(self) -> None:
        """Close the socket (idempotent)."""
        if self.closed:
            return
        self.uncork()  # frames gathered so far are still sent (close flushes them)
        self.closed = True
        with contextlib.suppress(Exception):
            self.writer.close()


async def handshake(
    conn: Connection,
    me: Identity,
    secret: bytes | None,
    role: bytes,
    timeout: float = 5.0,
) -> PeerHello:
    """Run the handshake as ``CLIENT`` or ``SERVER``; return the peer's HELLO.

    Raises:
        ProtocolError: version, cluster or proof mismatch, or a bad message.
        ConnectionError / TimeoutError: the peer went away or was too slow.
    """
    nonce = new_nonce()
    conn.send(
        {
            "t": "hello",
            "v": PROTOCOL_VERSION,
            "cluster": me.cluster,
            "node": me.node,
            "nonce": nonce,
            "port": me.port,
            "buckets": list(me.buckets),
            "auth": secret is not None,
        }
    )
    await conn.flush()
    hello = await _expect(conn, MessageType.HELLO, timeout)
    if hello["v"] != PROTOCOL_VERSION:
        raise ProtocolError("version", f"protocol version {hello['v']} is not {PROTOCOL_VERSION}")
    if hello["cluster"] != me.cluster:
        raise ProtocolError("cluster", f"peer is in cluster {hello['cluster']!r}")
    if not 0 < len(hello["node"]) <= 255 or not 0 < len(hello["cluster"]) <= 255:
        raise ProtocolError("bad_message", "node and cluster names must be 1..255 characters")
    if hello["node"] == me.node:
        raise ProtocolError("self", "connected to itself")
    their_nonce: bytes = hello["nonce"]
    if len(their_nonce) < 16:
        raise ProtocolError("bad_message", "nonce too short")
    buckets = hello.get("buckets")
    names = tuple(b for b in buckets if isinstance(b, str)) if isinstance(buckets, list) else ()
    if secret is not None:
        conn.send(
            {
                "t": "auth",
                "proof": make_proof(secret, role, nonce, their_nonce, me.cluster, me.node),
            }
        )
        await conn.flush()
        auth = await _expect(conn, MessageType.AUTH, timeout)
        their_role = SERVER if role == CLIENT else CLIENT
        if not verify_proof(
            secret, their_role, auth["proof"], their_nonce, nonce, me.cluster, hello["node"]
        ):
            raise ProtocolError("auth", "the peer could not prove the cluster secret")
    elif hello.get("auth") is True:
        raise ProtocolError("auth", "the peer requires a secret and this node has none")
    if role == SERVER:
        conn.send({"t": "ready"})
        await conn.flush()
    else:
        await _expect(conn, MessageType.READY, timeout)
    return PeerHello(hello["node"], hello["cluster"], hello["port"], names, conn.peer_host)


async def _expect(conn: Connection, kind: MessageType, timeout: float) -> dict[str, Any]:
    message = await conn.read(timeout)
    if message["t"] == MessageType.ERROR:
        raise ProtocolError(str(message.get("code")), f"peer refused: {message.get('msg')}")
    if message["t"] != kind:
        raise ProtocolError("unexpected", f"expected {kind.value}, got {message['t']!r}")
    return message
