"""The network side's limits: unauthenticated connections, accept() failures, silent peers,
in-flight fills, clean stops, and the reason a peer is down.

Everything runs on real sockets on 127.0.0.1. Nothing here speaks the handshake by hand:
real peers are real groups, attackers only connect and trickle bytes, so these tests hold
whatever the handshake looks like.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import queue
import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
from helpers.child_node import ChildNode, python_child
from helpers.cluster import BUCKET, HOLD, Cluster, free_port, hold, peer_info, wait_peer_up
from helpers.waiting import WAIT, outcome, wait_until

from gobucket import NoPeerAvailableError, Placement, TaskBucketGroup
from gobucket.wire import peer
from gobucket.wire.node import MAX_UNAUTHENTICATED, SILENCE_PINGS

MiB = 1 << 20


# --- helpers --------------------------------------------------------------------------------


def closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """Read (and drop) what the server sends until it closes; False if still open at timeout."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            return False
        except OSError:  # reset
            return True
        if not data:
            return True


def still_open(sock: socket.socket) -> bool:
    """True if the server has not closed ``sock`` (checked without waiting)."""
    sock.setblocking(False)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return False
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.setblocking(True)


def overflow_client(cluster: Cluster, server: tuple[str, int], **kwargs: Any) -> TaskBucketGroup:
    """A group whose own bucket is full, so that its fills go to ``server``."""
    bucket = cluster.bucket(max_bucket=1)
    hold(bucket, 1)
    return cluster.group(bucket, peers=[server], **kwargs)


def fill_remote(group: TaskBucketGroup, node: str | None = None) -> Placement:
    placement = group.fill(BUCKET, "t-" + uuid.uuid4().hex[:8], {"n": 1}, timeout=WAIT, **HOLD)
    assert not placement.local
    if node is not None:
        assert placement.node == node
    return placement


