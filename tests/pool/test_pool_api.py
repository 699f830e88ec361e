"""RedisTaskPool and TaskBucket(pool=): spill, pull, ack, put back, refusals, rescue sink."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.pool_nodes import BUCKET, EndLog, make_pool, pool_bucket
from helpers.waiting import WAIT, wait_until

from gobucket import (
    BucketFullError,
    DuplicateTaskError,
    InvalidArgumentError,
    JsonlRescueSink,
    RescuedTask,
    TaskType,
    replay,
)
from gobucket.pool._record import PoolTask

REPO = Path(__file__).resolve().parents[2]


def test_add_refuses_a_duplicate_id_and_over_max_pending(redis_url: str) -> None:
    pool = make_pool(redis_url, max_pending=2)
    try:
        pool.add(BUCKET, "a", {"x": 1}, life_span=10)
        with pytest.raises(DuplicateTaskError, match="task pool"):
            pool.add(BUCKET, "a", {"x": 2}, life_span=10)
        pool.add(BUCKET, "b", None, task_type=TaskType.TIME_BOMB, run_after=60, life_span=90)
        with pytest.raises(BucketFullError, match="maximum of 2"):
            pool.add(BUCKET, "c", None, life_span=10)
        stats = pool.stats(BUCKET)
        assert (stats.ready, stats.delayed, stats.claimed) == (1, 1, 0)
    finally:
        pool.close()


def test_claim_ack_release_reap_keep_one_copy(redis_url: str) -> None:
    pool = make_pool(redis_url, claim_timeout=0.2)
    try:
        pool.add(BUCKET, "a", [1, 2], life_span=10)
        token, claimed = pool._claim_due(BUCKET, 10)
        assert [t.task_id for t, _ in claimed] == ["a"] and claimed[0][0].data == [1, 2]
        assert pool.stats(BUCKET).claimed == 1
        assert pool._claim_due(BUCKET, 10)[1] == []  # never handed out twice
        assert pool._ack_held(BUCKET, [("a", "someone-else")]) == 0
        wait_until(lambda: pool._reap_expired(BUCKET) == 1, what="the claim to expire")
        token2, again = pool._claim_due(BUCKET, 10)
        assert [t.task_id for t, _ in again] == ["a"]
        assert pool._ack_held(BUCKET, [("a", token)]) == 0  # the old claim is void
        assert pool._release_held(BUCKET, [("a", token2)]) == 1
        token3, _ = pool._claim_due(BUCKET, 10)
        assert pool._ack_held(BUCKET, [("a", token3)]) == 1
        assert pool.stats(BUCKET).pending == 0
    finally:
        pool.close()


def test_a_full_bucket_spills_and_another_pulls_every_task_once(redis_url: str) -> None:
    log = EndLog()
    pool = make_pool(redis_url)
    full = pool_bucket(pool, log, "a", max_bucket=2, work=0.5)
    try:
        for i in range(2):
            full.fill(TaskType.IMMEDIATE, f"t{i}")
        for i in range(2, 30):
            full.fill(TaskType.IMMEDIATE, f"t{i}")  # spilled: returns like a local fill
        assert full.stats().refused_full >= 28
        other = pool_bucket(pool, log, "b", max_bucket=50)
        try:
            ends = log.wait_for(30)
            assert log.per_id() == {f"t{i}": 1 for i in range(30)}
            assert {node for node, *_ in ends} == {"a", "b"}
            wait_until(lambda: pool.stats(BUCKET).pending == 0, what="every ack")
            wait_until(lambda: full.stats().pool_ready == 0 and other.stats().alive == 0)
        finally:
            other.close()
    finally:
        full.close()
        pool.close()


def test_pooled_time_bombs_run_on_time_never_early(redis_url: str) -> None:
    log = EndLog()
    pool = make_pool(redis_url)
    spiller = pool_bucket(pool, log, "a", max_bucket=1)
    runner = pool_bucket(pool, log, "b", max_bucket=100)
    try:
        spiller.fill(TaskType.TIME_BOMB, "hold", run_after=60, life_span=90)
        dues = {}
        for i in range(20):
            dues[f"b{i}"] = time.time() + 1.5 + i * 0.05
            spiller.fill(TaskType.TIME_BOMB, f"b{i}", run_after=1.5 + i * 0.05, life_span=30)
        log.wait_for(20)
        late = [log.starts[i] - due for i, due in dues.items()]
        assert min(late) >= -0.002, late  # never before (timer granularity: 1 ms)
        assert max(late) <= 0.05, late
        assert {node for node, *_ in log.ends} == {"b"}
    finally:
        spiller.close(grace=0)
        runner.close()
        pool.close()


def test_a_task_past_its_deadline_in_the_pool_ends_exhausted(redis_url: str) -> None:
    log = EndLog()
    pool = make_pool(redis_url)
    try:
        now = time.time()
        pool.add_many(BUCKET, [PoolTask("old", TaskType.IMMEDIATE, {}, now - 5, now - 1)])
        bucket = pool_bucket(pool, log, "a")
        try:
            ends = log.wait_for(1)
            assert ends[0][1:3] == ("old", "exhausted")
        finally:
            bucket.close()
    finally:
        pool.close()


def test_unstorable_data_is_refused_at_fill(redis_url: str) -> None:
    pool = make_pool(redis_url)
    bucket = pool_bucket(pool, EndLog(), "a", max_bucket=1)
    try:
        bucket.fill(TaskType.TIME_BOMB, "x", run_after=60, life_span=90)
        with pytest.raises(InvalidArgumentError, match="msgpack"):
            bucket.fill(TaskType.IMMEDIATE, "y", {1, 2})
        assert pool.stats(BUCKET).pending == 0
    finally:
        bucket.close(grace=0)
        pool.close()


def test_close_puts_back_claimed_tasks_that_have_not_started(redis_url: str) -> None:
    log = EndLog()
    pool = make_pool(redis_url, lookahead=30.0)  # claims bombs long before they are due
    first = pool_bucket(pool, log, "a", max_bucket=100)
    try:
        for i in range(5):
            pool.add(BUCKET, f"p{i}", None, task_type=TaskType.TIME_BOMB, run_after=3, life_span=30)
        wait_until(lambda: len(first) == 5, what="the bombs to be claimed")
        first.close()
        assert log.ends == []  # no hook: they went back, not rescued
        stats = pool.stats(BUCKET)
        assert stats.claimed == 0 and stats.delayed + stats.ready == 5
        second = pool_bucket(pool, log, "b", max_bucket=100)
        try:
            log.wait_for(5)
            assert {node for node, *_ in log.ends} == {"b"}
        finally:
            second.close()
    finally:
        pool.close()


def test_the_pool_as_rescue_sink_and_replay_into_it(redis_url: str, tmp_path: Path) -> None:
    log = EndLog()
    pool = make_pool(redis_url)
    # Its time bomb is rescued into the pool when it closes.
    keeper = pool_bucket(pool, log, "a", max_bucket=100, rescue_sink=pool)
    try:
        due = time.time() + 3
        keeper.fill(TaskType.TIME_BOMB, "r1", {"k": 1}, run_after=3, life_span=30)
        keeper.close(grace=0)  # rescued into the pool
        assert pool.stats(BUCKET).pending == 1
        jsonl = JsonlRescueSink(tmp_path / "rescued.jsonl")
        jsonl.write([RescuedTask(BUCKET, "r2", TaskType.IMMEDIATE, {"k": 2}, 30.0)])
        assert replay(jsonl, into=pool) == 1
        assert jsonl.read() == []
        runner = pool_bucket(pool, log, "b", max_bucket=100)
        try:
            log.wait_for(2)
            assert sorted(log.per_id()) == ["r1", "r2"]
            assert -0.002 <= log.starts["r1"] - due <= 0.05
        finally:
            runner.close()
    finally:
        pool.close()


def test_import_gobucket_works_without_redis(tmp_path: Path) -> None:
    (tmp_path / "redis.py").write_text("raise ModuleNotFoundError(\"No module named 'redis'\")\n")
    code = (
        "import gobucket\n"
        "try:\n"
        "    gobucket.RedisTaskPool('redis://127.0.0.1:1/0')\n"
        "except ModuleNotFoundError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=str(REPO),
        env={"PYTHONPATH": f"{tmp_path}:{REPO}", "PATH": "/usr/bin:/bin"},
        timeout=WAIT * 6,
    )
    assert out.returncode == 0, out.stderr
    assert "pip install 'gobucket[redis]'" in out.stdout
