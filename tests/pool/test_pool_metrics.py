"""The pool's depth in the Prometheus metrics: gobucket_pool_tasks{bucket, state}."""

from __future__ import annotations

import pytest
from helpers.pool_nodes import BUCKET, EndLog, make_pool, pool_bucket
from helpers.waiting import wait_until

from gobucket import TaskType

prometheus_client = pytest.importorskip("prometheus_client")


def test_the_pool_depth_is_a_gauge(redis_url: str) -> None:
    import gobucket.metrics  # why: the metrics extra is optional (skipped without it)

    pool = make_pool(redis_url)
    bucket = pool_bucket(pool, EndLog(), "a", max_bucket=1)
    registry = prometheus_client.CollectorRegistry()
    try:
        bucket.fill(TaskType.TIME_BOMB, "hold", run_after=60, life_span=90)
        for i in range(3):
            bucket.fill(TaskType.TIME_BOMB, f"d{i}", run_after=60, life_span=90)
        wait_until(lambda: bucket.stats().pool_delayed == 3, what="the cached depth")
        gobucket.metrics.register(bucket, registry=registry)
        assert (
            registry.get_sample_value("gobucket_pool_tasks", {"bucket": BUCKET, "state": "delayed"})
            == 3
        )
        assert (
            registry.get_sample_value("gobucket_pool_tasks", {"bucket": BUCKET, "state": "ready"})
            == 0
        )
        gobucket.metrics.unregister(bucket, registry=registry)
    finally:
        bucket.close(grace=0)
        pool.close()