class ScriptNode:
    """A Python child process running ``code``: stdout lines as replies, stderr as its log."""

    def __init__(self, code: str, *args: str) -> None:
        self.proc = python_child("-c", code, *args)
        self.lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self.log: list[tuple[float, str]] = []  # (monotonic time, stderr line)
        self._lock = threading.Lock()
        self._pumps = [
            threading.Thread(target=self._pump_out, daemon=True),
            threading.Thread(target=self._pump_err, daemon=True),
        ]
        for pump in self._pumps:
            pump.start()

    def _pump_out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _pump_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._lock:
                self.log.append((time.monotonic(), line.rstrip("\n")))

    def log_lines(self, since: float = 0.0, until: float = float("inf")) -> list[str]:
        with self._lock:
            return [line for at, line in self.log if since <= at < until]

    def expect(self, prefix: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {prefix!r} from the child; log: {self.log_lines()[-20:]}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"the child exited; log: {self.log_lines()[-20:]}")
            if line.startswith(prefix):
                return line

    def command(self, command: str, reply: str, timeout: float = 30.0) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.expect(reply, timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for pump in self._pumps:
            pump.join(5)


# --- the cap on unauthenticated connections ----------------------------------------------------


def test_connections_over_the_cap_are_closed_at_once_and_a_real_peer_still_connects(
    cluster: Cluster,
) -> None:
    server = cluster.group(cluster.bucket(max_bucket=50))
    network = server._network
    assert network.max_unauthenticated == MAX_UNAUTHENTICATED
    extra = 8
    held: list[socket.socket] = []
    try:
        for _ in range(MAX_UNAUTHENTICATED):
            held.append(socket.create_connection(server.address, timeout=WAIT))
        wait_until(
            lambda: network.unauthenticated == MAX_UNAUTHENTICATED,
            what="the server to hold a full cap of unauthenticated connections",
        )
        started = time.monotonic()
        for _ in range(extra):
            held.append(socket.create_connection(server.address, timeout=WAIT))
        # The surplus is closed at once, oldest first: the cap is never exceeded.
        for sock in held[:extra]:
            assert closed_by_server(sock, WAIT), "a connection over the cap was not closed"
        closed_after = time.monotonic() - started
        assert network.unauthenticated <= MAX_UNAUTHENTICATED
        assert closed_after < 2.0, f"the surplus took {closed_after:.2f} s to close"
        assert all(still_open(sock) for sock in held[-extra:]), "the newest ones were closed"

        # A real peer connects and fills although the cap is full of idle connections.
        began = time.monotonic()
        client = overflow_client(cluster, server.address)
        wait_peer_up(client, server.address, bucket=None)
        fill_remote(client, server.node_id)
        took = time.monotonic() - began
        print(f"surplus closed in {closed_after * 1000:.0f} ms; real peer filled in {took:.2f} s")
        assert network.unauthenticated <= MAX_UNAUTHENTICATED
    finally:
        for sock in held:
            sock.close()


ATTACKER = r"""
import selectors, socket, sys, time

host, port, count, period, duration = (
    sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]))
# A plausible frame, trickled one byte per connection per period (slowloris).
PATTERN = b"\x00\x00\x01\x00" + bytes(range(256))
selector = selectors.DefaultSelector()
sent = {}
opened = closed = failed = 0
start = time.monotonic()
due = [start + i / count for i in range(count)]  # they trickle in over the first second
tick = start
ready = False
while time.monotonic() < start + duration:
    now = time.monotonic()
    later = []
    for at in due:
        if at > now:
            later.append(at)
            continue
        try:
            sock = socket.create_connection((host, port), timeout=1.0)
        except OSError:
            failed += 1
            later.append(now + period)
            continue
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
        sent[sock] = 0
        opened += 1
    due = later
    if not ready and opened >= count:
        print("READY", flush=True)
        ready = True
    if now >= tick:
        for sock in list(sent):
            try:
                sock.send(PATTERN[sent[sock] % len(PATTERN):][:1])
                sent[sock] += 1
            except OSError:
                pass  # noticed as closed by the reads below
        tick = now + period
    for key, _ in selector.select(timeout=0.02):
        sock = key.fileobj
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            continue
        except OSError:
            data = b""
        if not data:  # closed by the server: come back after a while, as an attacker would
            selector.unregister(sock)
            sock.close()
            del sent[sock]
            closed += 1
            due.append(now + period)
print(f"STATS opened={opened} closed={closed} failed={failed} held={len(sent)}", flush=True)
"""


@pytest.mark.slow
def test_500_trickling_attackers_cost_little_memory_and_do_not_keep_a_real_peer_out(
    cluster: Cluster,
) -> None:
    node = ChildNode("--max", "100")
    attacker: ScriptNode | None = None
    samples: list[tuple[int, int]] = []
    stop_sampling = threading.Event()
    try:
        proc = psutil.Process(node.proc.pid)
        # Warm up: one real peer connects and fills, so that first-use allocations count
        # in the baseline, not as growth.
        warm = overflow_client(cluster, node.address)
        wait_peer_up(warm, node.address, bucket=None)
        fill_remote(warm)
        warm.stop()
        gc.collect()
        baseline_rss, baseline_fds = proc.memory_info().rss, proc.num_fds()

        def sample() -> None:
            while not stop_sampling.wait(0.05):
                with contextlib.suppress(psutil.Error):
                    samples.append((proc.memory_info().rss, proc.num_fds()))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        host, port = node.address
        attacker = ScriptNode(ATTACKER, host, str(port), "500", "0.5", "8")
        attacker.expect("READY")
        # The attack is on: 500 connections trickle bytes and come back when closed.
        began = time.monotonic()
        client = overflow_client(cluster, node.address)
        wait_peer_up(client, node.address, bucket=None)
        fill_remote(client)
        took = time.monotonic() - began
        stats = attacker.expect("STATS")
        stop_sampling.set()
        sampler.join(5)
        peak_rss = max(rss for rss, _ in samples)
        peak_fds = max(fds for _, fds in samples)
        growth = (peak_rss - baseline_rss) / MiB
        print(
            f"real peer connected and filled in {took:.3f} s; child RSS {baseline_rss / MiB:.1f}"
            f" -> peak {peak_rss / MiB:.1f} MiB (+{growth:.1f}); fds {baseline_fds} -> peak"
            f" {peak_fds}; attacker {stats}"
        )
        opened = int(re.search(r"opened=(\d+)", stats).group(1))  # type: ignore[union-attr]
        assert opened >= 500, stats
        assert growth < 20, f"RSS grew by {growth:.1f} MiB"
        assert peak_fds - baseline_fds <= MAX_UNAUTHENTICATED + 16, (baseline_fds, peak_fds)
        assert took < 1.0, f"the real peer took {took:.2f} s to connect and fill"
        # still serving after the attack
        fill_remote(client)
    finally:
        stop_sampling.set()
        if attacker is not None:
            attacker.proc.kill()
            attacker.close()
        node.close()


# --- accept() failures ---------------------------------------------------------------------------


EMFILE_NODE = r"""
import logging, os, resource, sys
logging.basicConfig(
    level=logging.INFO, stream=sys.stderr, format="LOG %(levelname)s %(name)s: %(message)s")
from gobucket import BucketConfig, Executor, TaskBucket, TaskBucketGroup

bucket = TaskBucket(
    BucketConfig(max_bucket=100, name="sample", life_span=300.0, run_after=200.0), Executor())
group = TaskBucketGroup({"sample": bucket}, port=0, ping_interval=0.2, secret="cluster-key",
                        host="127.0.0.1", discovery=False)
group.start()
print(f"PORT {group.address[1]}", flush=True)
hoard = []
try:
    for line in sys.stdin:
        command = line.strip()
        if command == "EXHAUST":  # a low limit, then every descriptor left taken by the app
            used = len(os.listdir("/proc/self/fd"))
            resource.setrlimit(resource.RLIMIT_NOFILE,
                               (used + 16, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
            try:
                while True:
                    hoard.append(os.open(os.devnull, os.O_RDONLY))
            except OSError:
                pass
            print(f"EXHAUSTED {len(hoard)}", flush=True)
        elif command == "FREE":
            for fd in hoard:
                os.close(fd)
            hoard.clear()
            print("FREED", flush=True)
        elif command == "LEN":
            print(f"LEN {len(bucket)}", flush=True)
finally:
    group.stop()
    bucket.close(grace=0)
"""


@pytest.mark.slow
def test_accept_failing_with_emfile_logs_once_and_recovers(cluster: Cluster) -> None:
    node = ScriptNode(EMFILE_NODE)
    waiting: list[socket.socket] = []
    try:
        port = int(node.expect("PORT").split()[1])
        address = ("127.0.0.1", port)
        node.command("EXHAUST", "EXHAUSTED")
        began = time.monotonic()
        # The kernel completes these connections; the node cannot accept them.
        for _ in range(5):
            waiting.append(socket.create_connection(address, timeout=WAIT))

        def failing() -> list[str]:
            return [line for line in node.log_lines(began) if "cannot accept" in line]

        first = wait_until(failing, what="the node to log that accept() fails")
        assert "Too many open files" in first[0], first
        window = 3.0  # accept() keeps failing meanwhile (back-off 0.05 s doubling to 1 s)
        time.sleep(window)
        during = node.log_lines(began)
        node.command("FREE", "FREED")
        again = wait_until(
            lambda: [line for line in node.log_lines(began) if "again, after" in line],
            what="the node to accept connections again",
        )
        failures = int(re.search(r"after (\d+) failed", again[0]).group(1))  # type: ignore[union-attr]
        print(
            f"{failures} failed accept() calls over {window:.0f}+ s logged as "
            f"{len(failing())} line(s); {len(during)} log line(s) in all meanwhile"
        )
        assert failures >= 4, again  # it kept trying...
        assert len(failing()) == 1, failing()  # ...and said so once
        assert len(during) <= 3, during
        # Recovered: a real peer connects and fills.
        client = overflow_client(cluster, address)
        wait_peer_up(client, address, bucket=None)
        fill_remote(client)
        assert node.command("LEN", "LEN") == "LEN 1"
    finally:
        for sock in waiting:
            sock.close()
        node.close()


# --- silent inbound connections ---------------------------------------------------------------


def dial_attempts(group: TaskBucketGroup, address: tuple[str, int]) -> int:
    """How many times ``group`` has dialled ``address`` (1 while the first link holds)."""
    assert group._group is not None
    actor = group._group.ref.actor_inbox._actor  # type: ignore[attr-defined]
    return int(actor.peers[address].ref.attempts)


def test_an_inbound_connection_that_goes_silent_is_closed_after_a_few_ping_intervals(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gobucket")
    interval = 0.3
    server = cluster.group(cluster.bucket(max_bucket=50), ping_interval=interval)
    assert server._network.ping_interval == interval
    healthy = cluster.group(cluster.bucket(), peers=[server.address], ping_interval=interval)
    # Pings once when it connects, then not for a minute: silent after the handshake.
    silent = cluster.group(cluster.bucket(), peers=[server.address], ping_interval=60.0)
    wait_peer_up(healthy, server.address)
    up = wait_peer_up(silent, server.address)
    assert up.last_seen is not None  # its first (and last) load report, just after connecting
    connected = time.time() - (time.monotonic() - up.last_seen)
    assert dial_attempts(silent, server.address) == 1

    def dropped() -> list[logging.LogRecord]:
        return [
            r
            for r in caplog.records
            if r.name == "gobucket.group" and "nothing received" in r.getMessage()
        ]

    record = wait_until(dropped, what="the server to close the silent connection")[0]
    took = record.created - connected
    print(f"silent connection closed after {took:.2f} s ({took / interval:.1f} intervals)")
    print(f"  the client logged: {record.getMessage()}")
    # The silent client would not have closed it for 3 minutes: the server did, in time.
    assert (SILENCE_PINGS - 0.5) * interval <= took < WAIT, took
    # It re-dials (and is dropped again while it stays silent); the healthy peer, which
    # pings, kept its first connection all along.
    wait_until(lambda: dial_attempts(silent, server.address) >= 2, what="a re-dial")
    assert dial_attempts(healthy, server.address) == 1
    assert peer_info(healthy, server.address).up  # type: ignore[union-attr]


# --- in flight -------------------------------------------------------------------------------


def test_fills_beyond_the_in_flight_limit_are_not_sent(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(peer, "MAX_IN_FLIGHT_PER_PEER", 2)
    node = ChildNode("--max", "100")
    try:
        # Pings once a minute: the stopped peer is not marked down during the test.
        client = overflow_client(cluster, node.address, ping_interval=60.0)
        wait_peer_up(client, node.address)
        os.kill(node.proc.pid, signal.SIGSTOP)  # it takes fills and never answers them
        first = [client.fill_async(BUCKET, f"flight::{i}", i, **HOLD) for i in range(2)]
        third = outcome(client.fill_async(BUCKET, "flight::2", 2, **HOLD))
        assert isinstance(third, NoPeerAvailableError), third
        assert "await an answer" in str(third)
        os.kill(node.proc.pid, signal.SIGCONT)
        assert all(isinstance(outcome(f), Placement) for f in first)
        assert node.alive_tasks() == 2
    finally:
        node.close()


# --- logs ---------------------------------------------------------------------------------------


def test_a_clean_stop_with_open_inbound_connections_logs_no_error(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = cluster.group(cluster.bucket(max_bucket=50))
    clients = [overflow_client(cluster, server.address) for _ in range(3)]
    for client in clients:
        wait_peer_up(client, server.address)
        fill_remote(client, server.node_id)
    idle = socket.create_connection(server.address, timeout=WAIT)  # never authenticates
    try:
        wait_until(lambda: server._network.inbound == 4, what="4 inbound connections")
        server.stop()
        for client in clients:
            wait_until(
                lambda c=client: not peer_info(c, server.address).up,  # type: ignore[union-attr]
                what="the clients to see the server go",
            )
        assert closed_by_server(idle, WAIT)
        for client in clients:
            client.stop()
    finally:
        idle.close()
    gc.collect()  # "Task was destroyed but it is pending!" would be logged now
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [f"{r.levelname} {r.name}: {r.getMessage()}" for r in bad]


@pytest.fixture
def wire_debug(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.DEBUG, logger="gobucket")
    yield caplog


def _group_warnings(caplog: pytest.LogCaptureFixture, port: int) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "gobucket.group"
        and r.levelno >= logging.WARNING
        and f":{port}" in r.getMessage()
    ]


def test_a_peer_refusing_connections_is_logged_once_with_the_reason(
    cluster: Cluster, wire_debug: pytest.LogCaptureFixture
) -> None:
    port = free_port()  # nothing listens there
    group = cluster.group(cluster.bucket(), peers=[("127.0.0.1", port)])

    def attempts() -> int:
        return sum(
            1
            for r in wire_debug.records
            if r.getMessage().startswith(f"cannot connect to 127.0.0.1:{port}")
        )

    wait_until(lambda: attempts() >= 5, what="5 connection attempts")
    info = peer_info(group, ("127.0.0.1", port))
    assert info is not None and not info.up
    assert info.reason is not None and "refused" in info.reason, info.reason
    warnings = _group_warnings(wire_debug, port)
    print(f"{attempts()} attempts, {len(warnings)} warning(s): {warnings}")
    assert len(warnings) == 1, warnings
    assert "connection refused" in warnings[0]


@pytest.mark.parametrize(
    ("client_kwargs", "expected"),
    [({"secret": "wrong-key"}, "secret"), ({"cluster": "other-cluster"}, "cluster")],
    ids=["wrong-secret", "other-cluster"],
)
def test_a_refused_handshake_shows_as_the_reason_and_is_logged_once(
    cluster: Cluster,
    wire_debug: pytest.LogCaptureFixture,
    client_kwargs: dict[str, str],
    expected: str,
) -> None:
    server = cluster.group(cluster.bucket())
    client = cluster.group(cluster.bucket(), peers=[server.address], **client_kwargs)
    port = server.address[1]

    def refusals() -> int:
        return sum(
            1
            for r in wire_debug.records
            if r.name == "gobucket.wire"
            and "refused the handshake" in r.getMessage()
            and f":{port}" in r.getMessage()
        )

    wait_until(lambda: refusals() >= 2, what="two refused handshakes")  # 1-5 s apart
    info = peer_info(client, server.address)
    assert info is not None and not info.up
    assert info.reason is not None and "handshake" in info.reason, info.reason
    warnings = _group_warnings(wire_debug, port)
    print(f"reason: {info.reason!r}; {refusals()} refusals, {len(warnings)} warning(s)")
    assert len(warnings) == 1, warnings
    assert expected in info.reason or "refused" in info.reason, info.reason
