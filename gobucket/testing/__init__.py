"""Helpers for testing gobucket clusters: a virtual LAN of network namespaces (``netns``) and
the one child-process node, driven by JSON lines (``python -m gobucket.testing.node``)."""

from gobucket.testing.netns import VirtualLan, netns_available

__all__ = ["VirtualLan", "netns_available"]
