"""GroupActor: a node's peer table and overflow routing (serving peers is gobucket.serve).

Local first (the facade tries the local bucket), then the peer with the most
free room for that bucket by its latest load report minus what this node sent
it since. A refusal (full, closed, no such bucket, or a request that could not
be sent) tries the next peer; a peer lost after the request was written is
*not* retried — it may have taken the task — and the task is reported failed.
So every task ends up in exactly one place, or is reported failed.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pykka

from gobucket._threads import tell_quietly
from gobucket.actors.actor import RuntimeActor
from gobucket.actors.messages import (
    AwaitPeers,
    ChildFailed,
    Discovered,
    DiscoveredCheck,
    FillReplied,
    GetPeers,
    PeerChanged,
    RouteFill,
    StopGroup,
)
from gobucket.discovery.base import PeerDown, PeerEvent, PeerUp
from gobucket.errors import (
    BucketFullError,
    DuplicateTaskError,
    InvalidArgumentError,
    NoPeerAvailableError,
    PeerLostTaskError,
)
from gobucket.types import PeerInfo, Placement
from gobucket.wire.peer import NotSentError, Peer, PeerLostError
from gobucket.wire.protocol import Ack, RefusalCode

if TYPE_CHECKING:
    from types import TracebackType

    from gobucket.wire.connection import PeerHello
    from gobucket.wire.node import NetworkNode

__all__ = ["GroupActor", "RouteCounts", "ScheduleFailed"]

logger = logging.getLogger("gobucket.group")

ScheduleFailed = Callable[[str, str, str, BaseException], Any]

# Discovered peers (any source but the static list): what mDNS reports is a hint, so the
# table of them is bounded and an entry that does not connect does not stay (_on_discovered).
MAX_DISCOVERED = 128
"""Discovered entries kept at most (a new one evicts one that never connected)."""
DISCOVERED_MAX_FAILURES = 8
"""Connection attempts failed in a row (unreachable or refused) before the entry is dropped."""
DISCOVERED_MAX_REFUSALS = 3
"""Handshakes refused in a row before the entry is dropped."""
DISCOVERED_DOWN_LIMIT = 30.0
"""Seconds an entry may go without a link at all (a dialler that stopped) before it is dropped."""
GIVE_UP_FIRST = 30.0
GIVE_UP_MAX = 600.0
"""An entry dropped without ever connecting is not dialled again for 30 s, doubling to 10 min."""
MAX_GIVEN_UP = 1024

PEER_LOG_INTERVAL = 60.0
"""A peer that stays unreachable (or keeps refusing the handshake) for the same reason is
logged when that starts, then at most once per this many seconds."""


@dataclass
class _Peer:
    address: tuple[str, int]
    source: str
    ref: Peer
    node: str | None = None
    up: bool = False
    loads: dict[str, tuple[int, int]] = field(default_factory=dict)
    sent_since_report: dict[str, int] = field(default_factory=dict)
    last_seen: float | None = None
    buckets: tuple[str, ...] = ()
    reason: str | None = "not connected yet"
    logged: str | None = None  # the trouble last logged for this peer, when, and repeats since
    logged_at: float = 0.0
    repeats: int = 0
    # discovered entries only (see _on_discovered):
    announced: bool = True  # no goodbye since it was last announced
    failures: int = 0  # connection attempts failed in a row
    refusals: int = 0  # of which handshakes refused
    down_since: float = field(default_factory=time.monotonic)  # without a link since

    def free(self, bucket: str) -> float:
        load = self.loads.get(bucket)
        if load is None:
            # Not reported yet: worth a try after every peer known to have room.
            return 0.5 if (not self.buckets or bucket in self.buckets) else -1
        return load[1] - load[0] - self.sent_since_report.get(bucket, 0)


class RouteCounts:
    """How this node's overflow fills ended, per bucket: placed on a peer, or why not.

    The group facade owns it (it outlives restarts of the GroupActor), the
    actor counts into it; :mod:`gobucket.metrics` reads it.
    """

    __slots__ = ("_counts", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = {}

    def count(self, bucket: str, result: str) -> None:
        """One overflow fill of ``bucket`` ended with ``result`` ("placed" or a reason)."""
        with self._lock:
            key = (bucket, result)
            self._counts[key] = self._counts.get(key, 0) + 1

    def snapshot(self) -> dict[tuple[str, str], int]:
        """``{(bucket, result): count}`` at this instant."""
        with self._lock:
            return dict(self._counts)


def _failure_reason(error: BaseException) -> str:
    if isinstance(error, NoPeerAvailableError):
        return "no_peer"
    if isinstance(error, PeerLostTaskError):
        return "peer_lost"
    if isinstance(error, DuplicateTaskError):
        return "duplicate"
    if isinstance(error, InvalidArgumentError):
        return "bad_data"
    return "error"


@dataclass
class _Route:
    bucket: str
    task_id: str
    wire: dict[str, Any]
    reply: pykka.Future[Any]
    tried: set[tuple[str, int]] = field(default_factory=set)
    last_error: BaseException | None = None


class GroupActor(RuntimeActor):
    """Owns a node's peer table; routes the overflow of its local buckets to peers."""

    def __init__(
        self,
        node_id: str,
        network: NetworkNode,
        ping_interval: float,
        on_failed: Callable[[], ScheduleFailed | None],
        supervisor_key: str | None = None,
        routed: RouteCounts | None = None,
    ) -> None:
        super().__init__()
        self.supervisor_key = supervisor_key
        self.routed = routed if routed is not None else RouteCounts()
        self.node_id = node_id
        self.network = network
        self.ping_interval = ping_interval
        self._on_failed = on_failed
        self.peers: dict[tuple[str, int], _Peer] = {}
        self.routes: dict[int, _Route] = {}
        self._route_ids = itertools.count(1)
        self._stopped = False
        # (address, node) of discovered entries dropped without ever connecting
        # -> (ignored until, backoff); see _give_up.
        self._given_up: collections.OrderedDict[
            tuple[tuple[str, int], str | None], tuple[float, float]
        ] = collections.OrderedDict()
        self._table_full_warned = 0.0
        self._peer_waiters: list[tuple[AwaitPeers, pykka.Future[Any]]] = []

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Fail the routes in flight, drop our links, and tell the root supervisor."""
        self._wake_peer_waiters(False)
        routes, self.routes = self.routes, {}
        for route in routes.values():
            error = PeerLostTaskError(
                f"the group actor failed while task {route.task_id!r} was being placed; "
                "it may or may not have reached a peer"
            )
            self.routed.count(route.bucket, "peer_lost")
            with contextlib.suppress(queue.Full):
                route.reply.set_exception((type(error), error, None))
        for peer in self.peers.values():
            peer.ref.stop()
        if self.supervisor_key is not None:
            tell_quietly(
                self.runtime.supervisor, ChildFailed(self.supervisor_key, exception_value, [])
            )

    def on_receive(self, message: Any) -> Any:
        """Dispatch group messages."""
        kind = type(message)
        if kind is RouteFill:
            self._route_new(message)
            return None
        if kind is FillReplied:
            self._on_reply(message)
            return None
        if kind is PeerChanged:
            self._on_peer_changed(message)
            return None
        if kind is Discovered:
            self._on_discovered(message.event)
            return None
        if kind is DiscoveredCheck:
            self._on_discovered_check(message)
            return None
        if kind is GetPeers:
            return [self._info(p) for p in self.peers.values()]
        if kind is AwaitPeers:
            return self._await_peers(message)
        if kind is StopGroup:
            self._stop_all()
            return None
        return super().on_receive(message)

    # routing -------------------------------------------------------------------------
    def _route_new(self, msg: RouteFill) -> None:
        reply = self.defer_reply()
        assert reply is not None, "RouteFill must be asked"
        route = _Route(msg.bucket, msg.task_id, msg.wire, reply)
        self._route(next(self._route_ids), route)

    def _route(self, route_id: int, route: _Route) -> None:
        if self._stopped:
            self._finish(route_id, route, NoPeerAvailableError("the group is stopped"))
            return
        best: _Peer | None = None
        best_free = 0.0
        for peer in self.peers.values():
            if not peer.up or peer.address in route.tried:
                continue
            free = peer.free(route.bucket)
            if free > best_free:
                best, best_free = peer, free
        if best is None:
            last = route.last_error
            error = NoPeerAvailableError(
                f"task buffer exceeded: bucket {route.bucket!r} is full here and no peer "
                f"has room for task {route.task_id!r}"
                + (f" (last refusal: {last})" if last else "")
            )
            self._finish(route_id, route, error)
            return
        route.tried.add(best.address)
        best.sent_since_report[route.bucket] = best.sent_since_report.get(route.bucket, 0) + 1
        self.routes[route_id] = route
        me = self.actor_ref
        address = best.address

        def replied(reply: Any) -> None:
            tell_quietly(me, FillReplied(route_id, address, reply))

        best.ref.request(route.wire, replied)

    def _on_reply(self, msg: FillReplied) -> None:
        route = self.routes.pop(msg.route, None)
        if route is None:
            return
        reply = msg.reply
        peer = self.peers.get(msg.address)
        accepted = isinstance(reply, Ack) and reply.ok
        if peer is not None and not accepted and not isinstance(reply, PeerLostError):
            # It did not take the task: stop counting it against the peer's room.
            sent = peer.sent_since_report.get(route.bucket, 0)
            if sent > 0:
                peer.sent_since_report[route.bucket] = sent - 1
        if isinstance(reply, Ack):
            if reply.ok:
                node = peer.node if peer and peer.node else f"{msg.address[0]}:{msg.address[1]}"
                self.routed.count(route.bucket, "placed")
                route.reply.set(Placement(False, node, route.bucket, route.task_id, msg.address))
                return
            code = reply.code
            text = f"peer {msg.address[0]}:{msg.address[1]} refused: {code}: {reply.text}"
            if code == RefusalCode.DUPLICATE:
                self._finish(
                    msg.route,
                    route,
                    DuplicateTaskError(route.task_id, route.bucket),
                    report=msg.address,
                )
                return
            if code == RefusalCode.BAD_DATA:
                self._finish(msg.route, route, InvalidArgumentError(text), report=msg.address)
                return
            if peer is not None and code in (RefusalCode.FULL, RefusalCode.CLOSED):
                load = peer.loads.get(route.bucket)
                if load is not None:
                    peer.loads[route.bucket] = (load[1], load[1])
            route.last_error = BucketFullError(text)
            self._route(msg.route, route)
            return
        if isinstance(reply, NotSentError):
            route.last_error = reply
            self._route(msg.route, route)
            return
        error = reply if isinstance(reply, BaseException) else RuntimeError(repr(reply))
        lost = PeerLostTaskError(
            f"peer {msg.address[0]}:{msg.address[1]} was lost before it acknowledged task "
            f"{route.task_id!r}; it may or may not have taken it ({error})"
        )
        lost.__cause__ = error
        self._finish(msg.route, route, lost, report=msg.address)

    def _finish(
        self,
        route_id: int,
        route: _Route,
        error: BaseException,
        report: tuple[str, int] | None = None,
    ) -> None:
        self.routes.pop(route_id, None)
        self.routed.count(route.bucket, _failure_reason(error))
        callback = self._on_failed()
        if callback is not None:
            where = report or (next(iter(route.tried)) if route.tried else None)
            peer = f"{where[0]}:{where[1]}" if where else ""
            self.runtime.run_blocking(
                _call_on_failed, callback, peer, route.bucket, route.task_id, error
            )
        route.reply.set_exception((type(error), error, None))

    # peers ---------------------------------------------------------------------------------
    def _on_discovered(self, event: PeerEvent) -> None:
        """A peer source's report. For discovered peers (not the static list) it is a hint:

        * an announcement never redirects a node that is connected at another address;
        * a goodbye never removes a peer whose authenticated connection is alive: it is
          only noted, and the entry goes when that connection closes (or misses pings);
        * an entry that does not connect is dropped after a bounded number of attempts
          (see :meth:`_discovered_changed`), and the table of them is bounded.
        """
        if isinstance(event, PeerUp):
            peer = self.peers.get(event.address)
            if peer is None:
                if self._stopped or event.node == self.node_id:
                    return
                if event.node is not None and any(
                    p.node == event.node and p.up for p in self.peers.values()
                ):
                    return  # already connected to that node at another address
                discovered = event.source != "static"
                if discovered and (self._given_up_for(event) or not self._room_for_discovered()):
                    return
                me = self.actor_ref
                address = event.address

                def events(kind: str, payload: Any) -> None:
                    tell_quietly(me, PeerChanged(address, kind, payload))

                ref = Peer(self.network, address, events, self.ping_interval)
                peer = _Peer(address, event.source, ref, node=event.node, buckets=event.buckets)
                self.peers[address] = peer
                ref.start()
                if discovered:
                    self._check_later(peer)
                return
            if peer.source == event.source:
                peer.announced = True
            if event.buckets and not peer.up:  # once connected, its HELLO is the truth
                peer.buckets = event.buckets
        elif isinstance(event, PeerDown):
            peer = self.peers.get(event.address)
            if peer is None or peer.source != event.source:
                return
            if peer.up:
                # Anyone can send a goodbye: a live, authenticated link decides.
                peer.announced = False
                logger.info(
                    "peer %s: %s goodbye noted; kept while its connection is alive",
                    event.address,
                    event.source,
                )
                return
            self._drop(peer, f"left ({event.source} goodbye)")

    def _discovered_changed(self, peer: _Peer, msg: PeerChanged) -> bool:
        """Track a discovered entry's link; True if the entry was dropped."""
        if msg.kind == "up":
            peer.failures = peer.refusals = 0
            self._given_up.pop((peer.address, peer.node), None)
        elif msg.kind in ("unreachable", "refused"):
            peer.failures += 1
            if msg.kind == "refused":
                peer.refusals += 1
            if peer.failures >= DISCOVERED_MAX_FAILURES or peer.refusals >= DISCOVERED_MAX_REFUSALS:
                what = "handshakes refused" if msg.kind == "refused" else "attempts failed"
                count = peer.refusals if msg.kind == "refused" else peer.failures
                self._give_up(peer, f"{count} {what} in a row (last: {msg.payload})")
                return True
        elif msg.kind == "down":
            peer.down_since = time.monotonic()
            if not peer.announced:
                self._drop(peer, "left (goodbye, then its connection closed)")
                return True
            self._check_later(peer)
        return False

    def _check_later(self, peer: _Peer) -> None:
        due = peer.down_since + DISCOVERED_DOWN_LIMIT
        self.runtime.timers.schedule(due, self.actor_ref, DiscoveredCheck(peer.address, due))

    def _on_discovered_check(self, msg: DiscoveredCheck) -> None:
        peer = self.peers.get(msg.address)
        if peer is None or peer.up or self._stopped:
            return
        if peer.down_since + DISCOVERED_DOWN_LIMIT != msg.due:
            return  # it had a link since this check was set
        self._give_up(peer, f"no connection for {DISCOVERED_DOWN_LIMIT:g} s")

    def _given_up_for(self, event: PeerUp) -> bool:
        entry = self._given_up.get((event.address, event.node))
        return entry is not None and entry[0] > time.monotonic()

    def _give_up(self, peer: _Peer, why: str) -> None:
        """Drop a discovered entry that does not connect; one that never did is ignored a while."""
        if peer.last_seen is None:  # never connected: do not dial it again for a while
            key = (peer.address, peer.node)
            _until, backoff = self._given_up.pop(key, (0.0, GIVE_UP_FIRST / 2))
            backoff = min(backoff * 2, GIVE_UP_MAX)
            self._given_up[key] = (time.monotonic() + backoff, backoff)
            while len(self._given_up) > MAX_GIVEN_UP:
                self._given_up.popitem(last=False)
            why = f"{why}; not dialled again for {backoff:g} s"
        self._drop(peer, why)

    def _room_for_discovered(self) -> bool:
        """Below MAX_DISCOVERED, or room made by evicting an entry that never connected."""
        discovered = [p for p in self.peers.values() if p.source != "static"]
        if len(discovered) < MAX_DISCOVERED:
            return True
        never = [p for p in discovered if not p.up and p.last_seen is None]
        if never:
            self._drop(min(never, key=lambda p: p.down_since), "evicted: the table is full")
            return True
        now = time.monotonic()
        if now - self._table_full_warned > 60:
            self._table_full_warned = now
            logger.warning(
                "%d discovered peers are known already: ignoring new announcements", len(discovered)
            )
        return False

    def _drop(self, peer: _Peer, why: str) -> None:
        if self.peers.get(peer.address) is peer:
            del self.peers[peer.address]
        peer.ref.stop()
        logger.info("peer %s:%s dropped: %s", peer.address[0], peer.address[1], why)

    def _on_peer_changed(self, msg: PeerChanged) -> None:
        self._peer_changed(msg)
        if self._peer_waiters and msg.kind in ("up", "load"):
            self._wake_peer_waiters()

    def _peer_changed(self, msg: PeerChanged) -> None:
        peer = self.peers.get(msg.address)
        if peer is None:
            return
        if peer.source != "static" and self._discovered_changed(peer, msg):
            return  # a discovered entry dropped
        if msg.kind == "up":
            hello: PeerHello = msg.payload
            twin = next(
                (p for p in self.peers.values() if p is not peer and p.node == hello.node and p.up),
                None,
            )
            if twin is not None:
                # One node, two addresses (e.g. static and mDNS): keep one link,
                # preferring the static entry, which is re-dialled for ever.
                drop = twin if peer.source == "static" else peer
                drop.ref.stop()
                self.peers.pop(drop.address, None)
                if drop is peer:
                    return
            peer.up = True
            peer.node = hello.node
            peer.buckets = hello.buckets
            peer.last_seen = time.monotonic()
            peer.reason = None
            peer.logged, peer.repeats = None, 0
            logger.info("peer %s up (node %s)", msg.address, hello.node)
        elif msg.kind == "down":
            if peer.up:
                logger.warning("peer %s down: %s", msg.address, msg.payload)
            peer.up = False
            peer.loads = {}
            peer.sent_since_report = {}
            peer.reason = str(msg.payload)
        elif msg.kind in ("unreachable", "refused"):
            reason = str(msg.payload)
            if msg.kind == "refused":
                reason = f"handshake refused: {reason}"
            self._trouble(peer, reason)
        elif msg.kind == "load":
            loads: dict[str, Any] = msg.payload
            peer.loads = {k: (int(v[0]), int(v[1])) for k, v in loads.items()}
            in_flight: dict[str, int] = {}
            for route in self.routes.values():
                if msg.address in route.tried:
                    in_flight[route.bucket] = in_flight.get(route.bucket, 0) + 1
            peer.sent_since_report = in_flight
            peer.last_seen = time.monotonic()

    def _trouble(self, peer: _Peer, reason: str) -> None:
        """A connection attempt failed: log it once, then at most once per PEER_LOG_INTERVAL."""
        peer.reason = reason
        now = time.monotonic()
        host, port = peer.address
        if reason == peer.logged and now - peer.logged_at < PEER_LOG_INTERVAL:
            peer.repeats += 1
            return
        if reason == peer.logged:
            logger.warning(
                "peer %s:%s still down: %s (%d more attempts in the last %.0f s)",
                host,
                port,
                reason,
                peer.repeats,
                now - peer.logged_at,
            )
        else:
            logger.warning("peer %s:%s is down: %s (retrying with back-off)", host, port, reason)
        peer.logged, peer.logged_at, peer.repeats = reason, now, 0

    def _info(self, peer: _Peer) -> PeerInfo:
        return PeerInfo(
            peer.address,
            peer.node,
            peer.up,
            peer.source,
            dict(peer.loads),
            peer.last_seen,
            peer.buckets,
            None if peer.up else peer.reason,
        )

    # waiting for peers -------------------------------------------------------------------
    def _peers_ready(self, want: AwaitPeers) -> bool:
        ready = sum(
            1
            for p in self.peers.values()
            if p.up and (want.bucket is None or want.bucket in p.loads)
        )
        return ready >= want.count

    def _await_peers(self, want: AwaitPeers) -> bool | None:
        if self._peers_ready(want):
            return True
        if self._stopped:
            return False
        reply = self.defer_reply()
        assert reply is not None, "AwaitPeers must be asked"
        self._peer_waiters.append((want, reply))
        return None

    def _wake_peer_waiters(self, answer: bool | None = None) -> None:
        """Answer the waiters whose peers are ready (all of them with ``answer``, if given)."""
        waiting = []
        for want, reply in self._peer_waiters:
            done = answer if answer is not None else (True if self._peers_ready(want) else None)
            if done is None:
                waiting.append((want, reply))
            else:
                reply.set(done)
        self._peer_waiters = waiting

    def _stop_all(self) -> None:
        self._stopped = True
        self._wake_peer_waiters(False)
        for peer in self.peers.values():
            peer.ref.stop()


def _call_on_failed(callback: Callable[..., Any], *args: Any) -> None:
    """Run the user's ``on_peer_schedule_failed`` (on a worker thread); log what it raises."""
    try:
        callback(*args)
    except BaseException as error:  # also SystemExit, KeyboardInterrupt, as hooks are
        logger.error("on_peer_schedule_failed raised", exc_info=error)
