"""AsyncTaskBucketGroup without peers: local placements, the sync group's errors, and
sync TaskBuckets accepted alongside async ones."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from helpers.cluster import HOLD, SECRET
from helpers.recording import NullExecutor

from gobucket import (
    AsyncTaskBucket,
    AsyncTaskBucketGroup,
    BucketConfig,
    DuplicateTaskError,
    GoBucketError,
    InvalidArgumentError,
    NoPeerAvailableError,
    Placement,
    TaskBucket,
)


def make_group(buckets: dict[str, Any]) -> AsyncTaskBucketGroup:
    return AsyncTaskBucketGroup(
        buckets, port=0, secret=SECRET, host="127.0.0.1", discovery=False, ping_interval=0.2
    )


def test_local_fills_and_errors_without_peers() -> None:
    async def scenario() -> None:
        config = BucketConfig(name="a", max_bucket=1, life_span=120.0, run_after=60.0)
        plain = TaskBucket(BucketConfig(name="b", max_bucket=4), NullExecutor())
        async with AsyncTaskBucket(config, NullExecutor()) as bucket:
            group = make_group({"a": bucket, "b": plain})
            # as the sync group: a local fill works before start(), an overflow does not
            placed = await group.fill("a", "one", {"x": 1}, **HOLD)
            assert placed == Placement(True, group.node_id, "a", "one", None)
            with pytest.raises(GoBucketError, match="start"):
                await group.fill("a", "early", None, **HOLD)
            async with group:
                with pytest.raises(DuplicateTaskError):
                    await group.fill("a", "one", None, **HOLD)
                with pytest.raises(NoPeerAvailableError):
                    await group.fill("a", "two", None, **HOLD, timeout=5.0)
                with pytest.raises(InvalidArgumentError):
                    await group.fill("a", "bad", object(), **HOLD)  # msgpack cannot send it
                assert (await group.fill("b", "p", None, **HOLD)).local
                assert group.get_bucket("a") is bucket and group.get_bucket("b") is plain
                with pytest.raises(GoBucketError):
                    group.get_bucket("nope")
                assert group.loads() == {"a": [1, 1], "b": [1, 4]}
                assert group.peers() == []
            plain.close(grace=0)

    asyncio.run(scenario())


def test_the_group_refuses_what_the_sync_group_refuses() -> None:
    with pytest.raises(InvalidArgumentError):
        AsyncTaskBucketGroup({}, port=0)
    with pytest.raises(InvalidArgumentError):
        AsyncTaskBucketGroup([], port=0)  # type: ignore[arg-type]
