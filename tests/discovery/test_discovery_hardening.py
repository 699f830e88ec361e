"""Discovery that cannot be fooled (issue 9).

* no mDNS without a secret, unless ``insecure=True`` (and then mDNS addresses join the
  no-secret allow list, as before);
* a goodbye or an address change for a peer whose authenticated connection is alive
  neither removes nor redirects it; a name removed by a forged goodbye is found again;
* names that never resolve are resolved concurrently with a short timeout, so they do
  not delay a real announcement;
* discovered entries that never complete a handshake are dropped after a bounded
  number of attempts, and the table is bounded.

mDNS runs on loopback (``interfaces=["127.0.0.1"]``); every test uses its own cluster
name, so other groups on this host are ignored. A *forger* is a second zeroconf
instance that announces, changes and withdraws records at will.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from helpers.cluster import BUCKET, SECRET, Cluster, hold, peer_info, wait_peer_up
from helpers.waiting import wait_until
from zeroconf import IPVersion, ServiceInfo, Zeroconf

import gobucket.actors.group as group_actor
from gobucket import InvalidArgumentError, TaskBucket, TaskBucketGroup
from gobucket.discovery.base import PeerDown, PeerEvent, PeerUp
from gobucket.discovery.mdns import SERVICE_TYPE, MdnsDiscovery
from gobucket.wire.protocol import PROTOCOL_VERSION

LOOPBACK = "127.0.0.1"
WAIT = 20.0  # generous: a loaded 2-core machine


def new_cluster() -> str:
    return f"hard-{uuid.uuid4().hex[:8]}"


# --- helpers ----------------------------------------------------------------------------


class Forger:
    """A second zeroconf on loopback that says whatever it likes."""

    def __init__(self) -> None:
        self.zc = Zeroconf(interfaces=[LOOPBACK], ip_version=IPVersion.V4Only)

    def record(
        self,
        node: str,
        cluster: str,
        port: int = 9,
        addresses: list[str] | None = None,
        server: str | None = None,
    ) -> ServiceInfo:
        """A gobucket announcement; ``addresses=[]`` never resolves (no address record)."""
        return ServiceInfo(
            SERVICE_TYPE,
            f"{node}.{SERVICE_TYPE}",
            port=port,
            properties={"cluster": cluster, "node": node, "v": str(PROTOCOL_VERSION)},
            server=server or f"{node}.local.",
            parsed_addresses=[LOOPBACK] if addresses is None else addresses,
        )

    def _run(self, coro: Any) -> None:
        assert self.zc.loop is not None
        asyncio.run_coroutine_threadsafe(coro, self.zc.loop).result(60)

    def register(self, *infos: ServiceInfo) -> None:
        """Announce all of them at once; returns when every announcement was sent."""

        async def go() -> None:
            sent = [
                await self.zc.async_register_service(i, cooperating_responders=True) for i in infos
            ]
            await asyncio.gather(*sent)

        self._run(go())

    def unregister(self, *infos: ServiceInfo) -> None:
        """Send their goodbyes (three each); returns when sent."""

        async def go() -> None:
            sent = [await self.zc.async_unregister_service(i) for i in infos]
            await asyncio.gather(*sent)

        self._run(go())

    def close(self) -> None:
        self.zc.close()


@pytest.fixture
def forger() -> Iterator[Forger]:
    made = Forger()
    try:
        yield made
    finally:
        made.close()


class Events:
    """A sink for a bare MdnsDiscovery: records (time, event), wakes waiters."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.items: list[tuple[float, PeerEvent]] = []

    def __call__(self, event: PeerEvent) -> None:
        with self.cond:
            self.items.append((time.monotonic(), event))
            self.cond.notify_all()

    def wait(self, predicate: Callable[[], Any], timeout: float = WAIT) -> Any:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                value = predicate()
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")
                self.cond.wait(left)

    def first(self, kind: type, address: tuple[str, int] | None = None, after: float = 0.0) -> Any:
        """The time of the first event of ``kind`` (at ``address``) after ``after``, or None."""
        for at, event in self.items:
            if (
                at > after
                and isinstance(event, kind)
                and (address is None or event.address == address)
            ):
                return at
        return None


