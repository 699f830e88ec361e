"""Two static groups with no peer in common share one pool: spill, pull, exactly once."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from helpers.pool_nodes import BUCKET, EndLog, LoggingExecutor, make_pool
from helpers.waiting import wait_until

from gobucket import (
    AsyncTaskBucketGroup,
    BucketConfig,
    NoPeerAvailableError,
    Placement,
    RedisTaskPool,
    TaskBucket,
    TaskBucketGroup,
    TaskType,
    fetch_status,
)

SECRET = "pool-status-secret"
LATER = {"run_after": 60, "life_span": 90}


def _group(pool: RedisTaskPool, log: EndLog, node: str, max_bucket: int) -> TaskBucketGroup:
    config = BucketConfig(life_span=60, max_bucket=max_bucket, name=BUCKET)
    bucket = TaskBucket(config, LoggingExecutor(log, node, work=0.02))
    return TaskBucketGroup(
        {BUCKET: bucket}, port=0, host="127.0.0.1", discovery=False, node_id=node, pool=pool
    )


def test_two_groups_without_common_peers_share_the_pool_exactly_once(redis_url: str) -> None:
    log = EndLog()
    pool = make_pool(redis_url)
    groups = [_group(pool, log, "west", 8), _group(pool, log, "east", 8)]
    try:
        for group in groups:
            group.start()
        placements: list[Placement] = []
        futures = []
        for i in range(150):
            futures.append(groups[0].fill_async(BUCKET, f"w{i}", {"i": i}))
        for i in range(150):
            placements.append(groups[1].fill(BUCKET, f"e{i}", {"i": i}, timeout=30))
        placements += [f.get(timeout=30) for f in futures]
        where = Counter("pool" if p.pool else "local" if p.local else "peer" for p in placements)
        assert where["peer"] == 0 and where["pool"] > 0 and where["local"] > 0, where
        assert all(p.node == "pool:gobucket" for p in placements if p.pool)
        ends = log.wait_for(300, timeout=90)
        counts = log.per_id()
        assert set(counts.values()) == {1} and len(counts) == 300
        assert all(outcome == "finished" for _, _, outcome, _ in ends)
        nodes = Counter(node for node, *_ in ends)
        assert set(nodes) == {"west", "east"}, nodes
    finally:
        for group in groups:
            group.stop(handoff=False)
            group.get_bucket(BUCKET).close()
        pool.close()


def test_a_group_fill_the_pool_refuses_says_why(redis_url: str) -> None:
    log = EndLog()
    pool = make_pool(redis_url, max_pending=1)
    group = _group(pool, log, "solo", 1)
    try:
        group.start()
        group.fill(BUCKET, "held", task_type=TaskType.TIME_BOMB, run_after=60, life_span=90)
        pool.add(BUCKET, "pending", None, task_type=TaskType.TIME_BOMB, run_after=60, life_span=90)
        with pytest.raises(NoPeerAvailableError, match=r"task pool refused it.*maximum of 1"):
            group.fill(BUCKET, "refused", timeout=30)
    finally:
        group.stop()
        group.get_bucket(BUCKET).close(grace=0)
        pool.close()


def test_an_async_group_spills_to_the_pool(redis_url: str) -> None:
    log = EndLog()
    pool = make_pool(redis_url)
    config = BucketConfig(life_span=60, max_bucket=1, name=BUCKET)
    bucket = TaskBucket(config, LoggingExecutor(log, "async"))

    async def main() -> list[Placement]:
        group = AsyncTaskBucketGroup(
            {BUCKET: bucket}, port=0, host="127.0.0.1", discovery=False, pool=pool
        )
        async with group:
            held = await group.fill(BUCKET, "held", task_type=TaskType.TIME_BOMB, run_after=30)
            spilled = await group.fill(BUCKET, "spilled", {"k": 1}, timeout=30)
            return [held, spilled]

    try:
        held, spilled = asyncio.run(main())
        assert held.local and not held.pool
        assert spilled.pool and not spilled.local
        assert pool.stats(BUCKET).pending >= 1 or "spilled" in log.per_id()
    finally:
        bucket.close(grace=0)
        pool.close()


def test_a_nodes_status_shows_its_pool_depth(redis_url: str) -> None:
    # STATUS (gobucket status/top) carries each bucket's pool depth: ready/delayed/claimed.
    log = EndLog()
    pool = make_pool(redis_url)
    bucket = TaskBucket(BucketConfig(max_bucket=1, name=BUCKET), LoggingExecutor(log, "depth"))
    group = TaskBucketGroup(
        {BUCKET: bucket}, port=0, host="127.0.0.1", discovery=False, secret=SECRET, pool=pool
    )
    try:
        group.start()
        for i in range(4):  # one stays local, three wait in the pool (due in 60 s)
            group.fill(BUCKET, f"later{i}", task_type=TaskType.TIME_BOMB, **LATER)
        host, port = group.address

        def delayed_in_status() -> int:
            stats = fetch_status(f"{host}:{port}", secret=SECRET).bucket(BUCKET)
            assert stats is not None
            return stats.pool_delayed

        assert wait_until(lambda: delayed_in_status() == 3, what="3 delayed in STATUS")
        assert group.get_bucket(BUCKET).stats().pool_delayed == 3
    finally:
        group.stop(handoff=False)
        group.get_bucket(BUCKET).close(grace=0)
        pool.close()
