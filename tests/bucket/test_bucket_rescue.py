"""rescue(): on_panic for every live task, from any thread, an except block or a signal handler."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest
from helpers.recording import RecordingExecutor
from helpers.waiting import WAIT

from gobucket import ActorRuntime, BucketConfig, TaskBucket, TaskType


def test_rescue_runs_on_panic_for_every_live_task_and_returns_how_many(make_bucket, recorder):
    entered = threading.Event()

    def execute(ctx, id, data):
        entered.set()
        ctx.wait_cancelled(WAIT)

    bucket = make_bucket(RecordingExecutor(recorder, execute=execute), life_span=5.0)
    bucket.fill(TaskType.IMMEDIATE, "running", "r")
    assert entered.wait(WAIT)
    for i in range(3):
        bucket.fill(TaskType.TIME_BOMB, f"waiting{i}", i, run_after=4.0)
    assert bucket.rescue() == 4
    assert len(bucket) == 0 or bucket.join(WAIT)
    for task_id in ("running", "waiting0", "waiting1", "waiting2"):
        assert recorder.ends(task_id) == ["on_panic"]
    for i in range(3):
        assert "on_execute" not in recorder.hooks(f"waiting{i}")
    assert recorder.first("on_panic", "running")[4].cancelled is True
    assert recorder.first("on_panic", "waiting0")[2] == 0


def test_rescue_of_an_empty_bucket_returns_zero(make_bucket, recorder):
    bucket = make_bucket(RecordingExecutor(recorder))
    assert bucket.rescue() == 0
    assert recorder.snapshot() == []


def test_rescue_returns_only_after_every_on_panic_returned(make_bucket, recorder):
    entered = threading.Event()
    release = threading.Event()
    returned = threading.Event()

    def slow_panic(ctx, id, data):
        entered.set()
        release.wait(WAIT)
        returned.set()

    bucket = make_bucket(RecordingExecutor(recorder, after={"on_panic": slow_panic}))
    bucket.fill(TaskType.TIME_BOMB, "a", run_after=1.0)
    result: dict[str, object] = {}

    def rescue() -> None:
        result["count"] = bucket.rescue()
        result["panic_returned_first"] = returned.is_set()

    rescuer = threading.Thread(target=rescue)
    rescuer.start()
    assert entered.wait(WAIT)
    rescuer.join(0.1)
    assert rescuer.is_alive()  # still waiting for on_panic
    release.set()
    rescuer.join(WAIT)
    assert result == {"count": 1, "panic_returned_first": True}


def test_tasks_filled_after_rescue_are_not_affected(make_bucket, recorder):
    bucket = make_bucket(RecordingExecutor(recorder))
    bucket.fill(TaskType.TIME_BOMB, "before", run_after=1.0)
    assert bucket.rescue() == 1
    bucket.fill(TaskType.TIME_BOMB, "after", run_after=0.05)
    assert bucket.join(WAIT)
    assert recorder.ends("before") == ["on_panic"]
    assert recorder.ends("after") == ["on_finish"]


def test_rescue_does_not_wait_behind_busy_workers(recorder):
    # Every worker of the runtime is stuck in a long on_execute, more are queued.
    runtime = ActorRuntime(dispatchers=1, workers=2, name="busy")
    release = threading.Event()
    bucket = TaskBucket(
        BucketConfig(life_span=9.0),
        RecordingExecutor(recorder, execute=lambda ctx, id, data: release.wait(WAIT)),
        runtime=runtime,
    )
    try:
        for i in range(5):
            bucket.fill(TaskType.IMMEDIATE, f"busy{i}")
        assert recorder.wait_for(lambda: recorder.count("on_execute") >= 2)
        assert bucket.rescue(timeout=WAIT) == 5
        assert recorder.count("on_panic") == 5
    finally:
        release.set()
        bucket.close(wait_pending=True, grace=WAIT)
        runtime.shutdown()


def test_rescue_works_from_another_thread(make_bucket, recorder):
    bucket = make_bucket(RecordingExecutor(recorder))
    for i in range(5):
        bucket.fill(TaskType.TIME_BOMB, f"t{i}", run_after=1.0)
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(bucket.rescue()))
    thread.start()
    thread.join(WAIT)
    assert result == [5]
    assert recorder.count("on_panic") == 5


def test_rescue_works_inside_an_except_block(make_bucket, recorder):
    bucket = make_bucket(RecordingExecutor(recorder))
    bucket.fill(TaskType.TIME_BOMB, "t", run_after=1.0)
    try:
        raise RuntimeError("the process is going down")
    except RuntimeError:
        rescued = bucket.rescue()
    assert rescued == 1
    assert recorder.ends("t") == ["on_panic"]


def test_rescue_works_from_a_signal_handler(make_bucket, recorder):
    bucket = make_bucket(RecordingExecutor(recorder))
    for i in range(3):
        bucket.fill(TaskType.TIME_BOMB, f"t{i}", run_after=1.0)
    handled = threading.Event()
    result: dict[str, object] = {}

    def handler(signum, frame):
        result["rescued"] = bucket.rescue()
        result["panics"] = recorder.count("on_panic")
        handled.set()

    previous = signal.signal(signal.SIGUSR1, handler)
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert handled.wait(WAIT)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert result == {"rescued": 3, "panics": 3}
    assert bucket.join(WAIT)


# The signal lands while the main thread is inside the bucket (here: in the middle
# of fill(), held there by its verbose log line). Run in a child process so that a
# deadlock shows up as a timeout instead of hanging the test session.
SIGNAL_DURING_FILL = textwrap.dedent(
    """
    import json, logging, signal, sys, threading
    from gobucket import BucketConfig, Executor, TaskBucket, TaskType

    panicked = []

    class Saver(Executor):
        def on_panic(self, ctx, id, data):
            panicked.append(id)

    bucket = TaskBucket(BucketConfig(life_span=5.0, run_after=4.0, verbose=True), Saver())
    for i in range(5):
        bucket.fill(TaskType.TIME_BOMB, f"t{i}")
    result = {}

    def handler(signum, frame):
        result["rescued"] = bucket.rescue(timeout=5)
        result["panicked"] = sorted(panicked)

    signal.signal(signal.SIGUSR1, handler)

    class Trigger(logging.Handler):
        def emit(self, record):
            if "trigger" in record.getMessage() and "sent" not in result:
                result["sent"] = True
                signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)

    logging.getLogger("gobucket").setLevel(logging.INFO)
    logging.getLogger("gobucket").addHandler(Trigger())
    bucket.fill(TaskType.TIME_BOMB, "trigger")
    print(json.dumps(result))
    bucket.close(grace=0)
    """
)


def test_rescue_from_a_signal_handler_that_interrupts_a_fill_does_not_deadlock():
    try:
        proc = subprocess.run(
            [sys.executable, "-c", SIGNAL_DURING_FILL],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("rescue() in a signal handler that interrupted fill() deadlocked")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["sent"] is True
    assert result["rescued"] >= 5
    assert set(result["panicked"]) >= {"t0", "t1", "t2", "t3", "t4"}