@pytest.fixture
def watchers() -> Iterator[list[MdnsDiscovery]]:
    made: list[MdnsDiscovery] = []
    try:
        yield made
    finally:
        for source in made:
            source.stop()


def watch(watchers: list[MdnsDiscovery], cluster: str) -> tuple[MdnsDiscovery, Events]:
    """A bare mDNS source of ``cluster`` (announcing a node that does not listen)."""
    events = Events()
    source = MdnsDiscovery(cluster, f"watch-{uuid.uuid4().hex[:8]}", 9, (), [LOOPBACK])
    watchers.append(source)
    source.start(events)
    wait_until(lambda: source._info is not None, WAIT, what="the watcher announced itself")
    return source, events


STARTUP_QUERIES_END = 15.5
"""Seconds after a zeroconf browser starts by which it has sent its startup queries.

A browser queries at about 0, 1, 5 and 14 s after it starts; an answer to one of those
would heal a removal by itself. After them, zeroconf alone queries again only at 75 %
of the record's TTL (56 min): a test that pins the re-browse must act after them.
"""


def after_startup_queries(started: float) -> None:
    """Wait until a browser started at ``started`` is done with its startup queries."""
    wait_until(
        lambda: time.monotonic() >= started + STARTUP_QUERIES_END,
        STARTUP_QUERIES_END + 1,
        interval=0.1,
        what="the browser's startup queries",
    )


def mdns_group(cluster: Cluster, bucket: TaskBucket, name: str, **kwargs: Any) -> TaskBucketGroup:
    kwargs.setdefault("secret", SECRET)
    return cluster.group(
        bucket, cluster=name, discovery=True, interfaces=[LOOPBACK], ping_interval=0.2, **kwargs
    )


def source_of(group: TaskBucketGroup) -> MdnsDiscovery:
    return next(s for s in group._sources if isinstance(s, MdnsDiscovery))


def stat(group: TaskBucketGroup, key: str) -> int:
    """A counter of the group's mDNS source (0 where the source keeps none)."""
    stats = getattr(source_of(group), "stats", None)
    return int(stats()[key]) if stats is not None else 0


def up(group: TaskBucketGroup, address: tuple[str, int]) -> bool:
    info = peer_info(group, address)
    return info is not None and info.up


# --- no discovery without a secret ---------------------------------------------------------


def test_discovery_true_without_a_secret_is_refused_with_a_clear_message(
    cluster: Cluster,
) -> None:
    bucket = cluster.bucket()
    with pytest.raises(InvalidArgumentError) as raised:
        TaskBucketGroup({BUCKET: bucket}, port=0, discovery=True)
    message = str(raised.value)
    assert "secret" in message and "insecure=True" in message


