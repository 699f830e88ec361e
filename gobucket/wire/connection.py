"""One group connection on asyncio: frames in and out, the handshake, and encryption.

The whole handshake has ONE deadline (``timeout``, 5 s by default), however the
bytes trickle in, and until it ends a frame may be at most
:data:`PREAUTH_MAX_FRAME` bytes. See ``docs/wire.md`` for the exchange.

* **With a secret** (both sides): ``Noise_NNpsk0_25519_ChaChaPoly_SHA256``
  (:mod:`gobucket.wire.noise`). The client's NOISE frame carries the first
  handshake message, whose encrypted payload is its HELLO; the server answers
  with the second, carrying its own HELLO; the client's first encrypted record
  is READY, which proves to the server that it holds the keys. Every frame
  after that travels in encrypted, authenticated records, one cipher per
  direction; a record that does not open closes the connection.
* **Without a secret** (both sides): both send a plaintext HELLO; the server
  ends with READY. Nothing is encrypted (trusted networks only).

Anything unexpected closes the connection, with an ERROR frame where it helps.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from gobucket.wire import protocol
from gobucket.wire.frames import (
    DEFAULT_MAX_FRAME,
    FrameDecoder,
    FrameError,
    encode_frame,
    pack,
)
from gobucket.wire.noise import (
    MAX_MESSAGE,
    CipherState,
    Handshake,
    HandshakeError,
    RecordError,
    RecordReader,
    RecordWriter,
    derive_psk,
    prologue,
)
from gobucket.wire.protocol import PROTOCOL_VERSION, MessageType, ProtocolError, validate

__all__ = [
    "CLIENT",
    "PREAUTH_MAX_FRAME",
    "SERVER",
    "Connection",
    "Identity",
    "PeerHello",
    "handshake",
]

logger = logging.getLogger("gobucket.wire")

CLIENT = b"client"
SERVER = b"server"

PREAUTH_MAX_FRAME = 8192
"""Largest frame (and, with a secret, record) accepted before the handshake ends."""


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
    """Length-prefixed msgpack frames over an asyncio stream pair, encrypted once keyed.

    Until :func:`handshake` succeeds, frames (and records) are limited to
    :data:`PREAUTH_MAX_FRAME` bytes; afterwards to ``max_frame``.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        max_frame: int = DEFAULT_MAX_FRAME,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.max_frame = max_frame
        self._decoder = FrameDecoder(min(max_frame, PREAUTH_MAX_FRAME))
        self._ready: collections.deque[dict[str, Any]] = collections.deque()
        peer = writer.get_extra_info("peername")
        self.peer_host: str = peer[0] if peer else ""
        self.peer_port: int = peer[1] if peer else 0
        self.closed = False
        self.authenticated = False
        """True once the handshake succeeded."""
        self._corked: list[bytes] | None = None
        self._sealer: RecordWriter | None = None
        self._records: RecordReader | None = None
        self._recheck = False  # records buffered before authentication wait to be opened

    @property
    def encrypted(self) -> bool:
        """Frames travel in encrypted records (a cluster secret is in use)."""
        return self._sealer is not None

    # reading -----------------------------------------------------------------------------
    async def read(self, timeout: float | None = None) -> dict[str, Any]:
        """The next valid message.

        Raises:
            ConnectionError: EOF, or (:class:`~gobucket.wire.noise.RecordError`) a
                record that did not open; the connection is then already closed.
            FrameError / ProtocolError: a malformed frame or message.
        """
        ready = self._ready
        while not ready:
            if self._recheck:
                self._recheck = False
                self._ingest(b"")
                continue
            size = 65536 if self.authenticated else PREAUTH_MAX_FRAME
            if timeout is None:
                data = await self.reader.read(size)
            else:
                data = await asyncio.wait_for(self.reader.read(size), timeout)
            if not data:
                raise ConnectionError("connection closed by peer")
            self._ingest(data)
        message = ready.popleft()
        validate(message)
        return message

    def _ingest(self, data: bytes) -> None:
        records = self._records
        if records is None:
            self._ready.extend(self._decoder.feed(data))
            return
        records.feed(data)
        try:
            plaintext = records.open_all()
        except RecordError as error:
            self._abort(error)
            raise
        if plaintext:
            self._ready.extend(self._decoder.feed(plaintext))

    def _abort(self, error: Exception) -> None:
        """The stream cannot be trusted: close at once, sending nothing more."""
        logger.warning(
            "closing the connection with %s:%s: %s", self.peer_host, self.peer_port, error
        )
        self._corked = None
        self.close()

    # writing -----------------------------------------------------------------------------
    def send(self, message: dict[str, Any]) -> None:
        """Queue a message for writing (call :meth:`flush` to wait for the socket).

        While :meth:`cork` is in effect frames are gathered and written together
        by :meth:`uncork` — one system call (and one encrypted record per 64 KiB)
        for a whole batch of pipelined frames.
        """
        if self.closed:
            raise ConnectionError("connection is closed")
        frame = encode_frame(message, self.max_frame)
        if self._corked is not None:
            self._corked.append(frame)
        else:
            self._write(frame)

    def _write(self, data: bytes) -> None:
        sealer = self._sealer
        self.writer.write(data if sealer is None else sealer.seal(data))

    def cork(self) -> None:
        """Gather further frames instead of writing each at once."""
        if self._corked is None:
            self._corked = []

    def uncork(self) -> None:
        """Write every gathered frame in one go."""
        frames, self._corked = self._corked, None
        if frames and not self.closed:
            self._write(frames[0] if len(frames) == 1 else b"".join(frames))

    async def flush(self) -> None:
        """Wait until the kernel took what was queued (back-pressure)."""
        await self.writer.drain()

    def fail(self, code: str, text: str) -> None:
        """Send an ERROR frame (best effort; encrypted once keyed) and close."""
        self.uncork()  # replies already made go out before the error
        if not self.closed:
            with contextlib.suppress(Exception):
                self._write(encode_frame(protocol.error(code, text)))
        self.close()

    def close(self) -> None:
        """Close the socket (idempotent)."""
        if self.closed:
            return
        self.uncork()  # frames gathered so far are still sent (close flushes them)
        self.closed = True
        with contextlib.suppress(Exception):
            self.writer.close()

    # the handshake's side of the connection ------------------------------------------------
    def _send_handshake(self, message: dict[str, Any]) -> None:
        """Write one plaintext handshake frame, within the pre-authentication limit."""
        try:
            frame = encode_frame(message, PREAUTH_MAX_FRAME)
        except FrameError as error:
            raise ProtocolError(
                "bad_message",
                f"this node's {message['t']} does not fit the handshake ({error}): "
                "too many or too long bucket names",
            ) from None
        self._write(frame)

    def _start_encryption(self, send: CipherState, receive: CipherState) -> None:
        """From now on every frame travels in records; the peer is not yet authenticated."""
        if self._ready:
            raise ProtocolError("unexpected", "plaintext frames after the handshake message")
        leftover = self._decoder.take_buffered()
        self._sealer = RecordWriter(send)
        self._records = RecordReader(receive, max_record=min(PREAUTH_MAX_FRAME, MAX_MESSAGE))
        self._records.feed(leftover)

    async def _read_first_record(self) -> dict[str, Any]:
        """The peer's first record, opened alone: it must hold exactly one message."""
        records = self._records
        assert records is not None
        while True:
            try:
                plaintext = records.next_record()
            except RecordError as error:
                self._abort(error)
                raise
            if plaintext is not None:
                break
            data = await self.reader.read(PREAUTH_MAX_FRAME)
            if not data:
                raise ConnectionError("connection closed by peer")
            records.feed(data)
        messages = self._decoder.feed(plaintext)
        if len(messages) != 1 or self._decoder.buffered:
            raise ProtocolError("bad_message", "the first record must hold exactly one message")
        validate(messages[0])
        return messages[0]

    def _authenticated(self) -> None:
        """The handshake succeeded: lift the pre-authentication limits."""
        self.authenticated = True
        self._decoder.max_frame = self.max_frame
        if self._records is not None:
            self._records.max_record = MAX_MESSAGE
            self._recheck = self._records.buffered > 0


