"""Peer discovery for task bucket groups: one interface, several sources.

* :mod:`~gobucket.discovery.base` — :class:`PeerSource`, :class:`PeerUp`, :class:`PeerDown`.
* :mod:`~gobucket.discovery.static` — :class:`StaticDiscovery`, the ``peers`` list.
* :mod:`~gobucket.discovery.mdns` — :class:`MdnsDiscovery`, zeroconf announce + browse.
"""

from gobucket.discovery.base import PeerDown, PeerEvent, PeerSource, PeerUp, parse_address
from gobucket.discovery.mdns import SERVICE_TYPE, MdnsDiscovery, browse
from gobucket.discovery.static import StaticDiscovery

__all__ = [
    "SERVICE_TYPE",
    "MdnsDiscovery",
    "PeerDown",
    "PeerEvent",
    "PeerSource",
    "PeerUp",
    "StaticDiscovery",
    "browse",
    "parse_address",
]
