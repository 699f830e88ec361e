"""Recovery across a group: GroupActor supervision and a rolling restart with hand-off."""

from __future__ import annotations

import random
import socket
import threading
import time
from collections import Counter
from typing import Any

import pytest

from gobucket import (
    BucketConfig,
    Executor,
    GoBucketError,
    TaskBucket,
    TaskBucketGroup,
    TaskContext,
    TaskType,
)
from gobucket.actors import group as group_module

WAIT = 15.0


def wait_until(predicate: Any, timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.03)
    return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Ledger(Executor):
    """Counts every end of every task, across all nodes."""

    def __init__(self, ledger: Counter[str], lock: threading.Lock, node: str) -> None:
        self.ledger, self.lock, self.node = ledger, lock, node

    def _end(self, id: str) -> None:
        with self.lock:
            self.ledger[id] += 1

    def on_finish(self, ctx: TaskContext, id: str, data: Any) -> None:
        self._end(id)

    def on_execute_error(self, ctx: TaskContext, id: str, data: Any, error: BaseException) -> None:
        self._end(id)

    def on_task_exhausted(self, ctx: TaskContext, id: str, data: Any) -> None:
        self._end(id)

    def on_panic(self, ctx: TaskContext, id: str, data: Any) -> None:
        self._end(id)


def make_node(
    port: int, peers: list[int], ledger: Counter[str], lock: threading.Lock, size: int = 2000
) -> tuple[TaskBucket, TaskBucketGroup]:
    bucket = TaskBucket(
        BucketConfig(life_span=30, max_bucket=size, run_after=1, name="jobs"),
        Ledger(ledger, lock, str(port)),
    )
    group = TaskBucketGroup(
        {"jobs": bucket},
        peers=[f"127.0.0.1:{p}" for p in peers],
        port=port,
        ping_interval=0.2,
        secret="rolling",
        host="127.0.0.1",
        discovery=False,
    ).start()
    return bucket, group


def test_failed_group_actor_is_restarted_and_overflow_goes_on(monkeypatch):
    ledger: Counter[str] = Counter()
    lock = threading.Lock()
    pa, pb = free_port(), free_port()
    a_bucket, a = make_node(pa, [pb], ledger, lock, size=1)
    b_bucket, b = make_node(pb, [pa], ledger, lock)
    try:
        assert wait_until(lambda: any(p.up and p.loads for p in a.peers()))
        a.fill("jobs", "local", None, task_type=TaskType.TIME_BOMB, run_after=10)
        old = a._group.ref
        original = group_module.GroupActor._on_peer_changed
        crashed = threading.Event()

        def faulty(self: Any, msg: Any) -> None:
            if msg.kind == "load" and self.node_id == a.node_id and not crashed.is_set():
                crashed.set()
                raise RuntimeError("injected fault")
            original(self, msg)

        monkeypatch.setattr(group_module.GroupActor, "_on_peer_changed", faulty)
        assert crashed.wait(WAIT)
        assert wait_until(lambda: a._group.ref is not old)
        # The fresh GroupActor re-learned its peer and routes overflow again.
        assert wait_until(lambda: any(p.up and p.loads for p in a.peers()))
        placement = a.fill("jobs", "over", None, task_type=TaskType.TIME_BOMB, run_after=10)
        assert placement.local is False
        assert "over" in b_bucket
    finally:
        a.stop()
        b.stop()
        a_bucket.close(grace=0)
        b_bucket.close(grace=0)


@pytest.mark.slow
def test_rolling_restart_with_handoff_loses_nothing_under_steady_fills():
    ledger: Counter[str] = Counter()
    lock = threading.Lock()
    ports = [free_port() for _ in range(3)]
    nodes: list[tuple[TaskBucket, TaskBucketGroup] | None] = [
        make_node(p, [q for q in ports if q != p], ledger, lock) for p in ports
    ]
    nodes_lock = threading.Lock()
    accepted: list[str] = []
    refused: list[str] = []
    stop_filling = threading.Event()

    def filler() -> None:
        n = 0
        while not stop_filling.is_set():
            with nodes_lock:
                live = [node for node in nodes if node is not None]
            group = random.choice(live)[1]
            task_id = f"job-{n}"
            n += 1
            try:
                group.fill(
                    "jobs",
                    task_id,
                    {"n": n},
                    task_type=TaskType.TIME_BOMB,
                    run_after=random.uniform(0.2, 1.5),
                )
                accepted.append(task_id)
            except GoBucketError:
                refused.append(task_id)
            stop_filling.wait(0.005)  # a steady rate of about 150 fills a second

    thread = threading.Thread(target=filler)
    handed: list[int] = []
    try:
        for node in nodes:
            assert node is not None
            assert wait_until(lambda n=node: sum(p.up for p in n[1].peers()) == 2)
        thread.start()
        assert wait_until(lambda: len(accepted) > 100)
        for index, port in enumerate(ports):
            with nodes_lock:
                old = nodes[index]
                nodes[index] = None
            assert old is not None
            old_bucket, old_group = old
            handed.append(old_group.stop(handoff=True))
            old_bucket.close(wait_pending=True, grace=WAIT)  # running ones finish here
            fresh = make_node(port, [q for q in ports if q != port], ledger, lock)
            assert wait_until(lambda f=fresh: sum(p.up for p in f[1].peers()) == 2)
            with nodes_lock:
                nodes[index] = fresh
            count = len(accepted)
            assert wait_until(lambda c=count: len(accepted) > c + 50)
        stop_filling.set()
        thread.join(WAIT)
        for node in nodes:
            assert node is not None
            assert node[0].join(WAIT)
        with lock:
            ends = dict(ledger)
        assert len(accepted) > 250
        assert refused == []
        assert sum(handed) > 0  # pending tasks really moved to peers on each leave
        assert set(ends) == set(accepted)  # every accepted task ended somewhere
        assert [i for i, c in ends.items() if c != 1] == []  # exactly once
    finally:
        stop_filling.set()
        if thread.is_alive():
            thread.join(WAIT)
        for node in nodes:
            if node is not None:
                node[1].stop()
                node[0].close(grace=0)