async def handshake(
    conn: Connection,
    me: Identity,
    secret: bytes | None,
    role: bytes,
    timeout: float = 5.0,
) -> PeerHello:
    """Run the handshake as ``CLIENT`` or ``SERVER``; return the peer's checked HELLO.

    ``timeout`` bounds the whole handshake, not each read.

    Raises:
        ProtocolError: version, cluster, secret or role mismatch, or a bad message.
        FrameError: a malformed or oversized frame.
        ConnectionError / TimeoutError: the peer went away or was too slow.
    """
    try:
        async with asyncio.timeout(timeout):
            if secret is None:
                peer = await _plain_handshake(conn, me, role)
            else:
                peer = await _noise_handshake(conn, me, secret, role)
    except TimeoutError:
        logger.info(
            "handshake with %s:%s did not finish within %.1f s",
            conn.peer_host,
            conn.peer_port,
            timeout,
        )
        raise
    conn._authenticated()
    return peer


def _check_hello(
    hello: dict[str, Any], me: Identity, conn: Connection, check_self: bool = True
) -> PeerHello:
    if hello["v"] != PROTOCOL_VERSION:
        raise ProtocolError("version", f"protocol version {hello['v']} is not {PROTOCOL_VERSION}")
    if hello["cluster"] != me.cluster:
        raise ProtocolError("cluster", f"peer is in cluster {hello['cluster']!r}")
    if not 0 < len(hello["node"]) <= 255 or not 0 < len(hello["cluster"]) <= 255:
        raise ProtocolError("bad_message", "node and cluster names must be 1..255 characters")
    if check_self and hello["node"] == me.node:
        raise ProtocolError("self", "connected to itself")
    buckets = hello.get("buckets")
    names = tuple(b for b in buckets if isinstance(b, str)) if isinstance(buckets, list) else ()
    return PeerHello(hello["node"], hello["cluster"], hello["port"], names, conn.peer_host)


