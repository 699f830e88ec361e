"""Peer discovery for task bucket groups: one interface, several sources.

* :mod:`~gobucket.discovery.base` — :class:`PeerSource`, :class:`PeerUp`, :class:`PeerDown`.
* :mod:`~gobucket.discovery.static` — :class:`StaticDiscovery`, the ``peers`` list.
"""

from gobucket.discovery.base import PeerDown, PeerEvent, PeerSource, PeerUp, parse_address
from gobucket.discovery.static import StaticDiscovery

__all__ = ["PeerDown", "PeerEvent", "PeerSource", "PeerUp", "StaticDiscovery", "parse_address"]
