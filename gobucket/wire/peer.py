"""Peer: one outbound link to another node of the group.

It dials the peer (and re-dials with backoff), authenticates, pings it for its
load, and carries pipelined requests: :meth:`Peer.request` calls back on the
network loop with the reply (the GroupActor hears of it by message, so it never
waits on a socket). It holds no actor.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
import random
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gobucket.wire import protocol
from gobucket.wire.connection import CLIENT, Connection, PeerHello, handshake
from gobucket.wire.frames import FrameError
from gobucket.wire.protocol import MessageType, ProtocolError

if TYPE_CHECKING:
    from gobucket.wire.node import NetworkNode

__all__ = ["MAX_IN_FLIGHT_PER_PEER", "NotSentError", "Peer", "PeerLostError"]

logger = logging.getLogger("gobucket.wire")

MAX_IN_FLIGHT_PER_PEER = 32_768
"""Most fills sent to one peer and not yet answered; one more is not sent (``NotSentError``:
the group tries the next peer). The routing keeps far fewer in flight as a rule: no more
than the room the peer last reported (see ``docs/group.md``, *Limits*)."""

CONNECT_TIMEOUT = 3.0
"""Seconds a TCP connect to a peer may take."""

Reply = protocol.Ack | BaseException
ReplyCallback = Callable[[Reply], None]


class PeerLostError(ConnectionError):
    """The connection closed after the request was sent and before its reply came."""


class NotSentError(ConnectionError):
    """The request was never written to the peer (it was down): safe to send elsewhere."""


class Peer:
    """Another node of the group, reached over one outbound connection.

    Args:
        node: this node's network side (loop, identity, secret).
        address: the peer's (host, port).
        events: called on the network loop with ``("up", PeerHello)``,
            ``("down", reason)``, ``("load", loads)``, ``("refused", reason)`` (the
            handshake failed) or ``("unreachable", reason)`` (no connection); each
            reason is a short text for people (logs, ``PeerInfo.reason``).
        ping_interval: seconds between pings; 3 missed pings mark the peer down.
    """

    def __init__(
        self,
        node: NetworkNode,
        address: tuple[str, int],
        events: Callable[[str, Any], None],
        ping_interval: float = 1.0,
    ) -> None:
        self.node = node
        self.address = address
        self.events = events
        self.ping_interval = ping_interval
        self.hello: PeerHello | None = None
        self._conn: Connection | None = None
        self._pending: dict[int, ReplyCallback] = {}
        self._ids = itertools.count(1)
        self._stopped = False
        self._task: asyncio.Task[None] | None = None
        self._missed = 0
        self._outbox: collections.deque[tuple[dict[str, Any], ReplyCallback]] = collections.deque()
        self._flush_scheduled = False
        self.attempts = 0  # connection attempts so far (for logs and tests)
        self._close_reason: str | None = None  # why this side closed the live connection

    def __repr__(self) -> str:
        node = self.hello.node if self.hello else "?"
        return f"<Peer {self.address[0]}:{self.address[1]} node={node}>"

    # life ------------------------------------------------------------------------------
    def start(self) -> None:
        """Begin dialling (from any thread)."""
        self.node.call_soon(self._start)

    def _start(self) -> None:
        if self._task is None and not self._stopped:
            self._task = self.node.loop.create_task(self._dial_forever())

    def stop(self) -> None:
        """Stop dialling and close the connection (from any thread)."""
        self._stopped = True
        self.node.call_soon(self._stop)

    def _stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._conn is not None:
            self._conn.close()

    # requests ----------------------------------------------------------------------------
    def request(self, message: dict[str, Any], callback: ReplyCallback) -> None:
        """Send a FILL or PING; ``callback`` gets the reply or an error, on the loop thread.

        Requests are batched: one wake-up of the network loop carries every
        request queued since the last one (pipelining without a syscall each).
        """
        self._outbox.append((message, callback))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.node.call_soon(self._flush_outbox)

    def _flush_outbox(self) -> None:
        self._flush_scheduled = False  # before draining: a later request schedules anew
        outbox = self._outbox
        conn = self._conn
        if conn is not None:
            conn.cork()  # the whole batch goes out in one write
        try:
            while outbox:
                message, callback = outbox.popleft()
                self._send_request(message, callback)
        finally:
            if conn is not None:
                conn.uncork()

    def _send_request(self, message: dict[str, Any], callback: ReplyCallback) -> None:
        conn = self._conn
        if conn is None or conn.closed:
            callback(NotSentError(f"peer {self.address} is not connected"))
            return
        if len(self._pending) >= MAX_IN_FLIGHT_PER_PEER and message["t"] != MessageType.PING:
            callback(
                NotSentError(
                    f"{MAX_IN_FLIGHT_PER_PEER} requests to {self.address} await an answer already"
                )
            )
            return
        rid = next(self._ids)
        key = "seq" if message["t"] == MessageType.PING else "rid"
        message = {**message, key: rid}
        try:
            conn.send(message)
        except (ConnectionError, OSError, FrameError, ValueError, TypeError) as error:
            callback(NotSentError(f"could not send to {self.address}: {error}"))
            return
        self._pending[rid] = callback
        if conn.writer.transport.get_write_buffer_size() > 1 << 20:
            self.node.loop.create_task(self._drain(conn))

    async def _drain(self, conn: Connection) -> None:
        try:
            await conn.flush()
        except (ConnectionError, OSError):
            conn.close()

    # the connection ---------------------------------------------------------------------------
    async def _dial_forever(self) -> None:
        backoff = 0.05
        host, port = self.address
        while not self._stopped:
            self.attempts += 1
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port), CONNECT_TIMEOUT
                )
            except (OSError, TimeoutError) as error:
                reason = _unreachable(host, error)
                logger.debug("cannot connect to %s:%s: %s", host, port, reason)
                self.events("unreachable", reason)
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, 2.0)
                continue
            conn = Connection(reader, writer, self.node.max_frame)
            try:
                hello = await handshake(
                    conn,
                    self.node.identity(),
                    self.node.secret,
                    CLIENT,
                    self.node.handshake_timeout,
                )
            except (ProtocolError, FrameError, ValueError, OverflowError) as error:
                # logged by the group, once and then rate-limited (PeerChanged "refused")
                logger.debug("peer %s:%s refused the handshake: %s", host, port, error)
                conn.fail(getattr(error, "code", "bad_frame"), str(error))
                self.events("refused", str(error))
                if getattr(error, "code", "") == "self":
                    logger.info("%s:%s is this node itself: not dialling it again", host, port)
                    return
                await asyncio.sleep(max(backoff, 1.0) * (0.5 + random.random()))
                backoff = min(backoff * 2, 5.0)
                continue
            except (ConnectionError, TimeoutError, OSError) as error:
                conn.close()
                failed = "timed out" if isinstance(error, TimeoutError) else str(error)
                self.events("unreachable", f"handshake failed: {failed or 'connection lost'}")
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.05
            self.hello = hello
            self._conn = conn
            self._missed = 0
            self._close_reason = None
            self.events("up", hello)
            pinger = asyncio.get_running_loop().create_task(self._ping_forever(conn))
            reason = "connection closed"
            try:
                reason = await self._read_forever(conn)
            finally:
                pinger.cancel()
                conn.close()
                self._conn = None
                reason = self._close_reason or reason
                lost, self._pending = self._pending, {}
                for callback in lost.values():
                    callback(PeerLostError(f"lost {host}:{port} before its reply ({reason})"))
                self.events("down", reason)

    async def _read_forever(self, conn: Connection) -> str:
        while True:
            try:
                message = await conn.read()
            except (ProtocolError, FrameError) as error:
                conn.fail("bad_frame", str(error))
                return f"bad frame: {error}"
            except (ConnectionError, OSError) as error:
                return str(error) or "connection closed"
            reply = protocol.parse(message)
            if type(reply) is protocol.Ack:
                callback = self._pending.pop(reply.rid, None)
                if callback is not None:
                    callback(reply)
            elif type(reply) is protocol.Pong:
                self._missed = 0
                self._pending.pop(reply.seq, None)
                self.events("load", reply.loads)
            elif type(reply) is protocol.Error:
                return f"peer error: {reply.code}: {reply.text}"
            else:
                kind = message["t"]
                conn.fail("unexpected", f"{kind!r} is not expected from a server")
                return f"unexpected {kind!r}"

    async def _ping_forever(self, conn: Connection) -> None:
        while not conn.closed:
            if self._missed >= 3:
                silent = self._missed * self.ping_interval
                self._close_reason = f"missed 3 pings (no answer for {silent:.1f} s)"
                logger.debug("peer %s %s: closing", self.address, self._close_reason)
                conn.close()
                return
            self._missed += 1
            self._send_request(protocol.ping(), _ignore)
            try:
                await conn.flush()
            except (ConnectionError, OSError):
                conn.close()
                return
            await asyncio.sleep(self.ping_interval)


def _ignore(_reply: Reply) -> None:
    return None


def _unreachable(host: str, error: BaseException) -> str:
    """Why a connect failed, for people: "cannot connect: connection refused" and the like."""
    if isinstance(error, socket.gaierror):
        return f"cannot resolve {host}: {error.strerror or error}"
    if isinstance(error, TimeoutError):
        return f"cannot connect: timed out after {CONNECT_TIMEOUT:g} s"
    number = getattr(error, "errno", None)
    if isinstance(number, int) and number > 0:
        return f"cannot connect: {os.strerror(number).lower()}"
    return f"cannot connect: {error}"
