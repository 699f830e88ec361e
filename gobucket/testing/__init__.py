"""Helpers for testing gobucket clusters: a virtual LAN of network namespaces, a node process."""

from gobucket.testing.netns import VirtualLan, netns_available

__all__ = ["VirtualLan", "netns_available"]