async def _plain_handshake(conn: Connection, me: Identity, role: bytes) -> PeerHello:
    conn._send_handshake(protocol.plain_hello(me.cluster, me.node, me.port, me.buckets))
    await conn.flush()
    hello = await conn.read()
    kind = hello["t"]
    if kind == MessageType.NOISE:
        _check_version(hello)
        raise ProtocolError(
            "auth", "the peer has a cluster secret and this node has none: give both the same"
        )
    if kind == MessageType.ERROR:
        raise ProtocolError(str(hello.get("code")), f"peer refused: {hello.get('msg')}")
    if kind != MessageType.HELLO:
        raise ProtocolError("unexpected", f"expected hello, got {kind!r}")
    peer = _check_hello(hello, me, conn)
    if hello.get("auth") is True:
        raise ProtocolError("auth", "the peer requires a secret and this node has none")
    if role == SERVER:
        conn._send_handshake(protocol.ready())
        await conn.flush()
    else:
        ready = await conn.read()
        if ready["t"] == MessageType.ERROR:
            raise ProtocolError(str(ready.get("code")), f"peer refused: {ready.get('msg')}")
        if ready["t"] != MessageType.READY:
            raise ProtocolError("unexpected", f"expected ready, got {ready['t']!r}")
    return peer


def _check_version(message: dict[str, Any]) -> None:
    if message["v"] != PROTOCOL_VERSION:
        raise ProtocolError("version", f"protocol version {message['v']} is not {PROTOCOL_VERSION}")


