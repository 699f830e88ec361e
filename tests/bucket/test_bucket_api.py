"""The public API: exports, configuration, argument checks, refusals, len/in/stats/join/close."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from helpers.recording import Recorder, RecordingExecutor
from helpers.waiting import WAIT, run_threads

import gobucket
from gobucket import (
    ActorRuntime,
    BucketClosedError,
    BucketConfig,
    BucketFullError,
    BucketStats,
    DuplicateTaskError,
    Executor,
    FunctionExecutor,
    GoBucketError,
    InvalidArgumentError,
    Outcome,
    TaskBucket,
    TaskContext,
    TaskNotFoundError,
    TaskType,
)


def blocking_executor(recorder: Recorder, release: threading.Event) -> RecordingExecutor:
    return RecordingExecutor(recorder, execute=lambda ctx, id, data: release.wait(WAIT))


# --- exports and configuration -------------------------------------------------------


def test_public_names_are_exported_from_the_package():
    for name in (
        "TaskBucket",
        "BucketConfig",
        "TaskType",
        "Executor",
        "TaskContext",
        "GoBucketError",
        "DuplicateTaskError",
        "BucketFullError",
        "TaskNotFoundError",
        "FunctionExecutor",
        "BucketClosedError",
        "InvalidArgumentError",
        "Outcome",
        "BucketStats",
        "ActorRuntime",
    ):
        assert hasattr(gobucket, name), name
    assert {TaskType.IMMEDIATE, TaskType.TIME_BOMB} == set(TaskType)
    assert {o.name for o in Outcome} >= {"FINISHED", "EXECUTE_ERROR", "EXHAUSTED", "PANICKED"}
    assert isinstance(ActorRuntime, type)
    assert isinstance(TaskContext, type)


@pytest.mark.parametrize(
    "error",
    [
        DuplicateTaskError,
        BucketFullError,
        TaskNotFoundError,
        BucketClosedError,
        InvalidArgumentError,
    ],
)
def test_every_library_error_is_a_gobucket_error(error):
    assert issubclass(error, GoBucketError)


def test_config_keeps_given_values_in_seconds():
    config = BucketConfig(life_span=5.0, max_bucket=1024, run_after=1.0, verbose=True)
    assert config.life_span == 5.0
    assert config.max_bucket == 1024
    assert config.run_after == 1.0
    assert config.verbose is True


def test_config_accepts_timedelta_durations_as_seconds():
    config = BucketConfig(life_span=timedelta(seconds=2), run_after=timedelta(milliseconds=250))
    assert config.life_span == pytest.approx(2.0)
    assert config.run_after == pytest.approx(0.25)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"life_span": 0},
        {"life_span": -1.0},
        {"life_span": timedelta(0)},
        {"life_span": float("nan")},
        {"run_after": -0.1},
        {"max_bucket": 0},
        {"max_bucket": -5},
        {"max_bucket": 1.5},
        {"life_span": "5"},
    ],
)
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(InvalidArgumentError):
        BucketConfig(**kwargs)


def test_bucket_refuses_a_non_config_and_a_non_executor():
    with pytest.raises(InvalidArgumentError):
        TaskBucket({"life_span": 1.0}, Executor())  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        TaskBucket(BucketConfig(), object())  # type: ignore[arg-type]


def test_function_executor_refuses_a_non_callable_hook():
    with pytest.raises(InvalidArgumentError):
        FunctionExecutor(on_execute=42)  # type: ignore[arg-type]


# --- fill: argument checks change nothing ----------------------------------------------


@pytest.mark.parametrize(
    ("task_type", "task_id", "kwargs"),
    [
        (TaskType.IMMEDIATE, "", {}),
        (TaskType.IMMEDIATE, None, {}),
        (TaskType.IMMEDIATE, 7, {}),
        (TaskType.IMMEDIATE, b"bytes", {}),
        (TaskType.IMMEDIATE, "x", {"life_span": 0}),
        (TaskType.IMMEDIATE, "x", {"life_span": -1}),
        (TaskType.IMMEDIATE, "x", {"life_span": timedelta(seconds=-1)}),
        (TaskType.TIME_BOMB, "x", {"run_after": 1.0, "life_span": 1.0}),
        (TaskType.TIME_BOMB, "x", {"run_after": 1.0, "life_span": 0.5}),
        (TaskType.TIME_BOMB, "x", {"run_after": -0.1}),
        ("not-a-type", "x", {}),
    ],
)
def test_bad_fill_arguments_raise_at_once_and_change_nothing(
    make_bucket, recorder, task_type, task_id, kwargs
):
    bucket = make_bucket(RecordingExecutor(recorder))
    before = bucket.stats()
    with pytest.raises(InvalidArgumentError):
        bucket.fill(task_type, task_id, "data", **kwargs)
    after = bucket.stats()
    assert len(bucket) == 0
    assert after.filled == before.filled == 0
    assert recorder.snapshot() == []


def test_time_bomb_with_config_life_span_not_longer_than_run_after_is_refused(make_bucket):
    bucket = make_bucket(Executor(), life_span=1.0, run_after=1.0)
    with pytest.raises(InvalidArgumentError):
        bucket.fill(TaskType.TIME_BOMB, "x")
    assert len(bucket) == 0


def test_fill_accepts_timedelta_overrides(make_bucket, recorder):
    bucket = make_bucket(RecordingExecutor(recorder))
    bucket.fill(
        TaskType.TIME_BOMB,
        "x",
        run_after=timedelta(milliseconds=20),
        life_span=timedelta(seconds=2),
    )
    assert bucket.join(WAIT)
    assert recorder.ends("x") == ["on_finish"]
    ctx = recorder.first("on_execute", "x")[4]
    assert ctx.deadline - ctx.filled_at == pytest.approx(2.0)


# --- refusals: duplicate, full, closed ---------------------------------------------------


def test_filling_an_alive_id_raises_duplicate_task_error(make_bucket, recorder):
    release = threading.Event()
    bucket = make_bucket(blocking_executor(recorder, release))
    bucket.fill(TaskType.IMMEDIATE, "job", "first")
    with pytest.raises(DuplicateTaskError):
        bucket.fill(TaskType.IMMEDIATE, "job", "second")
    with pytest.raises(DuplicateTaskError):
        bucket.fill(TaskType.TIME_BOMB, "job", "third")
    release.set()
    assert bucket.join(WAIT)
    assert recorder.ends_by_data("first") == ["on_finish"]
    assert recorder.ends_by_data("second") == []
    assert recorder.ends_by_data("third") == []
    assert bucket.stats().refused_duplicate == 2


def test_an_id_can_be_filled_again_after_its_task_ended(make_bucket, recorder):
    bucket = make_bucket(RecordingExecutor(recorder))
    bucket.fill(TaskType.IMMEDIATE, "job", 1)
    assert bucket.join(WAIT)
    bucket.fill(TaskType.IMMEDIATE, "job", 2)
    assert bucket.join(WAIT)
    assert recorder.ends_by_data(1) == ["on_finish"]
    assert recorder.ends_by_data(2) == ["on_finish"]


def test_concurrent_fills_of_one_id_accept_exactly_one(make_bucket, recorder):
    release = threading.Event()
    bucket = make_bucket(blocking_executor(recorder, release))
    barrier = threading.Barrier(8)
    results: list[str] = []
    lock = threading.Lock()

    def fill(n: int) -> None:
        barrier.wait(WAIT)
        try:
            bucket.fill(TaskType.IMMEDIATE, "same", n)
            outcome = "ok"
        except DuplicateTaskError:
            outcome = "dup"
        with lock:
            results.append(outcome)

    run_threads(fill, 8)
    assert sorted(results) == ["dup"] * 7 + ["ok"]
    release.set()
    assert bucket.join(WAIT)
    assert recorder.ends("same") == ["on_finish"]


def test_filling_a_full_bucket_raises_bucket_full_error(make_bucket, recorder):
    release = threading.Event()
    bucket = make_bucket(blocking_executor(recorder, release), max_bucket=2)
    bucket.fill(TaskType.IMMEDIATE, "a")
    bucket.fill(TaskType.TIME_BOMB, "b", run_after=0.5)
    with pytest.raises(BucketFullError):
        bucket.fill(TaskType.IMMEDIATE, "c")
    assert len(bucket) == 2
    assert "c" not in bucket
    assert bucket.stats().refused_full == 1
    bucket.drain("b")
    bucket.fill(TaskType.IMMEDIATE, "c")  # room again once a task is gone
    release.set()
    assert bucket.join(WAIT)
    assert recorder.hooks("b") == []


def test_concurrent_fills_never_exceed_max_bucket(make_bucket, recorder):
    bucket = make_bucket(RecordingExecutor(recorder), max_bucket=30)
    accepted: list[str] = []
    refused: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(6)

    def fill(worker: int) -> None:
        barrier.wait(WAIT)
        for i in range(15):
            task_id = f"w{worker}-{i}"
            try:
                bucket.fill(TaskType.TIME_BOMB, task_id, run_after=5.0, life_span=10.0)
            except BucketFullError:
                with lock:
                    refused.append(task_id)
            else:
                with lock:
                    accepted.append(task_id)

    run_threads(fill, 6)
    assert len(accepted) == 30
    assert len(refused) == 60
    assert len(bucket) == 30
    assert bucket.stats().refused_full == 60
    assert recorder.snapshot() == []


def test_filling_a_closed_bucket_raises_bucket_closed_error(recorder):
    bucket = TaskBucket(BucketConfig(life_span=1.0), RecordingExecutor(recorder))
    bucket.close(wait_pending=True, grace=WAIT)
    assert bucket.closed
    with pytest.raises(BucketClosedError):
        bucket.fill(TaskType.IMMEDIATE, "late")
    assert recorder.snapshot() == []
    assert len(bucket) == 0


# --- len, in, stats, join, drain errors ------------------------------------------------


def test_len_and_in_reflect_live_tasks(make_bucket, recorder):
    release = threading.Event()
    bucket = make_bucket(blocking_executor(recorder, release))
    assert len(bucket) == 0
    assert "a" not in bucket
    bucket.fill(TaskType.IMMEDIATE, "a")
    bucket.fill(TaskType.TIME_BOMB, "b", run_after=0.5)
    assert len(bucket) == 2
    assert "a" in bucket
    assert "b" in bucket
    assert "zzz" not in bucket
    assert 42 not in bucket
    release.set()
    assert bucket.join(WAIT)
    assert len(bucket) == 0
    assert "a" not in bucket


def test_join_returns_false_on_timeout_and_true_once_empty(make_bucket, recorder):
    release = threading.Event()
    bucket = make_bucket(blocking_executor(recorder, release))
    assert bucket.join(timeout=0.01) is True  # empty bucket
    bucket.fill(TaskType.IMMEDIATE, "a")
    assert bucket.join(timeout=0.05) is False
    release.set()
    assert bucket.join(timeout=timedelta(seconds=WAIT)) is True


def test_stats_count_every_kind_of_end(make_bucket, recorder):
    def execute(ctx, id, data):
        if id == "fails":
            raise RuntimeError("boom")
        if id == "slow":
            ctx.wait_cancelled(WAIT)

    bucket = make_bucket(RecordingExecutor(recorder, execute=execute))
    bucket.fill(TaskType.IMMEDIATE, "ok")
    bucket.fill(TaskType.IMMEDIATE, "fails")
    bucket.fill(TaskType.IMMEDIATE, "slow", life_span=0.2)
    bucket.fill(TaskType.TIME_BOMB, "drained", run_after=1.0)
    bucket.drain("drained")
    assert bucket.join(WAIT)
    bucket.fill(TaskType.TIME_BOMB, "rescued", run_after=1.0)
    assert bucket.rescue() == 1
    assert bucket.join(WAIT)
    stats = bucket.stats()
    assert isinstance(stats, BucketStats)
    assert stats.filled == 5
    assert stats.finished == 1
    assert stats.execute_errors == 1
    assert stats.exhausted == 1
    assert stats.drained == 1
    assert stats.panicked == 1
    assert stats.ended == 5
    assert stats.alive == 0
    assert stats.free == stats.max_bucket


def test_draining_an_unknown_id_raises_task_not_found(make_bucket):
    bucket = make_bucket(Executor())
    with pytest.raises(TaskNotFoundError):
        bucket.drain("nope")


def test_draining_an_ended_task_raises_task_not_found(make_bucket, recorder):
    bucket = make_bucket(RecordingExecutor(recorder))
    bucket.fill(TaskType.IMMEDIATE, "a")
    assert bucket.join(WAIT)
    with pytest.raises(TaskNotFoundError):
        bucket.drain("a")
    assert recorder.ends("a") == ["on_finish"]


def test_draining_with_a_bad_id_raises_invalid_argument(make_bucket):
    bucket = make_bucket(Executor())
    with pytest.raises(InvalidArgumentError):
        bucket.drain("")
    with pytest.raises(InvalidArgumentError):
        bucket.drain(3)  # type: ignore[arg-type]


# --- close and the context manager -------------------------------------------------------


def test_close_lets_live_tasks_finish_then_refuses_fills(recorder):
    bucket = TaskBucket(BucketConfig(life_span=2.0), RecordingExecutor(recorder))
    bucket.fill(TaskType.TIME_BOMB, "a", run_after=0.05)
    assert bucket.close(wait_pending=True, grace=WAIT) == 0
    assert recorder.ends("a") == ["on_finish"]
    assert bucket.close() == 0  # a second close does nothing
    with pytest.raises(BucketClosedError):
        bucket.fill(TaskType.IMMEDIATE, "b")


def test_close_rescues_tasks_still_alive_after_its_timeout(recorder):
    bucket = TaskBucket(BucketConfig(life_span=5.0), RecordingExecutor(recorder))
    bucket.fill(TaskType.TIME_BOMB, "waiting", run_after=4.0)
    assert bucket.close(wait_pending=True, grace=0.05) == 1
    assert recorder.ends("waiting") == ["on_panic"]
    assert recorder.hooks("waiting") == ["on_panic"]


def test_context_manager_rescues_waiting_time_bombs_and_lets_running_tasks_end(recorder):
    started = threading.Event()

    class Slow(RecordingExecutor):
        def on_execute(self, ctx, id, data):
            super().on_execute(ctx, id, data)
            if id == "running":
                started.set()
                ctx.wait_cancelled(0.3)  # ends on its own well within the grace

    with TaskBucket(BucketConfig(life_span=5.0), Slow(recorder)) as bucket:
        bucket.fill(TaskType.TIME_BOMB, "a", run_after=3.0)
        bucket.fill(TaskType.IMMEDIATE, "running")
        assert started.wait(WAIT)
    assert bucket.closed
    assert recorder.ends("a") == ["on_panic"]  # rescued at once, not waited for
    assert recorder.ends("running") == ["on_finish"]  # given its grace to end


def test_close_wait_pending_lets_every_time_bomb_fire(recorder):
    bucket = TaskBucket(BucketConfig(life_span=2.0), RecordingExecutor(recorder))
    bucket.fill(TaskType.TIME_BOMB, "a", run_after=0.05)
    bucket.fill(TaskType.IMMEDIATE, "b")
    assert bucket.close(wait_pending=True, grace=WAIT) == 0
    assert recorder.ends("a") == ["on_finish"]
    assert recorder.ends("b") == ["on_finish"]


def test_context_manager_rescues_tasks_when_an_exception_escapes(recorder):
    bucket = TaskBucket(BucketConfig(life_span=5.0), RecordingExecutor(recorder))
    with pytest.raises(KeyError), bucket:
        bucket.fill(TaskType.TIME_BOMB, "a", run_after=4.0)
        raise KeyError("crash")
    assert bucket.closed
    assert recorder.ends("a") == ["on_panic"]
    assert recorder.hooks("a") == ["on_panic"]


def test_a_bucket_can_run_on_its_own_runtime(recorder):
    runtime = ActorRuntime(dispatchers=1, workers=2, name="own")
    try:
        with TaskBucket(
            BucketConfig(life_span=2.0), RecordingExecutor(recorder), runtime=runtime
        ) as bucket:
            bucket.fill(TaskType.IMMEDIATE, "a")
            assert bucket.join(WAIT)
        assert recorder.ends("a") == ["on_finish"]
    finally:
        runtime.shutdown()


def test_task_ids_are_at_most_one_kib_of_utf8(recorder):
    bucket = TaskBucket(BucketConfig(life_span=60.0, run_after=30.0), RecordingExecutor(recorder))
    try:
        bucket.fill(TaskType.TIME_BOMB, "x" * gobucket.MAX_TASK_ID)
        assert gobucket.MAX_TASK_ID == 1024
        with pytest.raises(InvalidArgumentError, match="1025 bytes"):
            bucket.fill(TaskType.TIME_BOMB, "y" * 1025)
        with pytest.raises(InvalidArgumentError, match="limit is 1024"):
            bucket.fill(TaskType.TIME_BOMB, "é" * 513)  # 1026 bytes of UTF-8
        bucket.fill(TaskType.TIME_BOMB, "é" * 512)  # exactly 1024 bytes
        assert len(bucket) == 2
    finally:
        bucket.close(grace=0)
