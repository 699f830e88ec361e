"""MdnsDiscovery: nodes announce themselves by mDNS (zeroconf) and browse for each other.

Each node registers ``<node id>._gobucket._tcp.local.`` with a TXT record of
its cluster, node id, protocol version and bucket names (never the secret),
and browses the same type. Only nodes of its own cluster are reported; two
clusters share a LAN without seeing each other. On stop the service is
unregistered, so peers see the goodbye at once; a node that vanishes without
one is marked down by its missed pings.

Without a secret, anyone on the LAN can announce themselves as a member of
your cluster: use a secret on any network you do not fully trust.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any

from zeroconf import (
    InterfaceChoice,
    IPVersion,
    ServiceBrowser,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
)

from gobucket.discovery.base import PeerDown, PeerEvent, PeerUp
from gobucket.wire.protocol import PROTOCOL_VERSION

__all__ = ["SERVICE_TYPE", "MdnsDiscovery", "browse"]

logger = logging.getLogger("gobucket.discovery")

SERVICE_TYPE = "_gobucket._tcp.local."
"""The mDNS service type every gobucket node announces."""


def _text(props: dict[bytes, bytes | None], key: str) -> str:
    value = props.get(key.encode())
    return value.decode("utf-8", "replace") if value else ""


def _local_addresses() -> list[str]:
    """This host's IPv4 addresses (best effort, no network traffic)."""
    addresses: set[str] = set()
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            addresses.add(str(info[4][0]))
    except OSError:
        pass
    try:  # the address of the default route, if there is one (UDP connect sends nothing)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))
            addresses.add(probe.getsockname()[0])
    except OSError:
        pass
    routable = sorted(a for a in addresses if not a.startswith("127."))
    return routable or ["127.0.0.1"]  # a host name that resolves to loopback is not a LAN address


def _fit(names: tuple[str, ...], limit: int = 240) -> str:
    """Bucket names joined for one TXT string (at most 255 bytes; peers learn all in HELLO)."""
    text = ""
    for name in names:
        candidate = f"{text},{name}" if text else name
        if len(candidate.encode()) > limit:
            break
        text = candidate
    return text


