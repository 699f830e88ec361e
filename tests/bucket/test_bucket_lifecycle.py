"""A task's life: how it runs, its context, each of its ends, drains, async hooks, logging."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest
from helpers.recording import Recorder, RecordingExecutor
from helpers.waiting import WAIT

from gobucket import (
    ActorRuntime,
    BucketConfig,
    DuplicateTaskError,
    Executor,
    FunctionExecutor,
    TaskBucket,
    TaskContext,
    TaskNotFoundError,
    TaskType,
)

# --- the four hook ends ---------------------------------------------------------------------


def test_immediate_task_runs_on_execute_then_on_finish_with_its_data(make_bucket, recorder):
    bucket = make_bucket(RecordingExecutor(recorder))
    bucket.fill(TaskType.IMMEDIATE, "process::1", {"name": "Johnson"})
    assert bucket.join(WAIT)
    assert recorder.hooks("process::1") == ["on_execute", "on_finish"]
    _, _, data, _, ctx = recorder.first("on_finish", "process::1")
    assert data == {"name": "Johnson"}
    assert isinstance(ctx, TaskContext)
    assert ctx.task_id == "process::1"


def test_time_bomb_never_executes_before_run_after(make_bucket, recorder):
    started: dict[str, float] = {}

    def execute(ctx, id, data):
        started[id] = time.monotonic()

    bucket = make_bucket(RecordingExecutor(recorder, execute=execute))
    for i, after in enumerate((0.0, 0.05, 0.1, 0.2)):
        bucket.fill(TaskType.TIME_BOMB, f"bomb{i}", run_after=after, life_span=2.0)
    assert bucket.join(WAIT)
    for i, after in enumerate((0.0, 0.05, 0.1, 0.2)):
        ctx = recorder.first("on_execute", f"bomb{i}")[4]
        assert started[f"bomb{i}"] >= ctx.filled_at + after
        assert recorder.ends(f"bomb{i}") == ["on_finish"]


def test_time_bomb_uses_run_after_from_config_by_default(make_bucket, recorder):
    started: dict[str, float] = {}
    bucket = make_bucket(
        RecordingExecutor(
            recorder, execute=lambda ctx, id, data: started.setdefault(id, time.monotonic())
        ),
        run_after=0.15,
        life_span=2.0,
    )
    bucket.fill(TaskType.TIME_BOMB, "bomb")
    assert bucket.join(WAIT)
    ctx = recorder.first("on_execute", "bomb")[4]
    assert started["bomb"] >= ctx.filled_at + 0.15


def test_raising_on_execute_ends_with_on_execute_error_and_the_error(make_bucket, recorder):
    boom = ValueError("boom")

    def execute(ctx, id, data):
        raise boom

    bucket = make_bucket(RecordingExecutor(recorder, execute=execute))
    bucket.fill(TaskType.IMMEDIATE, "bad")
    assert bucket.join(WAIT)
    assert recorder.hooks("bad") == ["on_execute", "on_execute_error"]
    assert recorder.first("on_execute_error", "bad")[3] is boom


def test_retries_run_on_execute_again_before_on_execute_error(make_bucket, recorder):
    def execute(ctx, id, data):
        raise RuntimeError(f"attempt {ctx.attempt}")

    bucket = make_bucket(
        RecordingExecutor(recorder, execute=execute), max_retries=2, retry_backoff=0.01
    )
    bucket.fill(TaskType.IMMEDIATE, "flaky")
    assert bucket.join(WAIT)
    assert recorder.hooks("flaky") == ["on_execute"] * 3 + ["on_execute_error"]
    assert str(recorder.first("on_execute_error", "flaky")[3]) == "attempt 3"


def test_running_task_past_its_life_span_is_exhausted(make_bucket, recorder):
    seen: dict[str, bool] = {}
    returned = threading.Event()

    def execute(ctx, id, data):
        seen["cancelled_at_start"] = ctx.cancelled
        seen["woken"] = ctx.wait_cancelled(WAIT)
        returned.set()

    bucket = make_bucket(RecordingExecutor(recorder, execute=execute))
    bucket.fill(TaskType.IMMEDIATE, "slow", life_span=0.2)
    assert bucket.join(WAIT)
    assert returned.wait(WAIT)  # the late on_execute returns on its own, after the end
    assert recorder.ends("slow") == ["on_task_exhausted"]
    assert seen == {"cancelled_at_start": False, "woken": True}
    assert recorder.first("on_task_exhausted", "slow")[4].cancelled is True


def test_life_span_is_counted_from_fill_including_the_time_bomb_wait(make_bucket, recorder):
    def execute(ctx, id, data):
        ctx.wait_cancelled(WAIT)

    bucket = make_bucket(RecordingExecutor(recorder, execute=execute))
    bucket.fill(TaskType.TIME_BOMB, "bomb", run_after=0.15, life_span=0.3)
    assert bucket.join(WAIT)
    exhausted_at = time.monotonic()
    ctx = recorder.first("on_task_exhausted", "bomb")[4]
    assert ctx.deadline == pytest.approx(ctx.filled_at + 0.3)
    assert exhausted_at >= ctx.deadline
    assert recorder.ends("bomb") == ["on_task_exhausted"]


def test_context_exposes_id_deadline_and_remaining(make_bucket, recorder):
    seen: dict[str, object] = {}

    def execute(ctx, id, data):
        seen["task_id"] = ctx.task_id
        seen["remaining"] = ctx.remaining()
        seen["life"] = ctx.deadline - ctx.filled_at
        seen["cancelled"] = ctx.cancelled
        seen["wait_without_cancel"] = ctx.wait_cancelled(0.01)

    bucket = make_bucket(RecordingExecutor(recorder, execute=execute))
    bucket.fill(TaskType.IMMEDIATE, "ctx", life_span=1.5)
    assert bucket.join(WAIT)
    assert seen["task_id"] == "ctx"
    assert seen["life"] == pytest.approx(1.5)
    assert 0.0 < seen["remaining"] <= 1.5  # type: ignore[operator]
    assert seen["cancelled"] is False
    assert seen["wait_without_cancel"] is False
    ctx = recorder.first("on_finish", "ctx")[4]
    assert ctx.remaining() >= 0.0


def test_context_of_a_finished_task_is_not_cancelled(make_bucket, recorder):
    def execute(ctx, id, data):
        if id == "failed":
            raise RuntimeError("fails")

    bucket = make_bucket(RecordingExecutor(recorder, execute=execute))
    bucket.fill(TaskType.IMMEDIATE, "done")
    bucket.fill(TaskType.IMMEDIATE, "failed")
    assert bucket.join(WAIT)
    # "cancelled: true once exhausted, drained or rescued" -- neither task was.
    assert recorder.first("on_finish", "done")[4].cancelled is False
    assert recorder.first("on_execute_error", "failed")[4].cancelled is False


# --- alive until the end hook is done -------------------------------------------------------


@pytest.mark.parametrize(
    ("end_hook", "life_span", "execute"),
    [
        ("on_finish", 5.0, None),
        ("on_execute_error", 5.0, lambda ctx, id, data: 1 / 0),
        ("on_task_exhausted", 0.2, lambda ctx, id, data: ctx.wait_cancelled(WAIT)),
    ],
)
def test_task_stays_alive_until_its_end_hook_returns(
    make_bucket, recorder, end_hook, life_span, execute
):
    release = threading.Event()
    executor = RecordingExecutor(
        recorder, execute=execute, after={end_hook: lambda *a: release.wait(WAIT)}
    )
    bucket = make_bucket(executor)
    bucket.fill(TaskType.IMMEDIATE, "t", life_span=life_span)
    assert recorder.wait_hook(end_hook, "t")
    assert "t" in bucket
    assert len(bucket) == 1
    assert bucket.join(timeout=0.05) is False
    with pytest.raises(DuplicateTaskError):
        bucket.fill(TaskType.IMMEDIATE, "t")
    with pytest.raises(TaskNotFoundError):
        bucket.drain("t")  # already ending: no second end
    release.set()
    assert bucket.join(WAIT)
    assert "t" not in bucket
    assert recorder.ends("t") == [end_hook]


@pytest.mark.parametrize("end_hook", ["on_finish", "on_execute_error", "on_task_exhausted"])
def test_exception_in_an_end_hook_is_logged_and_frees_the_task(
    make_bucket, recorder, caplog, end_hook
):
    def execute(ctx, id, data):
        if end_hook == "on_execute_error":
            raise RuntimeError("work failed")
        if end_hook == "on_task_exhausted":
            ctx.wait_cancelled(WAIT)

    def broken(*args):
        raise KeyError("hook is broken")

    bucket = make_bucket(RecordingExecutor(recorder, execute=execute, after={end_hook: broken}))
    with caplog.at_level(logging.ERROR, logger="gobucket"):
        bucket.fill(TaskType.IMMEDIATE, "t", life_span=0.2)
        assert bucket.join(WAIT)
    assert recorder.ends("t") == [end_hook]
    assert "t" not in bucket
    assert any(
        r.levelno >= logging.ERROR and r.exc_info and isinstance(r.exc_info[1], KeyError)
        for r in caplog.records
    )
    bucket.fill(TaskType.IMMEDIATE, "t", life_span=0.2)  # the bucket still works
    assert bucket.join(WAIT)


def test_exception_in_on_panic_is_logged_and_still_counts_as_rescued(make_bucket, recorder, caplog):
    def broken(*args):
        raise KeyError("panic hook is broken")

    bucket = make_bucket(RecordingExecutor(recorder, after={"on_panic": broken}))
    bucket.fill(TaskType.TIME_BOMB, "t", run_after=1.0)
    with caplog.at_level(logging.ERROR, logger="gobucket"):
        assert bucket.rescue() == 1
        assert bucket.join(WAIT)
    assert any(r.exc_info and isinstance(r.exc_info[1], KeyError) for r in caplog.records)
    assert recorder.ends("t") == ["on_panic"]
    assert bucket.stats().panicked == 1


# --- drain ----------------------------------------------------------------------------------


def test_drained_time_bomb_never_executes(make_bucket, recorder):
    bucket = make_bucket(RecordingExecutor(recorder))
    bucket.fill(TaskType.TIME_BOMB, "bomb", run_after=0.1, life_span=0.3)
    bucket.drain("bomb")
    assert "bomb" not in bucket
    assert len(bucket) == 0
    time.sleep(0.4)  # past run_after and life span: give a wrong fire/expire a chance
    assert recorder.hooks("bomb") == []
    assert bucket.stats().drained == 1


def test_drained_task_waiting_for_a_worker_never_starts(recorder):
    runtime = ActorRuntime(dispatchers=1, workers=1, name="one-worker")
    release = threading.Event()

    def execute(ctx, id, data):
        if id == "blocker":
            release.wait(WAIT)

    bucket = TaskBucket(
        BucketConfig(life_span=5.0), RecordingExecutor(recorder, execute=execute), runtime=runtime
    )
    try:
        bucket.fill(TaskType.IMMEDIATE, "blocker")
        assert recorder.wait_hook("on_execute", "blocker")
        bucket.fill(TaskType.IMMEDIATE, "queued")  # its on_execute waits for the worker
        bucket.drain("queued")
        release.set()
        bucket.fill(TaskType.IMMEDIATE, "sentinel")  # queued behind "queued"
        assert recorder.wait_hook("on_finish", "sentinel")
        assert bucket.join(WAIT)
        assert recorder.hooks("queued") == []
    finally:
        release.set()
        bucket.close(wait_pending=True, grace=WAIT)
        runtime.shutdown()


def test_draining_a_running_task_cancels_its_context_and_frees_its_id_at_once(
    make_bucket, recorder
):
    entered = threading.Event()
    returned = threading.Event()
    seen: dict[str, bool] = {}

    def execute(ctx, id, data):
        if data == "first":
            entered.set()
            seen["woken"] = ctx.wait_cancelled(WAIT)
            seen["cancelled"] = ctx.cancelled
            returned.set()

    bucket = make_bucket(RecordingExecutor(recorder, execute=execute))
    bucket.fill(TaskType.IMMEDIATE, "job", "first")
    assert entered.wait(WAIT)
    bucket.drain("job")
    assert "job" not in bucket
    assert returned.wait(WAIT)  # woken by the drain's cancel
    bucket.fill(TaskType.IMMEDIATE, "job", "second")  # refill once the first run is over
    assert bucket.join(WAIT)
    assert seen == {"woken": True, "cancelled": True}
    assert recorder.ends_by_data("first") == []  # its late result was dropped
    assert recorder.ends_by_data("second") == ["on_finish"]
    assert bucket.stats().drained == 1


def test_drain_frees_the_id_at_once_even_while_the_task_actor_is_busy(
    make_bucket, recorder, caplog
):
    # Hold the task's actor inside its fire handler (through its verbose log line)
    # while draining: drain must still free the id before it returns.
    entered = threading.Event()
    release = threading.Event()

    class Hold(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "busy" in record.getMessage() and "executing" in record.getMessage():
                entered.set()
                release.wait(WAIT)

    hold = Hold()
    caplog.set_level(logging.INFO, logger="gobucket")
    logging.getLogger("gobucket").addHandler(hold)
    try:
        bucket = make_bucket(RecordingExecutor(recorder), verbose=True)
        bucket.fill(TaskType.TIME_BOMB, "busy", "first", run_after=0.05)
        assert entered.wait(WAIT)
        releaser = threading.Timer(0.2, release.set)
        releaser.start()
        bucket.drain("busy")
        still_there = "busy" in bucket
        release.set()
        releaser.join(WAIT)
        assert still_there is False
        bucket.fill(TaskType.TIME_BOMB, "busy", "second", run_after=0.0)
        assert bucket.join(WAIT)
        assert recorder.ends_by_data("first") == []
        assert recorder.ends_by_data("second") == ["on_finish"]
    finally:
        release.set()
        logging.getLogger("gobucket").removeHandler(hold)


def test_drain_that_returns_means_the_task_gets_no_end_hook(make_bucket, recorder, caplog):
    # Hold the task's actor while it takes its "finished" end (in its verbose log
    # line), and drain meanwhile: either drain refuses (already ending), or it
    # drains and no end hook runs. Never both a successful drain and on_finish.
    entered = threading.Event()
    release = threading.Event()

    class Hold(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage()
            if "task x " in message and "ending" in message:
                entered.set()
                release.wait(WAIT)

    hold = Hold()
    caplog.set_level(logging.INFO, logger="gobucket")
    logging.getLogger("gobucket").addHandler(hold)
    try:
        bucket = make_bucket(RecordingExecutor(recorder), verbose=True)
        bucket.fill(TaskType.IMMEDIATE, "x")
        assert entered.wait(WAIT)
        releaser = threading.Timer(0.2, release.set)
        releaser.start()
        try:
            bucket.drain("x")
            drained = True
        except TaskNotFoundError:
            drained = False
        release.set()
        releaser.join(WAIT)
        assert bucket.join(WAIT)
        assert recorder.ends("x") == ([] if drained else ["on_finish"])
    finally:
        release.set()
        logging.getLogger("gobucket").removeHandler(hold)


# --- async hooks ----------------------------------------------------------------------------


class AsyncRecordingExecutor(Executor):
    def __init__(self, recorder: Recorder, work: str = "ok") -> None:
        self.recorder = recorder
        self.work = work

    async def on_execute(self, ctx, id, data):
        self.recorder.record("on_execute", ctx, id, data)
        if self.work == "raise":
            raise LookupError("async failure")
        if self.work == "forever":
            try:
                await asyncio.sleep(WAIT)
            except asyncio.CancelledError:
                self.recorder.record("cancelled", ctx, id, data)
                raise
        await asyncio.sleep(0)

    async def on_finish(self, ctx, id, data):
        self.recorder.record("on_finish", ctx, id, data)

    async def on_execute_error(self, ctx, id, data, error):
        self.recorder.record("on_execute_error", ctx, id, data, error)

    async def on_task_exhausted(self, ctx, id, data):
        self.recorder.record("on_task_exhausted", ctx, id, data)

    async def on_panic(self, ctx, id, data):
        self.recorder.record("on_panic", ctx, id, data)


def test_async_hooks_run_and_finish(make_bucket, recorder):
    bucket = make_bucket(AsyncRecordingExecutor(recorder))
    bucket.fill(TaskType.IMMEDIATE, "a", 1)
    bucket.fill(TaskType.TIME_BOMB, "b", 2, run_after=0.05)
    assert bucket.join(WAIT)
    assert recorder.hooks("a") == ["on_execute", "on_finish"]
    assert recorder.hooks("b") == ["on_execute", "on_finish"]


def test_raising_async_on_execute_ends_with_on_execute_error(make_bucket, recorder):
    bucket = make_bucket(AsyncRecordingExecutor(recorder, work="raise"))
    bucket.fill(TaskType.IMMEDIATE, "a")
    assert bucket.join(WAIT)
    assert recorder.hooks("a") == ["on_execute", "on_execute_error"]
    assert isinstance(recorder.first("on_execute_error", "a")[3], LookupError)


def test_exhausted_async_on_execute_is_cancelled_for_real(make_bucket, recorder):
    bucket = make_bucket(AsyncRecordingExecutor(recorder, work="forever"))
    bucket.fill(TaskType.IMMEDIATE, "a", life_span=0.2)
    assert bucket.join(WAIT)
    assert recorder.wait_hook("cancelled", "a")
    assert recorder.ends("a") == ["on_task_exhausted"]
    assert recorder.count("cancelled") == 1


def test_drained_async_on_execute_is_cancelled(make_bucket, recorder):
    bucket = make_bucket(AsyncRecordingExecutor(recorder, work="forever"))
    bucket.fill(TaskType.IMMEDIATE, "a", life_span=5.0)
    assert recorder.wait_hook("on_execute", "a")
    bucket.drain("a")
    assert "a" not in bucket
    assert recorder.wait_hook("cancelled", "a")
    assert recorder.ends("a") == []
    assert recorder.first("on_execute", "a")[4].cancelled is True


def test_function_executor_mixes_sync_and_async_hooks(make_bucket, recorder):
    async def on_execute(ctx, id, data):
        recorder.record("on_execute", ctx, id, data)

    executor = FunctionExecutor(
        on_execute=on_execute,
        on_finish=lambda ctx, id, data: recorder.record("on_finish", ctx, id, data),
    )
    bucket = make_bucket(executor)
    bucket.fill(TaskType.IMMEDIATE, "a")
    assert bucket.join(WAIT)
    assert recorder.hooks("a") == ["on_execute", "on_finish"]


def test_executor_with_no_hooks_overridden_still_ends_tasks(make_bucket):
    bucket = make_bucket(Executor())
    bucket.fill(TaskType.IMMEDIATE, "a")
    bucket.fill(TaskType.TIME_BOMB, "b", run_after=0.02)
    assert bucket.join(WAIT)
    assert bucket.stats().finished == 2


# --- hooks that use the bucket ----------------------------------------------------------


def test_task_filled_from_a_hook_runs_while_that_hook_is_still_running(make_bucket, recorder):
    child_ran = threading.Event()
    seen: dict[str, bool] = {}

    def execute(ctx, id, data):
        if id == "parent":
            bucket.fill(TaskType.IMMEDIATE, "child")
            seen["child_ran_meanwhile"] = child_ran.wait(3.0)
        else:
            child_ran.set()

    bucket = make_bucket(RecordingExecutor(recorder, execute=execute), life_span=5.0)
    bucket.fill(TaskType.IMMEDIATE, "parent")
    assert bucket.join(WAIT)
    assert seen == {"child_ran_meanwhile": True}
    assert recorder.ends("child") == ["on_finish"]


# --- verbose logging -----------------------------------------------------------------------


def test_verbose_bucket_logs_each_task_life_on_the_gobucket_logger(make_bucket, caplog):
    def execute(ctx, id, data):
        if id == "v-err":
            raise RuntimeError("fails")

    caplog.set_level(logging.INFO, logger="gobucket")
    bucket = make_bucket(FunctionExecutor(on_execute=execute), verbose=True)
    bucket.fill(TaskType.IMMEDIATE, "v-ok")
    bucket.fill(TaskType.TIME_BOMB, "v-bomb", run_after=0.05)
    bucket.fill(TaskType.IMMEDIATE, "v-err")
    bucket.fill(TaskType.TIME_BOMB, "v-drained", run_after=1.0)
    bucket.drain("v-drained")
    assert bucket.join(WAIT)
    bucket.fill(TaskType.TIME_BOMB, "v-rescued", run_after=1.0)
    bucket.rescue()
    assert bucket.join(WAIT)

    def lines(task_id: str) -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.name.startswith("gobucket") and task_id in r.getMessage()
        ]

    for task_id, end in [
        ("v-ok", "finished"),
        ("v-bomb", "finished"),
        ("v-err", "execute_error"),
        ("v-drained", "drained"),
        ("v-rescued", "panicked"),
    ]:
        logged = lines(task_id)
        assert any("fill" in line for line in logged), (task_id, logged)
        assert any(end in line for line in logged), (task_id, logged)
    assert any("executing" in line for line in lines("v-ok"))


def test_quiet_bucket_logs_nothing_about_tasks(make_bucket, caplog):
    caplog.set_level(logging.INFO, logger="gobucket")
    bucket = make_bucket(Executor(), verbose=False)
    bucket.fill(TaskType.IMMEDIATE, "q1")
    bucket.fill(TaskType.TIME_BOMB, "q2", run_after=0.02)
    assert bucket.join(WAIT)
    assert not [r for r in caplog.records if "q1" in r.getMessage() or "q2" in r.getMessage()]
