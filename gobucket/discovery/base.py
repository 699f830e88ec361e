"""The peer-source interface: how a group learns of peers, from any source.

A source reports to the GroupActor by message: :class:`PeerUp` (a peer to
dial, or what we know of it changed) and :class:`PeerDown` (it left). Static
lists, mDNS and anything else plug in through :class:`PeerSource`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["PeerDown", "PeerEvent", "PeerSource", "PeerUp", "parse_address"]


@dataclass(frozen=True, slots=True)
class PeerUp:
    """A peer at ``address`` exists (new, or its details changed)."""

    address: tuple[str, int]
    source: str
    node: str | None = None
    cluster: str | None = None
    buckets: tuple[str, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class PeerDown:
    """The peer at ``address`` left (a goodbye, or the source lost it).

    For a discovered peer this is a hint: the group keeps a peer whose
    authenticated connection is alive, and drops it when that connection ends.
    """

    address: tuple[str, int]
    source: str


PeerEvent = PeerUp | PeerDown


class PeerSource(Protocol):
    """Something that finds peers: started with a sink for its events, stopped at the end."""

    name: str

    def start(self, sink: Callable[[PeerEvent], None]) -> None:
        """Begin reporting peers to ``sink`` (may be called from any thread)."""
        ...

    def stop(self) -> None:
        """Stop reporting; release sockets and threads."""
        ...


def parse_address(text: str, default_port: int | None = None) -> tuple[str, int]:
    """Parse ``"host:port"`` (``"[v6]:port"`` for IPv6) into ``(host, port)``.

    Raises:
        ValueError: not of that form, or the port is out of range.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"peer address must be 'host:port', got {text!r}")
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            host, port_text = text, ""
    if not port_text:
        if default_port is None:
            raise ValueError(f"peer address {text!r} has no port")
        port = default_port
    else:
        try:
            port = int(port_text)
        except ValueError:
            raise ValueError(f"peer address {text!r} has a bad port") from None
    if not host or not 0 < port < 65536:
        raise ValueError(f"peer address {text!r} is not 'host:port'")
    return host, port
