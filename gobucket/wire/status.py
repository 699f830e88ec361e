"""Asking a running node for its status: dial, authenticate, send STATUS, read the reply.

What ``gobucket status`` and ``gobucket top`` use, and what a script may call::

    status = fetch_status("10.0.0.2:6666", secret=b"cluster-key")
    for bucket in status.buckets:
        print(bucket.name, bucket.alive, bucket.end_rate_10s)

The connection is authenticated exactly like a peer's (the Noise handshake with
the cluster secret; without a secret the node lets in only addresses on its
peer list) and closed after the one reply.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import uuid

from gobucket.discovery.base import parse_address
from gobucket.types import NodeStatus
from gobucket.wire import protocol
from gobucket.wire.connection import CLIENT, Connection, Identity, handshake
from gobucket.wire.frames import DEFAULT_MAX_FRAME, FrameError
from gobucket.wire.protocol import ProtocolError

__all__ = [
    "HandshakeRefusedError",
    "NodeUnreachableError",
    "StatusError",
    "fetch_status",
    "fetch_status_async",
]

DEFAULT_TIMEOUT = 5.0
"""Seconds a status request may take, dialling and handshake included."""


class StatusError(ConnectionError):
    """A node's status could not be had; ``address`` is the ``(host, port)`` asked."""

    def __init__(self, address: tuple[str, int], reason: str) -> None:
        super().__init__(f"{address[0]}:{address[1]}: {reason}")
        self.address = address
        self.reason = reason


class NodeUnreachableError(StatusError):
    """No connection: nothing listens there, the host is unknown, or it timed out."""


class HandshakeRefusedError(StatusError):
    """The node refused the handshake: another secret, another cluster, or not allowed."""


def _address(address: str | tuple[str, int]) -> tuple[str, int]:
    if isinstance(address, tuple):
        return address[0], int(address[1])
    return parse_address(address)


def _secret(secret: str | bytes | None) -> bytes | None:
    if isinstance(secret, str):
        return secret.encode()
    return secret or None


async def fetch_status_async(
    address: str | tuple[str, int],
    secret: str | bytes | None = None,
    cluster: str = "default",
    *,
    timeout: float = DEFAULT_TIMEOUT,
    max_frame: int = DEFAULT_MAX_FRAME,
) -> NodeStatus:
    """Ask the node at ``address`` (``"host:port"`` or a tuple) for its status.

    Its ``address`` field is the address asked.

    Raises:
        NodeUnreachableError: no connection could be made in time.
        HandshakeRefusedError: the node refused the handshake (wrong secret or cluster,
            a secret where it has none or the reverse, not on its peer list).
        StatusError: the connection broke, or the node answered with an error.
        ValueError: ``address`` is not ``host:port``.
    """
    host, port = _address(address)
    where = (host, port)
    key = _secret(secret)
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError) as error:
        raise NodeUnreachableError(where, _why_unreachable(error, timeout)) from None
    conn = Connection(reader, writer, max_frame)
    try:
        me = Identity(cluster, f"status-{uuid.uuid4().hex[:8]}", 0)
        try:
            await handshake(conn, me, key, CLIENT, timeout)
        except (ProtocolError, FrameError) as error:
            raise HandshakeRefusedError(where, f"handshake refused: {error}") from None
        except TimeoutError:
            raise HandshakeRefusedError(
                where, f"handshake refused: no answer within {timeout:g} s"
            ) from None
        except (ConnectionError, OSError) as error:
            raise HandshakeRefusedError(
                where, f"handshake refused: connection closed ({error})"
            ) from None
        try:
            async with asyncio.timeout(timeout):
                conn.send(protocol.status(1))
                await conn.flush()
                while True:
                    reply = protocol.parse(await conn.read())
                    if isinstance(reply, protocol.StatusReply) and reply.rid == 1:
                        return dataclasses.replace(reply.status, address=where)
                    if isinstance(reply, protocol.Error):
                        raise StatusError(where, f"the node refused: {reply.code}: {reply.text}")
                    # anything else (a stray PONG) is not the answer: read on
        except TimeoutError:
            raise StatusError(where, f"no status within {timeout:g} s") from None
        except (ProtocolError, FrameError) as error:
            raise StatusError(where, f"bad status reply: {error}") from None
        except (ConnectionError, OSError) as error:
            raise StatusError(where, f"connection lost: {error or 'closed'}") from None
    finally:
        conn.close()


def fetch_status(
    address: str | tuple[str, int],
    secret: str | bytes | None = None,
    cluster: str = "default",
    *,
    timeout: float = DEFAULT_TIMEOUT,
    max_frame: int = DEFAULT_MAX_FRAME,
) -> NodeStatus:
    """Blocking :func:`fetch_status_async` (runs its own event loop: not from inside one)."""
    return asyncio.run(
        fetch_status_async(address, secret, cluster, timeout=timeout, max_frame=max_frame)
    )


def _why_unreachable(error: BaseException, timeout: float) -> str:
    if isinstance(error, TimeoutError):
        return f"unreachable: no connection within {timeout:g} s"
    if isinstance(error, socket.gaierror):
        return f"unreachable: cannot resolve the host ({error.strerror or error})"
    number = getattr(error, "errno", None)
    if isinstance(number, int) and number > 0:
        return f"unreachable: {os.strerror(number).lower()}"
    return f"unreachable: {error or type(error).__name__}"
