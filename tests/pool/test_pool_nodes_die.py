"""Nodes that die: SIGKILL while holding claims, SIGTERM rescue into the pool (child processes)."""

from __future__ import annotations

import contextlib
import json
import queue
import signal
import time
from collections import Counter
from typing import Any

import pytest
from helpers.child_node import ChildNode
from helpers.pool_nodes import BUCKET, EndLog, make_pool, pool_bucket
from helpers.waiting import WAIT

from gobucket import TaskType

pytestmark = pytest.mark.slow


def _events(child: ChildNode, kind: str, timeout: float = 0.5) -> list[dict[str, Any]]:
    """Every ``kind`` event the child printed so far (waits ``timeout`` for the last ones)."""
    found = []
    deadline = time.monotonic() + timeout
    while True:
        try:
            line = child.lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return found
        if line is None:
            return found
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            child.seen.append(event)  # type: ignore[attr-defined]
            if event.get("event") == kind:
                found.append(event)


def _pool_child(redis_url: str, *extra: str) -> ChildNode:
    child = ChildNode(
        *("--bucket", BUCKET, "--redis", redis_url, "--report-ends", "--life-span", "120"),
        *extra,
    )
    child.seen = []  # type: ignore[attr-defined]
    return child


def test_the_claims_of_a_killed_node_end_on_another_node(redis_url: str) -> None:
    pool = make_pool(redis_url)
    ids = [f"k{i}" for i in range(40)]
    for task_id in ids:
        pool.add(BUCKET, task_id, {"id": task_id}, life_span=120)
    child = _pool_child(redis_url, "--max", "10", "--work", "3", "--claim-timeout", "2")
    log = EndLog()
    survivor = None
    try:
        deadline = time.monotonic() + WAIT * 3
        started: set[str] = set()
        while len(started) < 5 and time.monotonic() < deadline:  # its first claims run
            started |= {e["id"] for e in _events(child, "started")}
        assert len(started) >= 5, started
        child.kill()  # SIGKILL while it holds claims (running or waiting)
        _events(child, "", timeout=1.0)  # read what it printed before it died
        seen = child.seen  # type: ignore[attr-defined]
        started = {e["id"] for e in seen if e.get("event") == "started"}
        ended_there = Counter(e["id"] for e in seen if e.get("event") == "ended")
        assert pool.stats(BUCKET).claimed > 0
        survivor = pool_bucket(pool, log, "survivor", max_bucket=100)
        log.wait_for(len(ids) - sum(ended_there.values()), timeout=WAIT * 4)
        deadline = time.monotonic() + WAIT * 2
        while pool.stats(BUCKET).pending and time.monotonic() < deadline:
            time.sleep(0.05)  # the last acks
        assert pool.stats(BUCKET).pending == 0
        total = ended_there + log.per_id()
        assert set(total) == set(ids)
        twice = {task_id for task_id, n in total.items() if n == 2}
        assert max(total.values()) <= 2
        assert twice <= started  # twice only for a task the killed node had started
    finally:
        child.close()
        if survivor is not None:
            survivor.close()
        pool.close()


def test_sigterm_rescues_into_the_pool_and_another_node_keeps_the_due_times(
    redis_url: str,
) -> None:
    pool = make_pool(redis_url)
    log = EndLog()
    other = pool_bucket(pool, log, "other", max_bucket=100)
    child = _pool_child(redis_url, "--max", "100", "--rescue-to-pool", "--signals")
    try:
        child.send(cmd="fill", n=10, prefix="s", run_after=4)
        filled = child._read_event("filled", WAIT * 3)
        assert filled["placed"] == {"local": 10}, filled
        child.signal(signal.SIGTERM)
        assert child.proc.wait(WAIT * 3) == 128 + signal.SIGTERM
        assert pool.stats(BUCKET).pending == 10 or log.ends  # stored before the exit
        ends = log.wait_for(10, timeout=WAIT * 3)
        assert {node for node, *_ in ends} == {"other"}
        assert sorted(log.per_id()) == sorted(f"s{i}" for i in range(10))
        late = [log.starts[i] - log.data[i]["due"] for i in log.starts]
        assert min(late) >= -0.002 and max(late) <= 0.05, late
    finally:
        child.close()
        other.close()
        pool.close()


def test_a_clean_node_puts_back_what_it_did_not_start(redis_url: str) -> None:
    pool = make_pool(redis_url)
    for i in range(5):
        pool.add(BUCKET, f"c{i}", None, task_type=TaskType.TIME_BOMB, run_after=30, life_span=60)
    child = _pool_child(redis_url, "--max", "100", "--lookahead", "60")
    try:
        deadline = time.monotonic() + WAIT * 3
        while child.alive_tasks() < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        child.send(cmd="stop")
        assert child.proc.wait(WAIT * 3) == 0
        assert _events(child, "ended") == []
        stats = pool.stats(BUCKET)
        assert stats.claimed == 0 and stats.ready + stats.delayed == 5
    finally:
        child.close()
        pool.close()
