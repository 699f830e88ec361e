"""A node's network side: one asyncio loop thread and the listening server.

Actors never touch sockets: the GroupActor hands requests to this loop (through
each :class:`~gobucket.wire.peer.Peer`) with ``call_soon_threadsafe`` and hears
back by message. Each inbound connection is served by its own coroutine; what it
answers comes from a :class:`ServeHandler`, which never makes the loop wait. A
peer that sends garbage, too much, or the wrong secret is disconnected and
nobody else notices.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Future as ConcurrentFuture
from typing import TYPE_CHECKING, Any, Protocol

from gobucket._ratelimit import RateLimitedLog
from gobucket._threads import mark_runtime_thread
from gobucket.wire import protocol
from gobucket.wire.connection import SERVER, Connection, Identity, PeerHello, handshake
from gobucket.wire.frames import DEFAULT_MAX_FRAME, FrameError
from gobucket.wire.protocol import ProtocolError

if TYPE_CHECKING:
    from gobucket.types import BucketStats, PeerInfo

__all__ = [
    "MAX_UNAUTHENTICATED",
    "SILENCE_PINGS",
    "NetworkNode",
    "ServeHandler",
]

logger = logging.getLogger("gobucket.wire")

MAX_UNAUTHENTICATED = 128
"""Most inbound connections a node holds before their handshake is done.

One more is let in by closing the oldest one of the address that holds the most
(so one host flooding the node cannot lock other hosts out, and a real peer's
handshake, a few milliseconds, is never starved by connections that trickle).
"""

SILENCE_PINGS = 3
"""An authenticated inbound connection silent for this many ping intervals is closed."""

ACCEPT_BACKOFF = (0.05, 1.0)
"""First and longest pause (seconds) after a failed ``accept()`` (EMFILE and the like)."""

LISTEN_BACKLOG = 128
"""Connections the kernel queues for the server before it accepts them."""

LOG_INTERVAL = 30.0
"""Repeated network warnings of one kind are logged at most once per this many seconds."""

_ACCEPT_RETRY_AT_ONCE = frozenset(
    {errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EAGAIN, errno.EINTR}
)  # one connection's trouble (reset before accept, firewall): the next accept may work
_ACCEPT_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class _Inbound:
    """One accepted connection: its serving task, and what the silence watch needs."""

    __slots__ = ("authenticated", "host", "messages", "missed", "seen", "task", "timer", "writer")

    def __init__(self, writer: asyncio.StreamWriter, task: asyncio.Task[None]) -> None:
        self.writer = writer
        self.task = task
        peer = writer.get_extra_info("peername")
        self.host: str = peer[0] if peer else ""
        self.authenticated = False
        self.messages = 0  # messages read since the handshake
        self.seen = 0  # ... as of the last silence check
        self.missed = 0  # silence checks in a row that saw no message
        self.timer: asyncio.TimerHandle | None = None


class ServeHandler(Protocol):
    """What the server asks of the node it serves (:class:`gobucket.serve.BucketServer`)."""

    def loads(self) -> dict[str, list[int]]:
        """Each local bucket's ``[alive, max]``."""
        ...

    def serve_fill(
        self, peer: PeerHello, fill: protocol.Fill, answer: Callable[[bool, str, str], None]
    ) -> None:
        """Fill a task sent by ``peer``; call ``answer(accepted, refusal code, text)``.

        It must not wait: ``answer`` may be called before it returns, or later
        from any thread (the reply then goes out from the loop).
        """
        ...

    def allow(self, host: str) -> bool:
        """May a connection from ``host`` try the handshake (no-secret allow list)?"""
        ...

    def serve_status(self, answer: Callable[[list[BucketStats], list[PeerInfo]], None]) -> None:
        """Gather the local buckets' counters and the peer table for a STATUS request.

        Like :meth:`serve_fill` it must not wait: ``answer`` may be called
        before it returns, or later from any thread.
        """
        ...