async def _read_handshake(conn: Connection, me: Identity, state: Handshake) -> bytes:
    """Read the peer's handshake message and open it: its payload, or ``auth`` refused."""
    message = await _read_noise(conn, me)
    try:
        payload: bytes = state.read_message(message)
    except HandshakeError:
        raise ProtocolError(
            "auth",
            "the peer could not prove the cluster secret "
            "(another secret, or the handshake was tampered with)",
        ) from None
    return payload


async def _read_noise(conn: Connection, me: Identity) -> bytes:
    """The peer's NOISE frame (its handshake message), or the reason there is none."""
    message = await conn.read()
    kind = message["t"]
    if kind == MessageType.NOISE:
        _check_version(message)
        if message["cluster"] != me.cluster:
            raise ProtocolError("cluster", f"peer is in cluster {message['cluster']!r}")
        noise: bytes = message["m"]
        return noise
    if kind == MessageType.HELLO:  # a plaintext HELLO: the peer has no secret
        _check_version(message)
        raise ProtocolError(
            "auth", "the peer has no cluster secret and this node has one: give both the same"
        )
    if kind == MessageType.ERROR:
        # Unauthenticated: anyone on the path could have sent it. It ends this attempt,
        # but its code is not trusted (a forged "self" must not stop the dialling).
        raise ProtocolError(
            "refused",
            f"peer refused the handshake ({message.get('code')}): {message.get('msg')}",
        )
    raise ProtocolError("unexpected", f"expected noise, got {kind!r}")


def _decode_hello(payload: bytes) -> dict[str, Any]:
    """The HELLO inside a handshake payload (already authenticated by the handshake)."""
    hello = FrameDecoder(PREAUTH_MAX_FRAME).decode_body(payload)
    validate(hello)
    if hello["t"] != MessageType.HELLO:
        raise ProtocolError("unexpected", f"expected hello, got {hello['t']!r}")
    return hello


async def _noise_handshake(conn: Connection, me: Identity, secret: bytes, role: bytes) -> PeerHello:
    state = Handshake(
        initiator=role == CLIENT,
        psk=derive_psk(secret, me.cluster),
        prologue=prologue(PROTOCOL_VERSION, me.cluster),
    )
    payload = pack(protocol.hello(me.cluster, me.node, me.port, me.buckets))

    def noise_frame(message: bytes) -> dict[str, Any]:
        return protocol.noise(me.cluster, message)

    if role == CLIENT:
        # 1. -> psk, e   (our HELLO, readable only with the cluster key)
        conn._send_handshake(noise_frame(state.write_message(payload)))
        await conn.flush()
        # 2. <- e, ee    (the server's HELLO: it proves the key, for this handshake only)
        their_payload = await _read_handshake(conn, me, state)
        send, receive = state.split()
        conn._start_encryption(send, receive)
        peer = _check_hello(_decode_hello(their_payload), me, conn)
        # 3. the first record, READY, proves to the server that we hold the keys
        conn.send(protocol.ready())
        await conn.flush()
        return peer

    # 1. -> psk, e
    their_payload = await _read_handshake(conn, me, state)
    # A recorded first message can be replayed: nothing is trusted before step 3.
    peer = _check_hello(_decode_hello(their_payload), me, conn, check_self=False)
    # 2. <- e, ee
    conn._send_handshake(noise_frame(state.write_message(payload)))
    send, receive = state.split()
    conn._start_encryption(send, receive)
    await conn.flush()
    # 3. the client's first record must open with the new keys and hold READY
    ready = await conn._read_first_record()
    if ready["t"] == MessageType.ERROR:  # authenticated: it comes from the client itself
        raise ProtocolError(str(ready.get("code")), f"peer refused: {ready.get('msg')}")
    if ready["t"] != MessageType.READY:
        raise ProtocolError("unexpected", f"expected ready, got {ready['t']!r}")
    if peer.node == me.node:
        raise ProtocolError("self", "connected to itself")
    return peer
