"""Redis fails: SIGKILL and restart with AOF, SIGSTOP. No fill hangs, nothing accepted is lost."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from helpers.pool_nodes import BUCKET, EndLog, make_pool, pool_bucket
from helpers.redis_server import start_redis, stop_redis
from helpers.waiting import WAIT, wait_until

from gobucket import BucketFullError, PoolUnavailableError, TaskType

pytestmark = pytest.mark.slow

TIMEOUT = 0.5  # the pool's per-command wait


def _fill_fails_fast(bucket, task_id: str) -> BucketFullError:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    with pytest.raises(BucketFullError) as caught:
        bucket.fill(TaskType.IMMEDIATE, task_id, {"x": 1})
    took = time.monotonic() - started
    assert took < TIMEOUT * 4 + 1.0, took  # never hangs: bounded by the socket timeouts
    assert isinstance(caught.value.__cause__, PoolUnavailableError)
    assert "unreachable" in str(caught.value) or "after its" in str(caught.value)
    return caught.value


def test_redis_killed_and_restarted_with_aof_loses_nothing(tmp_path: Path) -> None:
    proc, url = start_redis(tmp_path, appendonly=True)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    pool = make_pool(url, timeout=TIMEOUT)
    log = EndLog()
    full = pool_bucket(pool, log, "full", max_bucket=1)
    runner = None
    try:
        full.fill(TaskType.TIME_BOMB, "hold", run_after=120, life_span=150)
        for i in range(50):  # accepted by the pool (the bucket is full)
            full.fill(TaskType.TIME_BOMB, f"a{i}", {"i": i}, run_after=4.0, life_span=60)
        assert pool.stats(BUCKET).pending == 50
        # A node that pulls; it backs off while Redis is gone and resumes when it is back.
        runner = pool_bucket(pool, log, "runner", max_bucket=100)
        proc.send_signal(signal.SIGKILL)
        proc.wait(WAIT)
        error = _fill_fails_fast(full, "while-down")
        assert "gobucket" in str(error)
        proc, url2 = start_redis(tmp_path, appendonly=True, port=port)
        assert url2 == url
        wait_until(lambda: _pending(pool) >= 0, timeout=WAIT * 2, what="redis to answer")
        log.wait_for(50, timeout=WAIT * 4)
        assert sorted(log.per_id()) == sorted(f"a{i}" for i in range(50))
        assert set(log.per_id().values()) == {1}
    finally:
        full.close(grace=0)
        if runner is not None:
            runner.close()
        pool.close()
        stop_redis(proc)


def _pending(pool) -> int:  # type: ignore[no-untyped-def]
    try:
        return int(pool.stats(BUCKET).pending)
    except PoolUnavailableError:
        return -1


def test_a_frozen_redis_fails_fills_fast_and_stores_nothing_late(tmp_path: Path) -> None:
    proc, url = start_redis(tmp_path, appendonly=True)
    pool = make_pool(url, timeout=TIMEOUT)
    log = EndLog()
    full = pool_bucket(pool, log, "full", max_bucket=1)
    try:
        full.fill(TaskType.TIME_BOMB, "hold", run_after=120, life_span=150)
        full.fill(TaskType.TIME_BOMB, "kept", run_after=120, life_span=150)
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            _fill_fails_fast(full, "frozen")
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        # The server ran the fill when it woke, past its fence: it stored nothing.
        wait_until(lambda: _pending(pool) == 1, timeout=WAIT * 2, what="redis to answer")
        assert pool._client.hexists(f"gobucket:{{{BUCKET}}}:tasks", "frozen") == 0
        assert pool._client.hexists(f"gobucket:{{{BUCKET}}}:tasks", "kept") == 1
        full.fill(TaskType.TIME_BOMB, "after", run_after=120, life_span=150)  # works again
        assert _pending(pool) == 2
    finally:
        full.close(grace=0)
        pool.close()
        stop_redis(proc)