class MdnsDiscovery:
    """A :class:`~gobucket.discovery.base.PeerSource` over mDNS.

    Args:
        cluster: only nodes announcing this cluster are reported.
        node_id: this node's id (its mDNS instance name); its own record is ignored.
        port: the group's listening port to announce.
        buckets: the bucket names to announce.
        interfaces: IPv4 addresses to announce and listen on (all by default).
    """

    name = "mdns"

    def __init__(
        self,
        cluster: str,
        node_id: str,
        port: int | Callable[[], int],
        buckets: Iterable[str] = (),
        interfaces: Iterable[str] | None = None,
    ) -> None:
        self.cluster = cluster
        self.node_id = node_id
        self._port = port
        self.buckets = tuple(buckets)
        self.interfaces = list(interfaces) if interfaces is not None else None
        self._zc: Zeroconf | None = None
        self._info: ServiceInfo | None = None
        self._browser: ServiceBrowser | None = None
        self._sink: Callable[[PeerEvent], None] | None = None
        self._jobs: queue.SimpleQueue[tuple[str, ServiceStateChange] | None] = queue.SimpleQueue()
        self._known: dict[str, tuple[str, int]] = {}
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    @property
    def port(self) -> int:
        """The announced port."""
        return self._port() if callable(self._port) else self._port

    def start(self, sink: Callable[[PeerEvent], None]) -> None:
        """Open zeroconf, browse, and register this node (in the background)."""
        self._sink = sink
        self._thread = threading.Thread(target=self._work, name="gobucket-mdns", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Unregister (peers see the goodbye at once) and close zeroconf."""
        self._stopped.set()
        self._jobs.put(None)
        if self._thread is not None:
            self._thread.join(10)

    # the worker thread ------------------------------------------------------------
    def _work(self) -> None:
        try:
            self._open()
        except Exception:
            logger.exception("mDNS discovery could not start; the group stays static")
            self._close()
            return
        while True:
            job = self._jobs.get()
            if job is None or self._stopped.is_set():
                break
            try:
                self._resolve(*job)
            except Exception:
                logger.exception("resolving %s failed", job[0])
        self._close()

    def _open(self) -> None:
        interfaces: Any = self.interfaces if self.interfaces is not None else InterfaceChoice.All
        self._zc = Zeroconf(interfaces=interfaces, ip_version=IPVersion.V4Only)
        self._browser = ServiceBrowser(self._zc, SERVICE_TYPE, handlers=[self._on_change])
        addresses = self.interfaces or _local_addresses()
        self._info = ServiceInfo(
            SERVICE_TYPE,
            f"{self.node_id}.{SERVICE_TYPE}",
            port=self.port,
            properties={
                "cluster": self.cluster,
                "node": self.node_id,
                "v": str(PROTOCOL_VERSION),
                "buckets": _fit(self.buckets),
            },
            server=f"{self.node_id}.local.",
            parsed_addresses=addresses,
        )
        # Instance names are unique node ids, so the name-conflict probe is skipped.
        self._zc.register_service(self._info, cooperating_responders=True)
        logger.info("announced node %s on %s port %d", self.node_id, addresses, self.port)

    def _close(self) -> None:
        zc = self._zc
        if zc is None:
            return
        try:
            if self._browser is not None:
                self._browser.cancel()
            if self._info is not None:
                zc.unregister_service(self._info)
        except Exception:
            logger.debug("mDNS goodbye failed", exc_info=True)
        finally:
            zc.close()
            self._zc = None

    def _on_change(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        # Called on zeroconf's thread: hand over, never block it.
        self._jobs.put((name, state_change))

    def _resolve(self, name: str, change: ServiceStateChange) -> None:
        sink = self._sink
        if sink is None or self._zc is None:
            return
        if change is ServiceStateChange.Removed:
            address = self._known.pop(name, None)
            if address is not None:
                sink(PeerDown(address, self.name))
            return
        info = self._zc.get_service_info(SERVICE_TYPE, name, timeout=3000)
        if info is None:
            return
        props = info.properties
        node = _text(props, "node")
        if node == self.node_id or _text(props, "cluster") != self.cluster:
            return  # ourselves, or another cluster sharing the LAN
        if _text(props, "v") != str(PROTOCOL_VERSION):
            logger.warning("ignoring node %s: protocol version %s", node, _text(props, "v"))
            return
        addresses = info.parsed_addresses(IPVersion.V4Only)
        if not addresses or not info.port:
            return
        if self.interfaces:
            preferred = [a for a in addresses if a in self.interfaces] or addresses
        else:
            preferred = [a for a in addresses if not a.startswith("127.")] or addresses
        address = (preferred[0], int(info.port))
        buckets = tuple(b for b in _text(props, "buckets").split(",") if b)
        old = self._known.get(name)
        if old is not None and old != address:
            sink(PeerDown(old, self.name))
        self._known[name] = address
        sink(PeerUp(address, self.name, node=node, cluster=self.cluster, buckets=buckets))


def browse(
    cluster: str | None = None, timeout: float = 2.0, interfaces: Iterable[str] | None = None
) -> list[dict[str, Any]]:
    """Browse the LAN for ``timeout`` seconds; return the gobucket nodes seen.

    Each entry has ``node``, ``cluster``, ``address``, ``port``, ``buckets``
    and ``v``. ``cluster=None`` lists every cluster.
    """
    iface: Any = list(interfaces) if interfaces is not None else InterfaceChoice.All
    zc = Zeroconf(interfaces=iface, ip_version=IPVersion.V4Only)
    names: set[str] = set()
    found = threading.Event()

    def on_change(
        zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        names.add(name)
        found.set()

    browser = ServiceBrowser(zc, SERVICE_TYPE, handlers=[on_change])
    try:
        stopped = threading.Event()
        stopped.wait(timeout)
        nodes = []
        for name in sorted(names):
            info = zc.get_service_info(SERVICE_TYPE, name, timeout=1000)
            if info is None:
                continue
            props = info.properties
            if cluster is not None and _text(props, "cluster") != cluster:
                continue
            addresses = info.parsed_addresses(IPVersion.V4Only)
            nodes.append(
                {
                    "node": _text(props, "node"),
                    "cluster": _text(props, "cluster"),
                    "address": addresses[0] if addresses else "",
                    "port": info.port,
                    "buckets": [b for b in _text(props, "buckets").split(",") if b],
                    "v": _text(props, "v"),
                }
            )
        return nodes
    finally:
        browser.cancel()
        zc.close()
