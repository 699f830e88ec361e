"""Fixtures shared by the tests (helpers live in ``tests/helpers/``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from helpers.child_node import ChildNode
from helpers.cluster import Cluster, close_all
from helpers.recording import Recorder
from helpers.redis_server import start_redis, stop_redis

from gobucket import BucketConfig, Executor, TaskBucket


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def make_bucket() -> Iterator[Callable[..., TaskBucket]]:
    """Build buckets (``make_bucket(executor, **config)``); all are closed after the test."""
    buckets: list[TaskBucket] = []

    def make(executor: Executor, *, runtime: Any = None, **config: Any) -> TaskBucket:
        config.setdefault("life_span", 2.0)
        config.setdefault("run_after", 0.1)
        bucket = TaskBucket(BucketConfig(**config), executor, runtime=runtime)
        buckets.append(bucket)
        return bucket

    yield make
    close_all(buckets, grace=2.0)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """Groups and buckets built for one test, all stopped and closed after it."""
    built = Cluster()
    try:
        yield built
    finally:
        built.close()


@pytest.fixture
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a fresh, empty redis-server used by this test alone."""
    proc, url = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield url
    finally:
        stop_redis(proc)


@pytest.fixture
def spawn_node() -> Iterator[Callable[..., ChildNode]]:
    """Start ``python -m gobucket.testing.node`` children; all are closed after the test."""
    children: list[ChildNode] = []

    def start(*args: str) -> ChildNode:
        child = ChildNode(*args)
        children.append(child)
        return child

    try:
        yield start
    finally:
        for child in children:
            child.close()