def test_insecure_discovery_without_a_secret_warns_once(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gobucket")
    group = mdns_group(cluster, cluster.bucket(), new_cluster(), secret=None, insecure=True)
    assert group.discovery and group.insecure
    warnings = [
        r for r in caplog.records if r.levelno >= logging.WARNING and "secret" in r.getMessage()
    ]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "insecure" in warnings[0].getMessage()


def test_without_a_secret_discovery_is_off_by_default_and_no_mdns_runs(cluster: Cluster) -> None:
    group = cluster.group(
        cluster.bucket(), secret=None, discovery=None, peers=["127.0.0.1:1"], start=False
    )
    assert group.discovery is False
    group.start()
    assert not any(isinstance(s, MdnsDiscovery) for s in group._sources)
    assert not any(t.name == "gobucket-mdns" for t in threading.enumerate())
    # With a secret the default turns it on; False keeps it off.
    bucket = cluster.bucket()
    assert TaskBucketGroup({BUCKET: bucket}, port=0, secret="k").discovery is True
    assert TaskBucketGroup({BUCKET: bucket}, port=0, secret="k", discovery=False).discovery is False


@pytest.mark.parametrize(
    "kwargs",
    [{"discovery": "yes", "secret": "k"}, {"insecure": 1}, {"secret": ""}, {"secret": 42}],
)
def test_bad_discovery_arguments_are_refused(cluster: Cluster, kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgumentError):
        TaskBucketGroup({BUCKET: cluster.bucket()}, port=0, **kwargs)


def test_mdns_addresses_join_the_no_secret_allow_list_only_when_insecure(
    cluster: Cluster,
) -> None:
    announced = PeerUp(("10.9.8.7", 7000), "mdns", node="x", cluster="default")
    static = TaskBucketGroup({BUCKET: cluster.bucket()}, port=0, peers=["10.1.1.1:7000"])
    static._on_peer_event(announced)
    assert not static._server.allow("10.9.8.7")  # today's hole, closed
    assert static._server.allow("10.1.1.1")  # a static peer list keeps its allow list
    # A source the user configured (not mDNS) still allow-lists what it reports.
    static._on_peer_event(PeerUp(("10.9.8.6", 7000), "consul", node="y", cluster="default"))
    assert static._server.allow("10.9.8.6")
    insecure = TaskBucketGroup({BUCKET: cluster.bucket()}, port=0, discovery=True, insecure=True)
    insecure._on_peer_event(announced)
    assert insecure._server.allow("10.9.8.7")


# --- a goodbye or an address change does not remove a live peer -----------------------------


@pytest.mark.slow
def test_a_forged_address_change_and_goodbye_leave_a_live_peer_up(
    cluster: Cluster, forger: Forger, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gobucket.group")
    name = new_cluster()
    a_bucket = cluster.bucket(max_bucket=1)
    a = mdns_group(cluster, a_bucket, name)
    b = mdns_group(cluster, cluster.bucket(max_bucket=100), name)
    wait_peer_up(a, b.address, timeout=WAIT)
    port = str(b.address[1])

    def b_removed() -> bool:  # logged by A when it drops B's entry, however briefly
        return any(
            port in r.getMessage() and ("left" in r.getMessage() or "dropped" in r.getMessage())
            for r in caplog.records
            if r.name == "gobucket.group"
        )

    # Someone else announces B's name at another address (same host name: its
    # address record flushes B's), then withdraws it: a goodbye for B's name.
    fake = forger.record(b.node_id, name, port=9, addresses=["127.0.0.9"])
    forger.register(fake)
    forger.unregister(fake)

    # A heard the goodbye (or, with the bug, dropped B).
    wait_until(
        lambda: stat(a, "removed") >= 1 or b_removed(),
        WAIT,
        what="A's mDNS source to see the goodbye",
    )
    assert not b_removed()
    assert any(  # A was told B went away, and kept it: its link is alive
        port in r.getMessage() and "goodbye noted" in r.getMessage() for r in caplog.records
    )
    info = peer_info(a, b.address)
    assert info is not None and info.up, a.peers()
    assert all(p.address[0] != "127.0.0.9" for p in a.peers())  # not redirected
    # ... and still routes overflow to it.
    hold(a_bucket, 1)
    placement = a.fill(BUCKET, "after-forgery", None, timeout=WAIT)
    assert not placement.local and placement.node == b.node_id
    # A's source finds B's real record again (re-browse), so nothing is lost.
    wait_until(
        lambda: any(p.address == b.address for p in source_of(a).known_peers()),
        10.0,
        what="B's record found again",
    )


@pytest.mark.slow
def test_a_name_removed_by_a_forged_goodbye_is_found_again_within_10s(
    cluster: Cluster, forger: Forger, watchers: list[MdnsDiscovery]
) -> None:
    name = new_cluster()
    _watcher, events = watch(watchers, name)
    b = mdns_group(cluster, cluster.bucket(), name)
    started = time.monotonic()  # both browsers run by now
    seen = events.wait(lambda: events.first(PeerUp, b.address))
    assert seen
    after_startup_queries(started)

    # A goodbye for B's exact record, sent by someone else.
    fake = forger.record(b.node_id, name, port=b.address[1])
    forger.register(fake)
    forger.unregister(fake)
    removed = events.wait(lambda: events.first(PeerDown, b.address))
    again = events.wait(lambda: events.first(PeerUp, b.address, after=removed), timeout=15.0)
    print(f"\nfound again {again - removed:.2f} s after a forged goodbye")
    assert again - removed <= 10.0


PAUSE = 3.5
"""Seconds a peer stays paused after a forged goodbye (longer than a 3 s resolution)."""


@pytest.mark.slow
def test_a_peer_dropped_after_a_forged_goodbye_is_found_again_within_10s(
    cluster: Cluster, forger: Forger, tmp_path: Any
) -> None:
    name = new_cluster()
    a = mdns_group(cluster, cluster.bucket(), name)
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gobucket.testing.node",
            "--host",
            LOOPBACK,
            "--cluster",
            name,
            "--secret",
            SECRET,
            "--ping",
            "0.2",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=(tmp_path / "b.log").open("w"),
        text=True,
    )
    try:
        assert child.stdout is not None
        ready = json.loads(child.stdout.readline())
        started = time.monotonic()  # both browsers run by now
        b_node, b_address = ready["node"], (LOOPBACK, ready["address"][1])
        wait_peer_up(a, b_address, timeout=WAIT)
        after_startup_queries(started)

        # B hangs; meanwhile a goodbye for its name is forged. A's link to B then
        # fails its pings, so A drops B: wrongly, B is only paused.
        child.send_signal(signal.SIGSTOP)
        fake = forger.record(b_node, name, port=b_address[1])
        forger.register(fake)
        forger.unregister(fake)
        goodbye = time.monotonic()
        wait_until(lambda: peer_info(a, b_address) is None, WAIT, what="A to drop B")
        dropped = time.monotonic()
        # B stays paused through the first re-browses (and any query already under
        # way), then answers again: a later re-browse must find it.
        wait_until(
            lambda: time.monotonic() >= goodbye + PAUSE,
            WAIT,
            interval=0.05,
            what="the pause",
        )
        child.send_signal(signal.SIGCONT)
        resumed = time.monotonic()
        wait_peer_up(a, b_address, timeout=15.0)
        found = time.monotonic()
        print(
            f"\nB found again {found - dropped:.2f} s after it was dropped "
            f"({found - resumed:.2f} s after it resumed from a {PAUSE:g} s pause)"
        )
        assert found - dropped <= 10.0
    finally:
        child.send_signal(signal.SIGCONT)
        child.kill()
        child.wait(10)


# --- unresolvable names do not stall discovery ------------------------------------------------


BAD_NAMES = 50


@pytest.mark.slow
def test_50_unresolvable_names_do_not_delay_a_real_announcement(
    forger: Forger, watchers: list[MdnsDiscovery]
) -> None:
    name = new_cluster()
    watcher, events = watch(watchers, name)
    # 50 names of our cluster whose resolution never completes (no address record),
    # announced before the real one.
    bad = [forger.record(f"bad{i}-{uuid.uuid4().hex[:6]}", name, addresses=[]) for i in range(50)]
    forger.register(*bad)
    real = forger.record(f"real-{uuid.uuid4().hex[:6]}", name, port=4321)
    announced = time.monotonic()
    forger.register(real)
    found = events.wait(lambda: events.first(PeerUp, (LOOPBACK, 4321)), timeout=10.0)
    delay = found - announced
    stats = watcher.stats()
    print(f"\nreal announcement reported {delay:.3f} s after it was sent; {stats}")
    assert delay <= 2.0 + 2.0  # the target is 2 s; 2 s more for a loaded machine
    # The mechanism: the bad names were resolved side by side, each for a short time.
    wait_until(lambda: watcher.stats()["unresolved"] >= BAD_NAMES, WAIT, what="bad names")
    assert watcher.stats()["peak_resolving"] >= BAD_NAMES
    assert MdnsDiscovery.resolve_timeout <= 1.5


@pytest.mark.slow
def test_a_new_peer_is_used_despite_50_unresolvable_names(cluster: Cluster, forger: Forger) -> None:
    name = new_cluster()
    a = mdns_group(cluster, cluster.bucket(), name)
    wait_until(lambda: source_of(a)._info is not None, WAIT, what="A announced")
    bad = [forger.record(f"bad{i}-{uuid.uuid4().hex[:6]}", name, addresses=[]) for i in range(50)]
    forger.register(*bad)
    wait_until(
        lambda: not hasattr(source_of(a), "stats") or stat(a, "names") >= BAD_NAMES,
        WAIT,
        what="A to see the bad names",
    )
    started = time.monotonic()
    b = mdns_group(cluster, cluster.bucket(), name)
    wait_peer_up(a, b.address, timeout=10.0)
    delay = time.monotonic() - started
    print(f"\nnew peer up with loads {delay:.3f} s after its start, despite 50 bad names")
    assert delay <= 2.0 + 2.0


# --- bounded attempts and a bounded table ------------------------------------------------------


class FakeServer:
    """Accepts TCP connections and counts them; each is answered with garbage or hung up."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.count = 0
        self.sock = socket.socket()
        self.sock.bind((LOOPBACK, 0))
        self.sock.listen(64)
        self.port: int = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.count += 1
            try:
                if self.mode == "garbage":  # a frame longer than any limit: refused
                    conn.sendall(b"\xff\xff\xff\xff" * 4)
                    time.sleep(0.05)
            finally:
                conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mode", "attempts"),
    [
        ("garbage", group_actor.DISCOVERED_MAX_REFUSALS),
        ("hangup", group_actor.DISCOVERED_MAX_FAILURES),
    ],
)
def test_an_entry_that_never_completes_a_handshake_is_dropped_after_bounded_attempts(
    cluster: Cluster,
    forger: Forger,
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
    attempts: int,
) -> None:
    monkeypatch.setattr(MdnsDiscovery, "refresh_interval", 0.5)
    server = FakeServer(mode)
    try:
        name = new_cluster()
        a = mdns_group(cluster, cluster.bucket(), name)
        forger.register(forger.record(f"fake-{uuid.uuid4().hex[:6]}", name, port=server.port))
        address = (LOOPBACK, server.port)
        wait_until(lambda: peer_info(a, address) is not None, WAIT, what="the entry")
        wait_until(lambda: peer_info(a, address) is None, 60.0, what="the entry dropped")
        dropped_after = server.count
        print(f"\n{mode}: dropped after {dropped_after} connection attempts")
        assert dropped_after == attempts
        # The record is still announced and re-reported, but not dialled again for a while.
        refreshes = stat(a, "refreshes")
        wait_until(lambda: stat(a, "refreshes") >= refreshes + 3, WAIT, what="3 refreshes")
        assert peer_info(a, address) is None
        assert server.count == dropped_after
    finally:
        server.close()


@pytest.mark.slow
def test_the_discovered_table_is_bounded(
    cluster: Cluster, forger: Forger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(group_actor, "MAX_DISCOVERED", 5)
    name = new_cluster()
    a = mdns_group(cluster, cluster.bucket(), name)
    b = mdns_group(cluster, cluster.bucket(), name)
    wait_peer_up(a, b.address, timeout=WAIT)
    servers = [FakeServer("hangup") for _ in range(12)]
    try:
        records = [
            forger.record(f"many{i}-{uuid.uuid4().hex[:6]}", name, port=s.port)
            for i, s in enumerate(servers)
        ]
        forger.register(*records)
        most = 0

        def all_reported() -> bool:
            nonlocal most
            most = max(most, sum(1 for p in a.peers() if p.source == "mdns"))
            return len(source_of(a).known_peers()) >= 13

        wait_until(all_reported, WAIT, what="every announcement reported")
        peers = a.peers()
        assert most <= 5 and len(peers) <= 5
        assert up(a, b.address)  # a connected peer is never evicted
    finally:
        for server in servers:
            server.close()


@pytest.mark.slow
def test_the_source_tracks_a_bounded_number_of_names(
    forger: Forger, watchers: list[MdnsDiscovery], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(MdnsDiscovery, "max_names", 20)
    name = new_cluster()
    watcher, _events = watch(watchers, name)
    records = [forger.record(f"n{i}-{uuid.uuid4().hex[:6]}", name) for i in range(30)]
    forger.register(*records)
    wait_until(lambda: watcher.stats()["ignored_names"] >= 10, WAIT, what="names ignored")
    assert watcher.stats()["names"] <= 20
