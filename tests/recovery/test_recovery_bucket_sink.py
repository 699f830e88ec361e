"""TaskBucket(rescue_sink=...): every rescued task is written after its on_panic returned,
and rescue() returns only once they are written."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from helpers.cluster import close_all as shared_close_all
from helpers.recording import Recorder, RecordingExecutor
from helpers.waiting import WAIT

from gobucket import BucketConfig, Executor, JsonlRescueSink, RedisRescueSink, TaskBucket, TaskType


def close_all(buckets: list[TaskBucket]) -> None:
    """Close every bucket without waiting for its tasks."""
    shared_close_all(buckets, WAIT, grace=0)


@pytest.fixture(params=["jsonl", "redis"])
def sink(request, tmp_path) -> Iterator[Any]:
    if request.param == "jsonl":
        yield JsonlRescueSink(tmp_path / "rescued.jsonl")
        return
    url = request.getfixturevalue("redis_url")
    redis_sink = RedisRescueSink(url, "gobucket:test")
    try:
        yield redis_sink
    finally:
        redis_sink.close()


@pytest.fixture
def make_bucket() -> Iterator[Callable[..., TaskBucket]]:
    buckets: list[TaskBucket] = []

    def make(executor: Executor, sink: Any = None, **config: Any) -> TaskBucket:
        config.setdefault("name", "mail")
        bucket = TaskBucket(BucketConfig(**config), executor, rescue_sink=sink)
        buckets.append(bucket)
        return bucket

    yield make
    close_all(buckets)


def by_id(sink: Any) -> dict[str, Any]:
    stored = sink.read()
    out = {t.task_id: t for t in stored}
    assert len(out) == len(stored), "a task was written twice"
    return out


def test_rescue_writes_every_rescued_task_with_its_fields(make_bucket, recorder, sink):
    entered = threading.Event()

    def execute(ctx, id, data):
        entered.set()
        ctx.wait_cancelled(WAIT)

    bucket = make_bucket(
        RecordingExecutor(recorder, execute=execute), sink, life_span=30.0, run_after=20.0
    )
    filled_at = time.monotonic()
    bucket.fill(TaskType.IMMEDIATE, "running", {"kind": "now", "blob": b"\x01\x02"})
    assert entered.wait(WAIT)
    for i in range(5):
        bucket.fill(TaskType.TIME_BOMB, f"bomb{i}", {"i": i})
    bucket.fill(TaskType.TIME_BOMB, "short", [1, "two"], run_after=5.0, life_span=8.0)
    assert bucket.rescue() == 7
    elapsed = time.monotonic() - filled_at
    stored = by_id(sink)  # right after rescue() returned
    assert set(stored) == {"running", "short"} | {f"bomb{i}" for i in range(5)}
    for task in stored.values():
        assert task.bucket == "mail"
    running = stored["running"]
    assert running.task_type is TaskType.IMMEDIATE
    assert running.data == {"kind": "now", "blob": b"\x01\x02"}
    assert running.remaining_wait == 0.0
    assert 30.0 - elapsed - 0.01 <= running.remaining_life <= 30.0
    for i in range(5):
        bomb = stored[f"bomb{i}"]
        assert bomb.task_type is TaskType.TIME_BOMB
        assert bomb.data == {"i": i}
        assert 30.0 - elapsed - 0.01 <= bomb.remaining_life <= 30.0
        assert 20.0 - elapsed - 0.01 <= bomb.remaining_wait <= 20.0
    short = stored["short"]
    assert short.data == [1, "two"]
    assert 8.0 - elapsed - 0.01 <= short.remaining_life <= 8.0
    assert 5.0 - elapsed - 0.01 <= short.remaining_wait <= 5.0
    for task_id in stored:
        assert recorder.ends(task_id) == ["on_panic"]


def test_nothing_is_written_until_every_on_panic_returned(make_bucket, recorder, sink):
    entered = threading.Event()
    release = threading.Event()
    seen_in_panic: list[int] = []

    def slow_panic(ctx, id, data):
        seen_in_panic.append(len(sink.read()))
        if id == "slow":
            entered.set()
            release.wait(WAIT)

    bucket = make_bucket(
        RecordingExecutor(recorder, after={"on_panic": slow_panic}),
        sink,
        life_span=30.0,
        run_after=20.0,
    )
    for task_id in ("a", "slow", "b"):
        bucket.fill(TaskType.TIME_BOMB, task_id, task_id)
    result: dict[str, Any] = {}

    def rescue() -> None:
        result["count"] = bucket.rescue()
        result["stored"] = sorted(by_id(sink))

    rescuer = threading.Thread(target=rescue)
    rescuer.start()
    try:
        assert entered.wait(WAIT)
        assert recorder.wait_for(lambda: recorder.count("on_panic") == 3)
        assert sink.read() == []  # "slow" has not returned: nothing written yet
        assert rescuer.is_alive()
    finally:
        release.set()
        rescuer.join(WAIT)
    assert not rescuer.is_alive()
    assert result == {"count": 3, "stored": ["a", "b", "slow"]}
    assert seen_in_panic == [0, 0, 0]


def test_tasks_that_already_ended_are_not_written(make_bucket, recorder, sink):
    bucket = make_bucket(RecordingExecutor(recorder), sink, life_span=30.0, run_after=20.0)
    bucket.fill(TaskType.IMMEDIATE, "done")
    assert recorder.wait_hook("on_finish", "done")
    bucket.fill(TaskType.TIME_BOMB, "drained")
    bucket.drain("drained")
    bucket.fill(TaskType.TIME_BOMB, "live")
    assert bucket.rescue() == 1
    assert sorted(by_id(sink)) == ["live"]


def test_a_second_rescue_appends_only_the_tasks_filled_since(make_bucket, recorder, sink):
    bucket = make_bucket(RecordingExecutor(recorder), sink, life_span=30.0, run_after=20.0)
    bucket.fill(TaskType.TIME_BOMB, "first")
    assert bucket.rescue() == 1
    assert bucket.rescue() == 0
    bucket.fill(TaskType.TIME_BOMB, "second", {"n": 2})
    assert bucket.rescue() == 1
    stored = by_id(sink)
    assert sorted(stored) == ["first", "second"]
    assert stored["second"].data == {"n": 2}


def test_close_rescues_the_leftovers_into_the_sink(recorder, sink):
    bucket = TaskBucket(
        BucketConfig(name="mail", life_span=30.0, run_after=20.0),
        RecordingExecutor(recorder),
        rescue_sink=sink,
    )
    try:
        for i in range(4):
            bucket.fill(TaskType.TIME_BOMB, f"t{i}", i)
    finally:
        close_all([bucket])
    assert sorted(by_id(sink)) == [f"t{i}" for i in range(4)]
    assert recorder.count("on_panic") == 4


def test_a_task_waiting_to_retry_is_written_as_due_now(make_bucket, recorder, sink):
    def fail(ctx, id, data):
        raise RuntimeError("boom")

    bucket = make_bucket(
        RecordingExecutor(recorder, execute=fail),
        sink,
        life_span=30.0,
        max_retries=3,
        retry_backoff=10.0,
    )
    bucket.fill(TaskType.TIME_BOMB, "retrying", "r", run_after=0.01)
    assert recorder.wait_hook("on_execute", "retrying")
    # It is now waiting 10 s for its retry (no on_execute_error: retries are left).
    assert bucket.rescue() == 1
    task = by_id(sink)["retrying"]
    assert task.task_type is TaskType.TIME_BOMB
    assert task.remaining_wait == 0.0  # it already started: no run_after left to wait
    assert 0 < task.remaining_life <= 30.0
    assert recorder.ends("retrying") == ["on_panic"]


def test_a_bucket_without_a_sink_still_rescues(make_bucket):
    recorder = Recorder()
    bucket = make_bucket(RecordingExecutor(recorder), life_span=30.0, run_after=20.0)
    assert bucket.rescue_sink is None
    bucket.fill(TaskType.TIME_BOMB, "x")
    assert bucket.rescue() == 1
    assert recorder.ends("x") == ["on_panic"]
