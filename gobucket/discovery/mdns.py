"""MdnsDiscovery: nodes announce themselves by mDNS (zeroconf) and browse for each other.

Each node registers ``<node id>._gobucket._tcp.local.`` with a TXT record of
its cluster, node id, protocol version and bucket names (never the secret),
and browses the same type. Only nodes of its own cluster are reported; two
clusters share a LAN without seeing each other.

What mDNS says is a hint, never a proof: anyone on the LAN can announce any
name, or send a goodbye for it. So this source only *reports* what it sees;
the group decides (a goodbye or an address change never removes or redirects
a peer whose authenticated connection is alive). To stay correct in front of
forged or unresolvable records, the source:

* resolves names **concurrently** (up to :attr:`MdnsDiscovery.max_resolving`
  at once, each bounded by :attr:`MdnsDiscovery.resolve_timeout`), so names
  that never resolve cannot hold up a real announcement;
* retries a name that did not resolve with backoff, and tracks at most
  :attr:`MdnsDiscovery.max_names` names;
* after a removal (a goodbye, real or forged), **re-browses** a few times so a
  node that is still there answers again and is reported again within seconds;
* re-reports every resolved peer every :attr:`MdnsDiscovery.refresh_interval`
  seconds, so a peer the group dropped while it was unreachable is found again.

Discovery is only turned on with a cluster secret (or an explicit
``insecure=True``): see ``docs/discovery.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from zeroconf import (  # type: ignore[attr-defined]  # DNS* are re-exported, not in __all__
    DNSOutgoing,
    DNSQuestion,
    InterfaceChoice,
    IPVersion,
    ServiceBrowser,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
    current_time_millis,
)

from gobucket.discovery.base import PeerDown, PeerEvent, PeerUp
from gobucket.wire.protocol import PROTOCOL_VERSION

__all__ = ["SERVICE_TYPE", "MdnsDiscovery", "browse"]

logger = logging.getLogger("gobucket.discovery")

SERVICE_TYPE = "_gobucket._tcp.local."
"""The mDNS service type every gobucket node announces."""

# DNS constants (RFC 1035), for the re-browse query.
_TYPE_PTR = 12
_CLASS_IN = 1
_FLAGS_QUERY = 0x0000


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


@dataclass(eq=False)
class _Name:
    """What the source knows of one browsed service name."""

    event: PeerUp | None = None  # the peer reported for it (resolved and of our cluster)
    task: asyncio.Task[None] | None = None  # its resolution in flight
    again: bool = False  # it changed while being resolved: resolve once more
    settled: bool = False  # resolved (reported or ignored): no retry needed
    failures: int = 0  # resolutions in a row that timed out
    retry_at: float = 0.0  # monotonic time of the next retry, when not settled


class MdnsDiscovery:
    """A :class:`~gobucket.discovery.base.PeerSource` over mDNS.

    Args:
        cluster: only nodes announcing this cluster are reported.
        node_id: this node's id (its mDNS instance name); its own record is ignored.
        port: the group's listening port to announce.
        buckets: the bucket names to announce.
        interfaces: IPv4 addresses to announce and listen on (all by default).

    The limits below are class attributes (set them on the class or an
    instance before :meth:`start`).
    """

    name = "mdns"

    resolve_timeout: float = 1.0
    """Seconds one name may take to resolve before it counts as a failure."""
    max_resolving: int = 64
    """Names resolved at the same time."""
    max_names: int = 512
    """Service names tracked at most; announcements of more names are ignored."""
    refresh_interval: float = 5.0
    """Seconds between re-reports of resolved peers (and retries of unresolved names)."""
    retry_first: float = 2.0
    retry_max: float = 120.0
    """Backoff of a name that did not resolve: ``retry_first`` doubling to ``retry_max``."""
    rescue_after: tuple[float, ...] = (0.3, 1.0, 2.5, 5.0, 8.0, 15.0)
    """Delays (seconds after a removal) of the re-browse queries that find a peer again."""

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
        self._loop: asyncio.AbstractEventLoop | None = None
        self._info: ServiceInfo | None = None
        self._browser: ServiceBrowser | None = None
        self._sink: Callable[[PeerEvent], None] | None = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self._left = threading.Event()  # the goodbye was sent (or there is none to send)
        # Everything below is touched on zeroconf's event loop only.
        self._names: dict[str, _Name] = {}
        self._slots: asyncio.Semaphore | None = None
        self._closing = False
        self._tick_handle: asyncio.TimerHandle | None = None
        self._rescue_handles: list[asyncio.TimerHandle] = []
        self._last_rebrowse = 0.0
        self._last_full_warning = 0.0
        self._counts: dict[str, int] = dict.fromkeys(
            (
                "resolving",
                "peak_resolving",
                "resolved",
                "unresolved",
                "removed",
                "reported_up",
                "reported_down",
                "rebrowses",
                "refreshes",
                "ignored_names",
            ),
            0,
        )

    @property
    def port(self) -> int:
        """The announced port."""
        return self._port() if callable(self._port) else self._port

    def stats(self) -> dict[str, int]:
        """Counters, for tests and diagnostics.

        ``names`` tracked now, ``resolving`` now and ``peak_resolving`` ever,
        ``resolved`` and ``unresolved`` (timed-out) resolutions, ``removed``
        names (goodbyes), ``reported_up``/``reported_down`` events,
        ``rebrowses`` sent, ``refreshes`` done, ``ignored_names`` (over
        :attr:`max_names`).
        """
        return {"names": len(self._names), **self._counts}

    def known_peers(self) -> list[PeerUp]:
        """The peers resolved and reported now (what the next refresh re-reports)."""
        return [s.event for s in list(self._names.values()) if s.event is not None]

    def start(self, sink: Callable[[PeerEvent], None]) -> None:
        """Open zeroconf, browse, and register this node (in the background)."""
        self._sink = sink
        self._thread = threading.Thread(target=self._work, name="gobucket-mdns", daemon=True)
        self._thread.start()

    def leave(self, timeout: float = 5.0) -> None:
        """Send the mDNS goodbye now (zeroconf is closed by :meth:`stop`).

        The group calls it before closing its connections, so peers hear the
        goodbye first and then see the connection close: they drop this node
        at once instead of re-dialling it.
        """
        self._stopped.set()
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._left.wait(timeout)

    def stop(self) -> None:
        """Unregister (peers see the goodbye at once) and close zeroconf."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(10)

    # the worker thread: opening and closing block, so they run here -------------------------
    def _work(self) -> None:
        try:
            self._open()
        except Exception:
            logger.exception("mDNS discovery could not start; the group stays static")
            self._close()
            return
        self._stopped.wait()
        self._close()

    def _open(self) -> None:
        interfaces: Any = self.interfaces if self.interfaces is not None else InterfaceChoice.All
        self._zc = zc = Zeroconf(interfaces=interfaces, ip_version=IPVersion.V4Only)
        assert zc.loop is not None
        self._loop = zc.loop
        self._call(self._begin)
        self._browser = ServiceBrowser(zc, SERVICE_TYPE, handlers=[self._on_change])
        if self._stopped.is_set():
            return
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
        # Browsing goes on meanwhile: names are resolved on zeroconf's loop.
        zc.register_service(self._info, cooperating_responders=True)
        logger.info("announced node %s on %s port %d", self.node_id, addresses, self.port)

    def _close(self) -> None:
        zc = self._zc
        if zc is None:
            self._left.set()
            return
        try:
            if self._loop is not None and self._loop.is_running():
                done = asyncio.run_coroutine_threadsafe(self._end(), self._loop)
                with contextlib.suppress(Exception):
                    done.result(5)
            if self._info is not None:
                zc.unregister_service(self._info)  # the first goodbye goes out at once
            self._left.set()
            if self._browser is not None:
                self._browser.cancel()
        except Exception:
            logger.debug("mDNS goodbye failed", exc_info=True)
        finally:
            self._left.set()
            zc.close()  # waits for the goodbye's two repeats (125 ms apart), then closes
            self._zc = None

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` on zeroconf's loop (from any thread; dropped once closed)."""
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: we are stopping
            loop.call_soon_threadsafe(fn, *args)

    def _on_change(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        # Called on the browser's thread: hand over to the loop, never block.
        self._call(self._on_name, name, state_change)

    # on zeroconf's loop ----------------------------------------------------------------------
    def _begin(self) -> None:
        self._slots = asyncio.Semaphore(max(1, self.max_resolving))
        self._schedule_tick()

    async def _end(self) -> None:
        self._closing = True
        if self._tick_handle is not None:
            self._tick_handle.cancel()
        for handle in self._rescue_handles:
            handle.cancel()
        tasks = [s.task for s in self._names.values() if s.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _emit(self, event: PeerEvent) -> None:
        sink = self._sink
        if sink is None or self._closing:
            return
        try:
            sink(event)
        except Exception:
            logger.exception("the group refused a discovery event %r", event)
        self._counts["reported_up" if isinstance(event, PeerUp) else "reported_down"] += 1

    def _on_name(self, name: str, change: ServiceStateChange) -> None:
        if self._closing or name.lower() == f"{self.node_id}.{SERVICE_TYPE}".lower():
            return  # stopping, or our own name (never resolved: we know ourselves)
        if change is ServiceStateChange.Removed:
            self._counts["removed"] += 1
            state = self._names.pop(name, None)
            if state is not None:
                if state.task is not None:
                    state.task.cancel()
                if state.event is not None:
                    # Only a hint: the group keeps a peer whose connection is alive.
                    self._emit(PeerDown(state.event.address, self.name))
            self._rescue()
            return
        state = self._names.get(name)
        if state is None:
            if len(self._names) >= self.max_names:
                self._counts["ignored_names"] += 1
                now = time.monotonic()
                if now - self._last_full_warning > 60:
                    self._last_full_warning = now
                    logger.warning(
                        "mDNS: %d service names are tracked already; ignoring %s (and more)",
                        len(self._names),
                        name,
                    )
                return
            state = self._names[name] = _Name()
        # A fresh announcement or a change: resolve now, whatever the backoff said.
        state.settled = False
        state.failures = 0
        state.retry_at = 0.0
        self._kick(name, state)

    def _kick(self, name: str, state: _Name) -> None:
        if state.task is not None:
            state.again = True
            return
        assert self._loop is not None
        state.task = self._loop.create_task(self._resolve(name, state))

    async def _resolve(self, name: str, state: _Name) -> None:
        zc, slots = self._zc, self._slots
        assert zc is not None and slots is not None
        info = ServiceInfo(SERVICE_TYPE, name)
        ok = False
        try:
            async with slots:
                if self._closing:
                    return
                counts = self._counts
                counts["resolving"] += 1
                counts["peak_resolving"] = max(counts["peak_resolving"], counts["resolving"])
                try:
                    ok = await info.async_request(zc, self.resolve_timeout * 1000)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.debug("resolving %s failed", name, exc_info=True)
                finally:
                    counts["resolving"] -= 1
        finally:
            state.task = None
        if self._closing or self._names.get(name) is not state:
            return  # removed (or stopping) meanwhile
        if ok:
            self._counts["resolved"] += 1
            state.failures = 0
            self._accept(state, info)
        else:
            self._counts["unresolved"] += 1
            state.failures += 1
            wait = min(self.retry_first * 2 ** (state.failures - 1), self.retry_max)
            state.retry_at = time.monotonic() + wait
            logger.debug("%s unresolved (%d in a row); retry in %.0fs", name, state.failures, wait)
        if state.again:
            state.again = False
            self._kick(name, state)

    def _accept(self, state: _Name, info: ServiceInfo) -> None:
        event = self._event_for(info, state.event)
        state.settled = True
        old = state.event
        if event == old:
            return
        state.event = event
        if old is not None and (event is None or old.address != event.address):
            self._emit(PeerDown(old.address, self.name))
        if event is not None:
            self._emit(event)

    def _event_for(self, info: ServiceInfo, old: PeerUp | None) -> PeerUp | None:
        props = info.properties
        node = _text(props, "node")
        if not node or node == self.node_id or _text(props, "cluster") != self.cluster:
            return None  # ourselves, or another cluster sharing the LAN
        if _text(props, "v") != str(PROTOCOL_VERSION):
            logger.warning("ignoring node %s: protocol version %s", node, _text(props, "v"))
            return None
        addresses = info.parsed_addresses(IPVersion.V4Only)
        if not addresses or not info.port:
            return None
        port = int(info.port)
        if old is not None and old.address[1] == port and old.address[0] in addresses:
            host = old.address[0]  # still announced: keep the address in use
        elif self.interfaces:
            host = ([a for a in addresses if a in self.interfaces] or addresses)[0]
        else:
            host = ([a for a in addresses if not a.startswith("127.")] or addresses)[0]
        buckets = tuple(b for b in _text(props, "buckets").split(",") if b)
        return PeerUp((host, port), self.name, node=node, cluster=self.cluster, buckets=buckets)

    def _schedule_tick(self) -> None:
        if not self._closing and self._loop is not None:
            self._tick_handle = self._loop.call_later(self.refresh_interval, self._tick)

    def _tick(self) -> None:
        """Re-report resolved peers; retry unresolved names whose backoff ran out."""
        if self._closing:
            return
        self._counts["refreshes"] += 1
        now = time.monotonic()
        for name, state in list(self._names.items()):
            if state.event is not None:
                self._emit(state.event)
            elif state.task is None and not state.settled and state.retry_at <= now:
                self._kick(name, state)
        self._schedule_tick()

    def _rescue(self) -> None:
        """After a removal: re-browse a few times, so a node still there is heard again."""
        loop = self._loop
        if loop is None or self._closing:
            return
        if any(not h.cancelled() and h.when() > loop.time() for h in self._rescue_handles):
            return  # a rescue is under way: its later queries cover this removal too
        self._rescue_handles = [loop.call_later(d, self._rebrowse) for d in self.rescue_after]

    def _rebrowse(self) -> None:
        """Multicast a PTR query for the service type, with the answers we still hold.

        Nodes whose pointer is missing from our cache (removed by a goodbye,
        forged or not) answer it; those we still know stay silent.
        """
        zc = self._zc
        now = time.monotonic()
        if zc is None or self._closing or now - self._last_rebrowse < 0.25:
            return
        self._last_rebrowse = now
        out = DNSOutgoing(_FLAGS_QUERY, multicast=True)
        out.add_question(DNSQuestion(SERVICE_TYPE, _TYPE_PTR, _CLASS_IN))
        millis = current_time_millis()
        for record in zc.cache.get_all_by_details(SERVICE_TYPE, _TYPE_PTR, _CLASS_IN):
            if not record.is_stale(millis):
                out.add_answer_at_time(record, millis)
        zc.async_send(out)
        self._counts["rebrowses"] += 1


def browse(
    cluster: str | None = None,
    timeout: float = 2.0,
    interfaces: Iterable[str] | None = None,
    *,
    resolve_timeout: float = 1.0,
    max_names: int = 512,
) -> list[dict[str, Any]]:
    """Browse the LAN for ``timeout`` seconds; return the gobucket nodes seen.

    Each entry has ``node``, ``cluster``, ``address``, ``port``, ``buckets``
    and ``v``. ``cluster=None`` lists every cluster. Names are resolved all
    at once (each for at most ``resolve_timeout`` seconds); at most
    ``max_names`` are looked at.
    """
    iface: Any = list(interfaces) if interfaces is not None else InterfaceChoice.All
    zc = Zeroconf(interfaces=iface, ip_version=IPVersion.V4Only)
    names: set[str] = set()
    lock = threading.Lock()

    def on_change(
        zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        with lock:
            if state_change is ServiceStateChange.Removed:
                names.discard(name)
            elif len(names) < max_names:
                names.add(name)

    browser = ServiceBrowser(zc, SERVICE_TYPE, handlers=[on_change])
    try:
        threading.Event().wait(timeout)
        with lock:
            seen = sorted(names)
        infos = [ServiceInfo(SERVICE_TYPE, name) for name in seen]

        async def resolve_all() -> list[bool | BaseException]:
            return await asyncio.gather(
                *(info.async_request(zc, resolve_timeout * 1000) for info in infos),
                return_exceptions=True,
            )

        assert zc.loop is not None
        results = asyncio.run_coroutine_threadsafe(resolve_all(), zc.loop).result(
            resolve_timeout + 10
        )
        nodes = []
        for info, ok in zip(infos, results, strict=True):
            if ok is not True:
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
