"""A node's network side: one asyncio loop thread, the listening server, outbound refs.

Actors never touch sockets: the GroupActor hands requests to this loop with
``call_soon_threadsafe`` and hears back by message. Each inbound connection is
served by its own coroutine; a peer that sends garbage, too much, or the wrong
secret is disconnected and nobody else notices.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future as ConcurrentFuture
from typing import Any, Protocol

from gobucket.wire.connection import SERVER, Connection, Identity, PeerHello, handshake
from gobucket.wire.frames import DEFAULT_MAX_FRAME, FrameError
from gobucket.wire.protocol import MessageType, ProtocolError

__all__ = ["NetworkNode", "ServeHandler"]

logger = logging.getLogger("gobucket.wire")


class ServeHandler(Protocol):
    """What the server asks of the group it serves."""

    def loads(self) -> dict[str, list[int]]:
        """Each local bucket's ``[alive, max]``."""
        ...

    def serve_fill(self, peer: PeerHello, message: dict[str, Any]) -> tuple[bool, str, str]:
        """Fill a task sent by ``peer``; return ``(accepted, refusal code, text)``."""
        ...

    def allow(self, host: str) -> bool:
        """May a connection from ``host`` try the handshake (no-secret allow list)?"""
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
    ) -> None:
        self.identity = identity
        self.secret = secret
        self.handler = handler
        self.host = host
        self.port = port
        self.max_frame = max_frame
        self.handshake_timeout = handshake_timeout
        self.loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._connections: set[Connection] = set()
        self.address: tuple[str, int] = (host, port)

    def start(self) -> tuple[str, int]:
        """Start the loop thread and bind the server; return the bound (host, port)."""
        self._thread.start()
        self.address = self.submit(self._start_server()).result(10)
        return self.address

    def _run(self) -> None:
        from gobucket.actors.runtime import mark_runtime_thread

        mark_runtime_thread()  # actor messages sent from here may run inline (never blocks)
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    async def _start_server(self) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        sock = self._server.sockets[0].getsockname()
        return (sock[0], sock[1])

    def submit(self, coro: Coroutine[Any, Any, Any]) -> ConcurrentFuture[Any]:
        """Run a coroutine on the loop from any thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Call ``fn(*args)`` on the loop thread soon (from any thread)."""
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(fn, *args)

    def stop(self) -> None:
        """Close the server and every connection, then stop the loop."""
        if not self._thread.is_alive():
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for conn in list(self._connections):
                conn.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self.submit(shutdown()).result(5)
        except Exception:
            logger.debug("network shutdown was not clean", exc_info=True)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    # serving -------------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(reader, writer, self.max_frame)
        self._connections.add(conn)
        try:
            await self._serve_conn(conn)
        except asyncio.CancelledError:
            conn.close()
            raise
        except Exception:  # the handler must never take the server down
            logger.exception("connection from %s failed", conn.peer_host)
        finally:
            conn.close()
            self._connections.discard(conn)

    async def _serve_conn(self, conn: Connection) -> None:
        handler = self.handler
        if self.secret is None and not handler.allow(conn.peer_host):
            logger.warning("refused a connection from %s: not on the peer list", conn.peer_host)
            conn.fail("not_allowed", "address not on the peer list")
            return
        try:
            peer = await handshake(
                conn, self.identity(), self.secret, SERVER, self.handshake_timeout
            )
        except ProtocolError as error:
            logger.warning("refused %s: %s", conn.peer_host, error)
            conn.fail(error.code, str(error))
            return
        except FrameError as error:
            logger.warning("refused %s: %s", conn.peer_host, error)
            conn.fail("bad_frame", str(error))
            return
        except (ConnectionError, TimeoutError, OSError):
            return
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
            kind = message["t"]
            conn.cork()  # replies to a batch of pipelined requests go out together
            if kind == MessageType.FILL:
                ok, code, text = handler.serve_fill(peer, message)
                reply: dict[str, Any] = {"t": "ack", "rid": message["rid"], "ok": ok}
                if not ok:
                    reply["code"] = code
                    reply["msg"] = text
                conn.send(reply)
            elif kind == MessageType.PING:
                conn.send({"t": "pong", "seq": message["seq"], "loads": handler.loads()})
            elif kind == MessageType.ERROR:
                logger.info("peer %s closed: %s", peer.node, message.get("msg"))
                return
            else:
                conn.fail("unexpected", f"{kind!r} is not expected from a client")
                return
            if not conn._ready:
                conn.uncork()
                try:
                    await conn.flush()
                except (ConnectionError, OSError):
                    return
