"""Overflow routing between several nodes in one process: the peer with most free room first,
refusals fall through to the next peer, and every task lives in exactly one place."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import pytest
from helpers.cluster import BUCKET, HOLD, Cluster, free_port, hold, wait_peer_load, wait_peer_up
from helpers.waiting import WAIT, outcome, run_threads

from gobucket import (
    NoPeerAvailableError,
    Placement,
    TaskBucket,
)


class Trio:
    """A (local bucket full) with peers B and C; B has more room than C."""

    def __init__(
        self, cluster: Cluster, b_max: int, c_max: int, ping_interval: float = 0.2
    ) -> None:
        self.b_bucket = cluster.bucket(max_bucket=b_max)
        self.c_bucket = cluster.bucket(max_bucket=c_max)
        self.b = cluster.group(self.b_bucket, ping_interval=ping_interval)
        self.c = cluster.group(self.c_bucket, ping_interval=ping_interval)
        self.a_bucket = cluster.bucket(max_bucket=1)
        hold(self.a_bucket, 1)
        # C is listed first, so a tie would not favour B by list order
        self.a = cluster.group(
            self.a_bucket, peers=[self.c.address, self.b.address], ping_interval=ping_interval
        )
        wait_peer_up(self.a, self.b.address)
        wait_peer_up(self.a, self.c.address)
        self.names = {self.b.node_id: "B", self.c.node_id: "C"}

    def fill(self, task_id: str) -> str:
        """Fill through A; return "B", "C" or "none"."""
        try:
            placement = self.a.fill(BUCKET, task_id, None, **HOLD, timeout=WAIT)
        except NoPeerAvailableError:
            return "none"
        assert not placement.local
        return self.names[placement.node]


def test_overflow_goes_to_the_peer_with_most_room_then_the_next_then_nowhere(
    cluster: Cluster,
) -> None:
    # A long ping interval: A's view is the first report minus what it sent since,
    # so every choice is determined.
    trio = Trio(cluster, b_max=3, c_max=1, ping_interval=30.0)
    room = {"B": 3, "C": 1}
    choices = []
    for i in range(5):
        where = trio.fill(f"t{i}")
        choices.append(where)
        if where != "none":
            assert room[where] == max(room.values()), f"fill {i} went to {where}, room {room}"
            room[where] -= 1
    assert choices[0] == "B"
    assert choices[1] == "B"  # B still has 2 free, C 1
    assert Counter(choices) == {"B": 3, "C": 1, "none": 1}
    assert choices[-1] == "none"
    assert (len(trio.b_bucket), len(trio.c_bucket)) == (3, 1)


def test_b_first_then_c_then_no_peer_with_live_load_reports(cluster: Cluster) -> None:
    trio = Trio(cluster, b_max=4, c_max=2)
    wait_peer_load(trio.a, trio.b.address, (0, 4))
    wait_peer_load(trio.a, trio.c.address, (0, 2))
    choices = [trio.fill(f"t{i}") for i in range(8)]
    assert choices[0] == "B"
    assert choices[1] == "B"  # B has 3 free, C 2
    assert Counter(choices) == {"B": 4, "C": 2, "none": 2}
    assert choices[-2:] == ["none", "none"]
    assert (len(trio.b_bucket), len(trio.c_bucket)) == (4, 2)


def test_most_room_is_max_minus_alive_not_max(cluster: Cluster) -> None:
    trio = Trio(cluster, b_max=10, c_max=4)
    hold(trio.b_bucket, 9)  # B: 1 free of 10; C: 4 free of 4
    wait_peer_load(trio.a, trio.b.address, (9, 10))
    assert trio.fill("first") == "C"


def test_a_refusal_falls_through_to_the_next_peer(cluster: Cluster) -> None:
    trio = Trio(cluster, b_max=3, c_max=1, ping_interval=30.0)
    hold(trio.b_bucket, 3)  # B is full now, but A's last report says it is empty
    assert trio.fill("spill") == "C"  # B refused (full): the same fill went on to C
    assert "spill" in trio.c_bucket and "spill" not in trio.b_bucket
    assert trio.fill("after") == "none"  # B is known full now, C took its one


def test_refusals_across_all_peers_report_the_last_refusal(cluster: Cluster) -> None:
    trio = Trio(cluster, b_max=2, c_max=1, ping_interval=30.0)
    hold(trio.b_bucket, 2)
    hold(trio.c_bucket, 1)
    reports: list[tuple[str, str, str, BaseException]] = []
    trio.a.on_peer_schedule_failed = lambda *args: reports.append(args)
    with pytest.raises(NoPeerAvailableError) as info:
        trio.a.fill(BUCKET, "everyone-full", None, **HOLD, timeout=WAIT)
    assert "full" in str(info.value)
    assert (len(trio.b_bucket), len(trio.c_bucket)) == (2, 1)


def test_only_peers_holding_that_bucket_are_tried(cluster: Cluster) -> None:
    other_peer = cluster.bucket(max_bucket=5, name="other")
    b_sample = cluster.bucket(max_bucket=5)
    b = cluster.group(b_sample)  # only "sample"
    c = cluster.group({"other": other_peer})  # only "other"
    a_sample = cluster.bucket(max_bucket=1)
    a_other = cluster.bucket(max_bucket=1, name="other")
    hold(a_sample, 1)
    hold(a_other, 1)
    a = cluster.group({BUCKET: a_sample, "other": a_other}, peers=[b.address, c.address])
    wait_peer_up(a, b.address)
    wait_peer_up(a, c.address, bucket="other")
    assert a.fill("other", "o1", None, **HOLD, timeout=WAIT).node == c.node_id
    assert a.fill(BUCKET, "s1", None, **HOLD, timeout=WAIT).node == b.node_id
    assert "o1" in other_peer and "s1" in b_sample
    assert len(b_sample) == 1 and len(other_peer) == 1


def _accounting(
    futures: dict[str, Any],
    buckets: dict[str, TaskBucket],
    local: TaskBucket,
    names: dict[str, str],
) -> Counter[str]:
    """Check every task lives in exactly one place, or its fill raised; count them."""
    seen: Counter[str] = Counter()
    for task_id, future in futures.items():
        result = outcome(future)
        where = [name for name, bucket in buckets.items() if task_id in bucket]
        if task_id in local:
            where.append("local")
        if isinstance(result, Placement):
            expected = "local" if result.local else names[result.node]
            assert where == [expected], f"{task_id}: placed on {expected}, found in {where}"
            seen[expected] += 1
        else:
            assert isinstance(result, NoPeerAvailableError), repr(result)
            assert where == [], f"{task_id} raised {result!r} but lives in {where}"
            seen["raised"] += 1
    return seen


def test_a_concurrent_burst_places_every_task_exactly_once(cluster: Cluster) -> None:
    trio = Trio(cluster, b_max=20, c_max=10)
    futures = {
        f"burst::{i}": trio.a.fill_async(BUCKET, f"burst::{i}", i, **HOLD) for i in range(45)
    }
    seen = _accounting(futures, {"B": trio.b_bucket, "C": trio.c_bucket}, trio.a_bucket, trio.names)
    assert seen == {"B": 20, "C": 10, "raised": 15}


def test_bursts_from_several_threads_place_every_task_exactly_once(cluster: Cluster) -> None:
    trio = Trio(cluster, b_max=20, c_max=10)
    futures: dict[str, Any] = {}
    lock = threading.Lock()

    def submit(thread: int) -> None:
        for i in range(15):
            task_id = f"t{thread}::{i}"
            future = trio.a.fill_async(BUCKET, task_id, i, **HOLD)
            with lock:
                futures[task_id] = future

    run_threads(submit, 4)
    assert len(futures) == 60
    seen = _accounting(futures, {"B": trio.b_bucket, "C": trio.c_bucket}, trio.a_bucket, trio.names)
    assert seen == {"B": 20, "C": 10, "raised": 30}


def test_two_nodes_overflowing_into_each_other_at_once(cluster: Cluster) -> None:
    """A and B list each other; both are nearly full; each overflows into the other."""
    a_port, b_port = free_port(), free_port()
    a_bucket = cluster.bucket(max_bucket=15)
    b_bucket = cluster.bucket(max_bucket=15)
    a = cluster.group(a_bucket, peers=[("127.0.0.1", b_port)], port=a_port)
    b = cluster.group(b_bucket, peers=[("127.0.0.1", a_port)], port=b_port)
    wait_peer_up(a, b.address)
    wait_peer_up(b, a.address)
    hold(a_bucket, 10)
    hold(b_bucket, 10)
    futures = {f"a::{i}": a.fill_async(BUCKET, f"a::{i}", i, **HOLD) for i in range(12)}
    futures.update({f"b::{i}": b.fill_async(BUCKET, f"b::{i}", i, **HOLD) for i in range(12)})
    placed = 0
    for task_id, future in futures.items():
        result = outcome(future)
        homes = [task_id in a_bucket, task_id in b_bucket].count(True)
        if isinstance(result, Placement):
            assert homes == 1, task_id
            placed += 1
        else:
            assert isinstance(result, NoPeerAvailableError), repr(result)
            assert homes == 0, task_id
    # 5 free slots on each side: all taken, whatever the interleaving; nothing twice
    assert placed == 10
    assert len(a_bucket) == len(b_bucket) == 15
