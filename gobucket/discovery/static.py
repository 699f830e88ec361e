"""StaticDiscovery: the peers named in the group's ``peers`` list."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from gobucket.discovery.base import PeerEvent, PeerUp, parse_address

__all__ = ["StaticDiscovery"]


class StaticDiscovery:
    """Reports each ``host:port`` of a fixed list once, at start.

    The group dials them and re-dials with backoff whenever they drop, so a
    static peer is never "gone" — only down until it answers again.
    """

    name = "static"

    def __init__(self, peers: Iterable[str], default_port: int | None = None) -> None:
        self.addresses = [parse_address(p, default_port) for p in peers]

    def start(self, sink: Callable[[PeerEvent], None]) -> None:
        """Report every listed peer."""
        for address in self.addresses:
            sink(PeerUp(address, self.name))

    def stop(self) -> None:
        """Nothing to release."""
