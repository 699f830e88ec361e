"""Nodes in separate processes on loopback: overflow to a child node, a peer SIGKILLed in the
middle of a burst (every task accounted for, no fill hangs), a frozen peer marked down."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import pykka
import pytest
from helpers.child_node import ChildNode
from helpers.cluster import (
    BUCKET,
    HOLD,
    Cluster,
    addr_text,
    hold,
    peer_info,
    wait_peer_load,
    wait_peer_up,
)
from helpers.waiting import WAIT, future_done, outcome, wait_until

from gobucket import (
    NoPeerAvailableError,
    PeerLostTaskError,
    Placement,
    TaskBucketGroup,
)

pytestmark = pytest.mark.slow

PING = 0.2


def full_local_node(cluster: Cluster, peer: ChildNode, **kwargs: Any) -> TaskBucketGroup:
    bucket = cluster.bucket(max_bucket=1)
    hold(bucket, 1)
    group = cluster.group(bucket, peers=[peer.address], ping_interval=PING, **kwargs)
    wait_peer_up(group, peer.address)
    return group


def test_overflow_reaches_a_node_in_another_process(
    cluster: Cluster, spawn_node: Callable[..., ChildNode]
) -> None:
    child = spawn_node("--max", "5", "--ping", str(PING))
    group = full_local_node(cluster, child)
    info = wait_peer_load(group, child.address, (0, 5))
    assert info.node and info.node != group.node_id
    placements = [group.fill(BUCKET, f"mp::{i}", {"i": i}, **HOLD, timeout=WAIT) for i in range(5)]
    assert all(not p.local and p.node == info.node for p in placements)
    assert all(p.address == child.address for p in placements)
    with pytest.raises(NoPeerAvailableError):
        group.fill(BUCKET, "mp::overflow", None, **HOLD, timeout=WAIT)
    assert child.alive_tasks() == 5
    wait_peer_load(group, child.address, (5, 5))


def test_wrong_secret_child_never_comes_up(
    cluster: Cluster, spawn_node: Callable[..., ChildNode], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG", logger="gobucket")  # each attempt is at DEBUG, WARNING once
    child = spawn_node("--secret", "not-the-cluster-key", "--ping", str(PING))
    bucket = cluster.bucket(max_bucket=1)
    hold(bucket, 1)
    group = cluster.group(bucket, peers=[child.address], ping_interval=PING)
    wait_until(
        lambda: sum("refused the handshake" in r.getMessage() for r in caplog.records) >= 2,
        what="two refused handshakes",
    )
    info = peer_info(group, child.address)
    assert info is not None and not info.up
    assert info.reason is not None and "secret" in info.reason
    with pytest.raises(NoPeerAvailableError):
        group.fill(BUCKET, "nope", None, **HOLD, timeout=WAIT)
    assert child.alive_tasks() == 0


def test_peer_killed_mid_burst_every_task_is_accounted_for(
    cluster: Cluster, spawn_node: Callable[..., ChildNode]
) -> None:
    child = spawn_node("--max", "100000", "--ping", str(PING))
    group = full_local_node(cluster, child)
    peer_text = addr_text(child.address)

    reports: list[tuple[str, str, str, BaseException]] = []
    reports_lock = threading.Lock()

    def failed(peer: str, bucket: str, task_id: str, error: BaseException) -> None:
        with reports_lock:
            reports.append((peer, bucket, task_id, error))

    group.on_peer_schedule_failed = failed

    futures: dict[str, pykka.Future[Placement]] = {}
    killed = threading.Event()
    stop_filling = threading.Event()
    filler_errors: list[BaseException] = []

    def filler() -> None:
        try:
            after_kill = 0
            window: list[pykka.Future[Placement]] = []
            for i in range(20000):
                if stop_filling.is_set():
                    return
                future = group.fill_async(BUCKET, f"burst::{i}", {"i": i}, **HOLD)
                futures[f"burst::{i}"] = future
                window.append(future)
                if len(window) >= 50:  # keep ~50 fills in flight: a pipeline, not a flood
                    oldest = window.pop(0)
                    deadline = time.monotonic() + WAIT
                    while not future_done(oldest) and time.monotonic() < deadline:
                        time.sleep(0.001)
                if killed.is_set():
                    after_kill += 1
                    if after_kill >= 100:
                        return
        except BaseException as error:  # surfaced by the test thread
            filler_errors.append(error)

    thread = threading.Thread(target=filler, name="filler", daemon=True)
    thread.start()
    try:

        def acked() -> int:
            return sum(
                1
                for f in list(futures.values())
                if future_done(f) and isinstance(outcome(f, 0), Placement)
            )

        wait_until(lambda: acked() >= 200, what="200 fills acknowledged by the peer")
        killed_at = time.monotonic()
        child.signal(signal.SIGKILL)
        # kill() returns before the child is gone (it may still ack a frame on the
        # other core): "after the kill" starts once it has really exited.
        child.proc.wait(WAIT)
        killed.set()
        wait_until(
            lambda: (i := peer_info(group, child.address)) is not None and not i.up,
            timeout=WAIT,
            what="the killed peer to be marked down",
        )
        down_after = time.monotonic() - killed_at
        thread.join(WAIT * 3)
        assert not thread.is_alive(), "the filler hung"
    finally:
        stop_filling.set()
        child.kill()
    assert not filler_errors, filler_errors

    total = len(futures)
    remote = local = raised = 0
    lost: set[str] = set()
    for task_id, future in futures.items():
        result = outcome(future, timeout=WAIT)  # no fill hangs
        if isinstance(result, Placement):
            assert result.task_id == task_id
            if result.local:
                local += 1
            else:
                assert result.address == child.address
                remote += 1
        else:
            assert isinstance(result, NoPeerAvailableError | PeerLostTaskError), repr(result)
            raised += 1
            if isinstance(result, PeerLostTaskError):
                lost.add(task_id)
    assert remote + local + raised == total
    assert local == 0  # the local bucket was full all along
    assert remote >= 200
    assert raised >= 100  # everything filled after the kill failed, loudly
    # every task lost in flight was also reported to on_peer_schedule_failed, once
    wait_until(lambda: lost <= {r[2] for r in list(reports)}, what="lost tasks reported")
    with reports_lock:
        snapshot = list(reports)
    ids = [r[2] for r in snapshot]
    assert len(ids) == len(set(ids)), "a task was reported twice"
    reported = {r[2]: r for r in snapshot}
    for task_id in lost:
        peer, bucket, _, error = reported[task_id]
        assert (peer, bucket) == (peer_text, BUCKET)
        assert isinstance(error, PeerLostTaskError)
    # and nothing that was placed was reported as failed
    placed = {t for t, f in futures.items() if isinstance(outcome(f, 0), Placement)}
    assert not placed & set(reported)
    assert down_after < 3.0, f"marked down {down_after:.2f}s after SIGKILL"


def test_frozen_peer_is_marked_down_within_a_few_ping_intervals(
    cluster: Cluster, spawn_node: Callable[..., ChildNode]
) -> None:
    child = spawn_node("--max", "50", "--ping", str(PING))
    group = full_local_node(cluster, child)
    group.fill(BUCKET, "before", None, **HOLD, timeout=WAIT)
    child.signal(signal.SIGSTOP)  # the socket stays open; only the pings go unanswered
    try:
        frozen_at = time.monotonic()
        wait_until(
            lambda: (i := peer_info(group, child.address)) is not None and not i.up,
            what="the frozen peer to be marked down",
        )
        down_after = time.monotonic() - frozen_at
        # 3 missed pings at 0.2 s; the bound leaves room for a loaded machine
        assert down_after < 3.0, f"marked down after {down_after:.2f}s"
        assert down_after >= 2 * PING, f"marked down too early ({down_after:.2f}s)"
        future = group.fill_async(BUCKET, "while-frozen", None, **HOLD)
        result = outcome(future)
        assert isinstance(result, NoPeerAvailableError), repr(result)
    finally:
        child.signal(signal.SIGCONT)
    # once thawed it is dialled again and takes overflow again
    wait_peer_up(group, child.address, timeout=20.0)
    placement = group.fill(BUCKET, "after", None, **HOLD, timeout=WAIT)
    assert not placement.local
    assert child.alive_tasks() == 2