class NetworkNode:
    """Runs the asyncio loop of a group node and its TCP server."""

    def __init__(
        self,
        identity: Callable[[], Identity],
        secret: bytes | None,
        handler: ServeHandler,
        host: str = "0.0.0.0",
        port: int = 0,
        max_frame: int = DEFAULT_MAX_FRAME,
        handshake_timeout: float = 5.0,
        name: str = "gobucket-net",
        ping_interval: float | None = None,
        max_unauthenticated: int = MAX_UNAUTHENTICATED,
    ) -> None:
        self.identity = identity
        self.secret = secret
        self.handler = handler
        self.host = host
        self.port = port
        self.max_frame = max_frame
        self.handshake_timeout = handshake_timeout
        # Clients ping every ping_interval (the group's; a handler that has one lends it):
        # an authenticated connection silent for SILENCE_PINGS intervals is closed.
        if ping_interval is None:
            ping_interval = getattr(handler, "ping_interval", None)
        self.ping_interval = float(ping_interval) if isinstance(ping_interval, int | float) else 1.0
        self.max_unauthenticated = max(1, max_unauthenticated)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._connections: set[Connection] = set()
        self._listeners: list[socket.socket] = []
        self._acceptors: list[asyncio.Task[None]] = []
        self._inbound: dict[asyncio.Task[None], _Inbound] = {}
        # Not yet authenticated, oldest first (insertion order).
        self._unauthenticated: dict[asyncio.Task[None], _Inbound] = {}
        self._closing = False
        self._log = RateLimitedLog(logger, LOG_INTERVAL)
        self.address: tuple[str, int] = (host, port)
        self.started_at: float | None = None
        """``time.monotonic()`` when :meth:`start` was called (the STATUS uptime)."""

    def start(self) -> tuple[str, int]:
        """Start the loop thread and bind the server; return the bound (host, port)."""
        self.started_at = time.monotonic()
        self._thread.start()
        self.address = self.submit(self._start_server()).result(10)
        return self.address

    def _run(self) -> None:
        mark_runtime_thread()  # actor messages sent from here may run inline (never blocks)
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    async def _start_server(self) -> tuple[str, int]:
        """Bind and listen; one accept loop per listening socket (see :meth:`_accept_forever`).

        Not ``asyncio.start_server``: its hidden accept loop cannot be told to
        back off quietly when ``accept()`` fails (EMFILE), nor to hold a cap on
        connections that have not authenticated yet.
        """
        loop = self.loop
        infos = await loop.getaddrinfo(
            self.host or None, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        port = self.port
        try:
            for family, kind, proto, _name, sockaddr in dict.fromkeys(infos):
                listener = socket.socket(family, kind, proto)
                self._listeners.append(listener)
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                if port:  # port 0: every address gets the port the first one picked
                    sockaddr = (sockaddr[0], port, *sockaddr[2:])
                try:
                    listener.bind(sockaddr)
                except OSError as error:
                    raise OSError(
                        error.errno,
                        f"error while attempting to bind on address {sockaddr!r}: {error.strerror}",
                    ) from None
                port = listener.getsockname()[1]
                listener.listen(LISTEN_BACKLOG)
                listener.setblocking(False)
        except BaseException:
            self._close_listeners()
            raise
        for listener in self._listeners:
            self._acceptors.append(loop.create_task(self._accept_forever(listener)))
        name = self._listeners[0].getsockname()
        return (name[0], name[1])

    def _close_listeners(self) -> None:
        listeners, self._listeners = self._listeners, []
        for listener in listeners:
            listener.close()

    @property
    def unauthenticated(self) -> int:
        """Inbound connections held now that have not finished their handshake."""
        return len(self._unauthenticated)

    @property
    def inbound(self) -> int:
        """Inbound connections held now (authenticated or not)."""
        return len(self._inbound)

    def submit(self, coro: Coroutine[Any, Any, Any]) -> ConcurrentFuture[Any]:
        """Run a coroutine on the loop from any thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Call ``fn(*args)`` on the loop thread soon (from any thread)."""
        if not self.loop.is_closed():
            with contextlib.suppress(RuntimeError):  # closed by stop() meanwhile: never mind
                self.loop.call_soon_threadsafe(fn, *args)

    def stop(self) -> None:
        """Close the server and every connection, then stop the loop."""
        if not self._thread.is_alive():
            return

        async def shutdown() -> None:
            self._closing = True
            for acceptor in self._acceptors:
                acceptor.cancel()
            for conn in list(self._connections):
                conn.close()
            for record in list(self._inbound.values()):
                record.writer.close()  # also those whose serving task has not run yet
            for _ in range(3):  # a cancelled task may start another (a drain): cancel it too
                tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                if not tasks:
                    break
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            self._close_listeners()
            await asyncio.sleep(0)  # let the closed transports release their sockets
            await asyncio.sleep(0)

        try:
            self.submit(shutdown()).result(5)
        except Exception:
            logger.debug("network shutdown was not clean", exc_info=True)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()  # its selector and wake-up pipe: no descriptor left behind

    # accepting -----------------------------------------------------------------------
    async def _accept_forever(self, listener: socket.socket) -> None:
        """Accept connections on ``listener`` until cancelled; never dies, never spins.

        A failed ``accept()`` that one connection caused (reset before it was
        accepted) is skipped. Any other failure, above all running out of file
        descriptors (EMFILE, ENFILE) or memory, pauses accepting for 0.05 s,
        doubling to 1 s while it lasts (the kernel keeps queueing connections
        meanwhile), and is logged at most once per ``LOG_INTERVAL``. Out of
        descriptors, the oldest unauthenticated connection is closed as well,
        so that an attacker holding descriptors cannot keep real peers out.
        """
        loop = self.loop
        backoff = ACCEPT_BACKOFF[0]
        failures = 0
        bound = listener.getsockname()
        where = f"{bound[0]}:{bound[1]}"
        while True:
            try:
                sock, _address = await loop.sock_accept(listener)
            except OSError as error:
                if error.errno in _ACCEPT_RETRY_AT_ONCE:
                    continue
                if self._closing:
                    return
                failures += 1
                self._log.log(
                    logging.ERROR,
                    f"accept {where}",
                    "cannot accept connections on %s: %s; retrying with back-off "
                    "(raise the open-file limit, ulimit -n, if this is EMFILE)",
                    where,
                    error,
                )
                if error.errno in _ACCEPT_OUT_OF_RESOURCES:
                    self._evict_one("out of file descriptors")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, ACCEPT_BACKOFF[1])
                continue
            if failures:
                logger.warning(
                    "accepting connections on %s again, after %d failed accept() calls",
                    where,
                    failures,
                )
                failures = 0
            backoff = ACCEPT_BACKOFF[0]
            try:
                reader, writer = await asyncio.open_connection(sock=sock)
            except OSError:
                sock.close()
                continue
            self._admit(reader, writer)

    def _admit(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve a new connection, within the cap on unauthenticated ones."""
        while len(self._unauthenticated) >= self.max_unauthenticated:
            self._evict_one(f"more than {self.max_unauthenticated} unauthenticated connections")
        task = self.loop.create_task(self._serve(reader, writer))
        record = _Inbound(writer, task)
        self._inbound[task] = record
        self._unauthenticated[task] = record

    def _evict_one(self, why: str) -> None:
        """Close the oldest unauthenticated connection of the address that holds the most."""
        if not self._unauthenticated:
            return
        counts: dict[str, int] = {}
        for record in self._unauthenticated.values():
            counts[record.host] = counts.get(record.host, 0) + 1
        host = max(counts, key=counts.__getitem__)  # ties: the host with the oldest one
        victim = next(r for r in self._unauthenticated.values() if r.host == host)
        self._forget(victim.task)
        victim.writer.transport.abort()
        victim.task.cancel()  # a task that never ran is dropped as it is
        self._log.log(
            logging.WARNING,
            "evict",
            "%s: closed the oldest unauthenticated connection, from %s (%d held by it)",
            why,
            host or "?",
            counts[host],
        )

    def _forget(self, task: asyncio.Task[None]) -> _Inbound | None:
        self._unauthenticated.pop(task, None)
        record = self._inbound.pop(task, None)
        if record is not None and record.timer is not None:
            record.timer.cancel()
            record.timer = None
        return record

    # serving -------------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(reader, writer, self.max_frame)
        self._connections.add(conn)
        task = asyncio.current_task()
        try:
            await self._serve_conn(conn)
        except asyncio.CancelledError:  # stop(), or closed to make room: not an error
            conn.close()
            raise
        except Exception as error:  # the handler must never take the server down
            self._log.log(
                logging.ERROR,
                f"serve {type(error).__name__}",
                "serving a connection from %s failed",
                conn.peer_host,
                exc_info=error,
            )
        finally:
            conn.close()
            self._connections.discard(conn)
            if task is not None:
                self._forget(task)

    def refused(self, host: str, error: BaseException) -> None:
        """Log a refused handshake from ``host``: once, then at most once per LOG_INTERVAL."""
        self._log.log(logging.WARNING, "refused", "refused %s: %s", host, error)

    def _authenticated(self, conn: Connection) -> _Inbound | None:
        """The current connection finished its handshake: off the cap, onto the silence watch."""
        task = asyncio.current_task()
        record = self._inbound.get(task) if task is not None else None
        if record is None:
            return None
        self._unauthenticated.pop(record.task, None)
        record.authenticated = True
        record.timer = self.loop.call_later(self.ping_interval, self._check_silence, record, conn)
        return record

    def _check_silence(self, record: _Inbound, conn: Connection) -> None:
        """Every ping interval: close the connection after SILENCE_PINGS silent ones in a row.

        Only intervals that this loop really lived through count (a check that
        runs late counts once), so a stalled node does not drop healthy peers.
        """
        record.timer = None
        if conn.closed:
            return
        if record.messages == record.seen:
            record.missed += 1
        else:
            record.missed = 0
            record.seen = record.messages
        if record.missed >= SILENCE_PINGS:
            silent = record.missed * self.ping_interval
            self._log.log(
                logging.WARNING,
                f"silent {record.host}",
                "closing the connection from %s: nothing received for over %.1f s "
                "(%d ping intervals)",
                record.host or "?",
                silent,
                record.missed,
            )
            conn.fail("timeout", f"nothing received for over {silent:.1f} s")
            return
        record.timer = self.loop.call_later(self.ping_interval, self._check_silence, record, conn)

    async def _serve_conn(self, conn: Connection) -> None:
        handler = self.handler
        if self.secret is None and not handler.allow(conn.peer_host):
            self.refused(conn.peer_host, ConnectionRefusedError("not on the peer list"))
            conn.fail("not_allowed", "address not on the peer list")
            return
        try:
            peer = await handshake(
                conn, self.identity(), self.secret, SERVER, self.handshake_timeout
            )
        except ProtocolError as error:
            self.refused(conn.peer_host, error)
            conn.fail(error.code, str(error))
            return
        except FrameError as error:
            self.refused(conn.peer_host, error)
            conn.fail("bad_frame", str(error))
            return
        except (ConnectionError, TimeoutError, OSError):
            return
        await self._serve_requests(conn, peer)

    def _answerer(self, conn: Connection, rid: int) -> Callable[[bool, str, str], None]:
        """What sends the ACK of FILL ``rid``: at once on the loop, else from the loop soon."""

        def answer(ok: bool, code: str, text: str) -> None:
            if threading.current_thread() is self._thread:
                _send_answer(conn, rid, ok, code, text)
            else:  # the bucket's actor replied on its own thread
                self.call_soon(_send_answer, conn, rid, ok, code, text)

        return answer

    def _serve_status(self, conn: Connection, rid: int) -> None:
        """Answer STATUS ``rid`` once the handler gathered it (on the loop, whoever gathers)."""

        def send(buckets: list[BucketStats], peers: list[PeerInfo]) -> None:
            if conn.closed:
                return
            me = self.identity()
            now = time.monotonic()
            started = self.started_at if self.started_at is not None else now
            conn.send(
                protocol.status_reply(rid, me.node, me.cluster, now - started, buckets, peers, now)
            )

        def answer(buckets: list[BucketStats], peers: list[PeerInfo]) -> None:
            if threading.current_thread() is self._thread:
                send(buckets, peers)
            else:  # an actor answered on its own thread
                self.call_soon(send, buckets, peers)

        serve_status = getattr(self.handler, "serve_status", None)
        if serve_status is None:  # a handler that serves no status: nothing to report
            answer([], [])
        else:
            serve_status(answer)

    async def _serve_requests(self, conn: Connection, peer: PeerHello) -> None:
        """After the handshake: answer FILLs, PINGs and STATUS requests until the connection ends.

        A connection silent for ``SILENCE_PINGS`` ping intervals is closed
        (:meth:`_check_silence`): a client pings every interval while it is up.
        """
        handler = self.handler
        record = self._authenticated(conn)
        while True:
            try:
                message = await conn.read()
            except (ProtocolError, FrameError) as error:
                code = error.code if isinstance(error, ProtocolError) else "bad_frame"
                logger.warning("disconnecting %s (%s): %s", peer.node, conn.peer_host, error)
                conn.fail(code, str(error))
                return
            except (ConnectionError, OSError):
                return
            if record is not None:
                record.messages += 1
            request = protocol.parse(message)
            conn.cork()  # replies to a batch of pipelined requests go out together
            if type(request) is protocol.Fill:
                handler.serve_fill(peer, request, self._answerer(conn, request.rid))
            elif type(request) is protocol.Ping:
                conn.send(protocol.pong(request.seq, handler.loads()))
            elif type(request) is protocol.StatusRequest:
                self._serve_status(conn, request.rid)
            elif type(request) is protocol.Error:
                logger.info("peer %s closed: %s", peer.node, request.text)
                return
            else:
                kind = message["t"]
                conn.fail("unexpected", f"{kind!r} is not expected from a client")
                return
            if not conn._ready:
                conn.uncork()
                try:
                    await conn.flush()
                except (ConnectionError, OSError):
                    return


def _send_answer(conn: Connection, rid: int, ok: bool, code: str, text: str) -> None:
    """Send the ACK of FILL ``rid`` (on the loop), unless the connection closed meanwhile."""
    if not conn.closed:
        conn.send(protocol.ack(rid) if ok else protocol.refusal(rid, code, text))
