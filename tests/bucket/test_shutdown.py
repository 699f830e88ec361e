"""Shutting down without losing a task: stuck hooks, overruns, bad data, hanging rescues,
failing sinks, ``with`` blocks, Ctrl-C and ``serve_forever`` (issue 8)."""

from __future__ import annotations

import datetime
import decimal
import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.recording import RecordingExecutor
from helpers.waiting import WAIT

from gobucket import (
    ActorRuntime,
    BucketClosedError,
    BucketConfig,
    DuplicateTaskError,
    GoBucketError,
    InvalidArgumentError,
    JsonlRescueSink,
    RescuedTask,
    RescueTimeoutError,
    TaskBucket,
    TaskBucketGroup,
    TaskType,
    rescue_on_error,
)


def eventually(predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
    """Poll a condition that has no event of its own, until a generous deadline."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Set after the test: lets every hook that blocks "forever" return."""
    event = threading.Event()
    yield event
    event.set()


@pytest.fixture
def own_runtime() -> Iterator[ActorRuntime]:
    """A runtime of the test's own, so that blocked workers never leak into other tests."""
    runtime = ActorRuntime(dispatchers=2, workers=16, name="shutdown-test")
    yield runtime
    runtime.shutdown(timeout=1.0)


def sink_ids(path: Path) -> list[str]:
    return sorted(t.task_id for t in JsonlRescueSink(path).read())


# --- stuck plain hooks --------------------------------------------------------------------


def test_stuck_plain_hooks_never_stop_other_tasks_from_ending(
    recorder, release, own_runtime, tmp_path
):
    def execute(ctx: Any, id: str, data: Any) -> None:
        if id.startswith("stuck"):
            release.wait()  # "forever", for the length of the test

    sink = JsonlRescueSink(tmp_path / "rescued.jsonl")
    bucket = TaskBucket(
        BucketConfig(life_span=60.0, max_bucket=1000),
        RecordingExecutor(recorder, execute=execute),
        runtime=own_runtime,
        rescue_sink=sink,
    )
    for i in range(20):  # 16 take every worker, 4 wait for one
        bucket.fill(TaskType.IMMEDIATE, f"stuck-{i}")
    assert recorder.wait_for(lambda: recorder.count("on_execute") == 16)
    # Queued behind the stuck ones, with a short life: they end on time anyway.
    filled = time.monotonic()
    for i in range(5):
        bucket.fill(TaskType.IMMEDIATE, f"short-{i}", life_span=0.3)
    bucket.fill(TaskType.TIME_BOMB, "bomb", run_after=0.1, life_span=0.5)
    for i in range(5):
        assert recorder.wait_hook("on_task_exhausted", f"short-{i}")
    exhausted_after = time.monotonic() - filled
    assert recorder.wait_hook("on_task_exhausted", "bomb")
    assert exhausted_after < 0.3 + 3.0, exhausted_after  # not stuck behind the workers
    assert recorder.hooks("bomb") == ["on_task_exhausted"]  # never ran: no worker was free

    stats = bucket.stats()
    assert stats.running == 16
    assert stats.queued == 4 + 5 + 1  # the stuck ones and the skipped ones still queued
    assert stats.overrunning == 0

    started = time.monotonic()
    assert bucket.close(grace=1.0) == 20
    took = time.monotonic() - started
    assert 1.0 <= took < 1.0 + 2.0, took  # the grace, then a quick rescue
    for i in range(20):
        assert recorder.ends(f"stuck-{i}") == ["on_panic"]
    assert sink_ids(tmp_path / "rescued.jsonl") == sorted(f"stuck-{i}" for i in range(20))


def test_stats_and_a_warning_show_a_saturated_worker_pool(recorder, release, own_runtime, caplog):
    def execute(ctx: Any, id: str, data: Any) -> None:
        release.wait()

    bucket = TaskBucket(
        BucketConfig(life_span=60.0, name="busy"),
        RecordingExecutor(recorder, execute=execute),
        runtime=own_runtime,
    )
    with caplog.at_level(logging.WARNING, logger="gobucket"):
        for i in range(18):
            bucket.fill(TaskType.IMMEDIATE, f"t{i}")
        assert recorder.wait_for(lambda: recorder.count("on_execute") == 16)
        # A burst is not news: the warning comes once calls kept waiting a while.
        assert not [r for r in caplog.records if "hook workers are busy" in r.getMessage()]
        waited_from = time.monotonic()
        while time.monotonic() - waited_from < 1.2:  # past SATURATION_GRACE
            bucket.fill(TaskType.IMMEDIATE, f"more-{time.monotonic()}")
            time.sleep(0.05)
    stats = bucket.stats()
    assert stats.running == 16
    assert stats.queued == stats.alive - 16 > 2
    assert stats.overrunning == 0
    saturated = [r for r in caplog.records if "hook workers are busy" in r.getMessage()]
    assert len(saturated) == 1, "rate-limited: one warning, not one per fill"
    assert "'busy'" in saturated[0].getMessage()
    release.set()
    assert bucket.join(WAIT)
    assert eventually(lambda: bucket.stats().running == 0)
    bucket.close(grace=0)


# --- no two runs of one id at once ---------------------------------------------------------


def test_an_overrunning_task_keeps_its_id_until_its_on_execute_returns(
    recorder, release, own_runtime, caplog
):
    running: dict[str, int] = {}
    most: dict[str, int] = {}
    lock = threading.Lock()
    entered = threading.Event()

    def execute(ctx: Any, id: str, data: Any) -> None:
        with lock:
            running[id] = running.get(id, 0) + 1
            most[id] = max(most.get(id, 0), running[id])
        try:
            if data == "first":
                entered.set()
                release.wait()  # ignores ctx.cancelled: a plain hook cannot be stopped
        finally:
            with lock:
                running[id] -= 1

    bucket = TaskBucket(
        BucketConfig(life_span=0.2),
        RecordingExecutor(recorder, execute=execute),
        runtime=own_runtime,
    )
    with caplog.at_level(logging.WARNING, logger="gobucket"):
        bucket.fill(TaskType.IMMEDIATE, "job", "first")
        assert entered.wait(WAIT)
        assert recorder.wait_hook("on_task_exhausted", "job")
        assert "job" not in bucket
        assert eventually(lambda: bucket.stats().overrunning == 1)
        with pytest.raises(DuplicateTaskError, match="on_execute is still running"):
            bucket.fill(TaskType.IMMEDIATE, "job", "second")
    overran = [r.getMessage() for r in caplog.records if "overrunning" in r.getMessage()]
    assert any("'job'" in message for message in overran), overran
    assert bucket.stats().refused_duplicate == 1

    with caplog.at_level(logging.WARNING, logger="gobucket"):
        time.sleep(1.0)  # let it overrun past OVERRUN_WARNING before it returns
        release.set()
        assert eventually(lambda: bucket.stats().overrunning == 0)
    late = [r.getMessage() for r in caplog.records if "returned" in r.getMessage()]
    assert any("task job" in message for message in late), late
    bucket.fill(TaskType.IMMEDIATE, "job", "second", life_span=5.0)
    assert bucket.join(WAIT)
    assert most == {"job": 1}  # never two runs of one id at once
    assert recorder.ends_by_data("second") == ["on_finish"]
    bucket.close(grace=0)


def test_a_drained_running_task_keeps_its_id_while_its_on_execute_runs(
    recorder, release, own_runtime
):
    entered = threading.Event()

    def execute(ctx: Any, id: str, data: Any) -> None:
        entered.set()
        release.wait()

    bucket = TaskBucket(
        BucketConfig(life_span=60.0),
        RecordingExecutor(recorder, execute=execute),
        runtime=own_runtime,
    )
    bucket.fill(TaskType.IMMEDIATE, "job")
    assert entered.wait(WAIT)
    bucket.drain("job")
    with pytest.raises(DuplicateTaskError, match="still running"):
        bucket.fill(TaskType.IMMEDIATE, "job")
    release.set()
    assert eventually(lambda: bucket.stats().overrunning == 0)
    bucket.close(grace=0)


# --- data a sink cannot store ----------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [datetime.datetime(2026, 1, 1), {1, 2}, decimal.Decimal("1.5"), object()],
    ids=["datetime", "set", "Decimal", "object"],
)
def test_data_the_sink_cannot_store_is_refused_at_fill(recorder, tmp_path, data):
    bucket = TaskBucket(
        BucketConfig(),
        RecordingExecutor(recorder),
        rescue_sink=JsonlRescueSink(tmp_path / "r.jsonl"),
    )
    try:
        with pytest.raises(InvalidArgumentError):
            bucket.fill(TaskType.TIME_BOMB, "bad", {"when": data})
        assert len(bucket) == 0
        assert bucket.stats().filled == 0
        bucket.fill(TaskType.TIME_BOMB, "good", {"when": "2026-01-01", "raw": b"\x00"})
        assert "good" in bucket
    finally:
        bucket.close(grace=0)
    assert sink_ids(tmp_path / "r.jsonl") == ["good"]


def test_without_a_sink_any_data_is_accepted(recorder):
    bucket = TaskBucket(BucketConfig(), RecordingExecutor(recorder))
    try:
        bucket.fill(TaskType.IMMEDIATE, "any", {1, 2})
        assert bucket.join(WAIT)
        assert recorder.ends("any") == ["on_finish"]
    finally:
        bucket.close(grace=0)


# --- a rescue always finishes and keeps what it can ------------------------------------------


def test_a_hanging_on_panic_keeps_no_record_out_of_the_sink(
    recorder, release, own_runtime, tmp_path
):
    def hang(ctx: Any, id: str, data: Any) -> None:
        if id == "hangs":
            release.wait()

    path = tmp_path / "rescued.jsonl"
    bucket = TaskBucket(
        BucketConfig(life_span=60.0, run_after=30.0),
        RecordingExecutor(recorder, after={"on_panic": hang}),
        runtime=own_runtime,
        rescue_sink=JsonlRescueSink(path),
    )
    ids = ["hangs", *(f"ok-{i}" for i in range(9))]
    for task_id in ids:
        bucket.fill(TaskType.TIME_BOMB, task_id)
    started = time.monotonic()
    with pytest.raises(RescueTimeoutError) as raised:
        bucket.rescue(timeout=1.0)
    took = time.monotonic() - started
    assert isinstance(raised.value, GoBucketError)
    assert (raised.value.rescued, raised.value.pending) == (9, 1)
    assert raised.value.pending_ids == ["hangs"]
    assert 1.0 <= took < 1.0 + 3.0, took
    assert sink_ids(path) == sorted(ids)  # the hanging one's record too
    release.set()
    bucket.close(grace=0)


def test_close_is_bounded_by_its_timeout_when_on_panic_hangs(
    recorder, release, own_runtime, tmp_path
):
    def hang(ctx: Any, id: str, data: Any) -> None:
        release.wait()

    path = tmp_path / "rescued.jsonl"
    bucket = TaskBucket(
        BucketConfig(life_span=60.0, run_after=30.0),
        RecordingExecutor(recorder, after={"on_panic": hang}),
        runtime=own_runtime,
        rescue_sink=JsonlRescueSink(path),
    )
    bucket.fill(TaskType.TIME_BOMB, "a")
    started = time.monotonic()
    with pytest.raises(RescueTimeoutError):
        bucket.close(grace=0, timeout=0.5)
    assert time.monotonic() - started < 0.5 + 3.0
    assert sink_ids(path) == ["a"]
    assert bucket.closed


class RaisingSink:
    """A sink that is down."""

    timeout = 1.0

    def write(self, tasks: Any) -> None:
        raise ConnectionError("sink is down")

    def read(self) -> list[RescuedTask]:
        return []

    def remove(self, tasks: Any) -> None:
        pass


class FrozenSink(RaisingSink):
    """A sink that never answers (a SIGSTOPped server)."""

    timeout = 0.3

    def __init__(self) -> None:
        self.gate = threading.Event()

    def write(self, tasks: Any) -> None:
        self.gate.wait()


@pytest.mark.parametrize("sink_kind", ["raising", "frozen"])
def test_a_failing_sink_hands_its_records_to_the_fallback_loudly(
    recorder, tmp_path, caplog, sink_kind
):
    sink = RaisingSink() if sink_kind == "raising" else FrozenSink()
    fallback = tmp_path / "fallback.jsonl"
    bucket = TaskBucket(
        BucketConfig(life_span=60.0, run_after=30.0, name="mail"),
        RecordingExecutor(recorder),
        rescue_sink=sink,
        rescue_fallback=fallback,
    )
    ids = [f"t{i}" for i in range(25)]
    for task_id in ids:
        bucket.fill(TaskType.TIME_BOMB, task_id, {"to": task_id})
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="gobucket"):
        assert bucket.close(grace=0) == 25
    assert time.monotonic() - started < sink.timeout + 3.0
    if isinstance(sink, FrozenSink):
        sink.gate.set()
    stored = JsonlRescueSink(fallback).read()
    assert sorted(t.task_id for t in stored) == sorted(ids)
    assert all(t.data == {"to": t.task_id} for t in stored)
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "25 written to the fallback" in said, said


def test_the_default_fallback_file_is_in_the_working_directory(recorder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GOBUCKET_RESCUE_FALLBACK", raising=False)
    bucket = TaskBucket(
        BucketConfig(life_span=60.0, run_after=30.0),
        RecordingExecutor(recorder),
        rescue_sink=RaisingSink(),
    )
    bucket.fill(TaskType.TIME_BOMB, "a")
    bucket.close(grace=0)
    assert sink_ids(tmp_path / "gobucket-rescue-fallback.jsonl") == ["a"]


def test_one_unencodable_record_never_stops_the_others(recorder, tmp_path):
    path = tmp_path / "rescued.jsonl"
    bucket = TaskBucket(
        BucketConfig(life_span=60.0, run_after=30.0),
        RecordingExecutor(recorder),
        rescue_sink=JsonlRescueSink(path),
        rescue_fallback=tmp_path / "fallback.jsonl",
    )
    mutable: dict[str, Any] = {"ok": True}
    bucket.fill(TaskType.TIME_BOMB, "mutated", mutable)
    for i in range(5):
        bucket.fill(TaskType.TIME_BOMB, f"fine-{i}", {"i": i})
    mutable["later"] = {1, 2}  # the caller changed the data after the fill
    bucket.close(grace=0)
    assert sink_ids(path) == [f"fine-{i}" for i in range(5)]


# --- the door closes before the rescue -------------------------------------------------------


def test_rescue_on_error_closes_the_door_while_other_threads_fill(recorder, tmp_path):
    path = tmp_path / "rescued.jsonl"
    bucket = TaskBucket(
        BucketConfig(life_span=60.0, run_after=30.0, max_bucket=10**6),
        RecordingExecutor(recorder),
        rescue_sink=JsonlRescueSink(path),
    )
    acked: list[list[str]] = [[] for _ in range(4)]
    going = threading.Event()

    def fill(n: int) -> None:
        going.wait()
        for j in range(10**6):
            task_id = f"{n}-{j}"
            try:
                bucket.fill(TaskType.TIME_BOMB, task_id)
            except BucketClosedError:
                return
            acked[n].append(task_id)

    threads = [threading.Thread(target=fill, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    going.set()
    assert eventually(lambda: sum(map(len, acked)) > 2000)
    with pytest.raises(RuntimeError, match="boom"), rescue_on_error(bucket):
        raise RuntimeError("boom")
    for thread in threads:
        thread.join(WAIT)
        assert not thread.is_alive()
    every = sorted(i for ids in acked for i in ids)
    stored = sink_ids(path)
    assert stored == every  # exactly the acknowledged ones: none missing, none extra
    assert len(bucket) == 0


def test_a_plain_rescue_is_a_snapshot_and_leaves_the_bucket_open(recorder):
    bucket = TaskBucket(BucketConfig(life_span=60.0, run_after=30.0), RecordingExecutor(recorder))
    bucket.fill(TaskType.TIME_BOMB, "a")
    assert bucket.rescue() == 1
    assert not bucket.closed
    bucket.fill(TaskType.TIME_BOMB, "b")
    assert "b" in bucket
    bucket.close(grace=0)


# --- shutdown that users expect --------------------------------------------------------------


def test_leaving_a_with_block_rescues_a_day_long_time_bomb_at_once(recorder, tmp_path):
    path = tmp_path / "rescued.jsonl"
    started = time.monotonic()
    before = time.time()
    with TaskBucket(
        BucketConfig(life_span=2 * 86400.0),
        RecordingExecutor(recorder),
        rescue_sink=JsonlRescueSink(path),
    ) as bucket:
        bucket.fill(TaskType.TIME_BOMB, "tomorrow", run_after=86400.0)
    assert time.monotonic() - started < 3.0
    assert recorder.ends("tomorrow") == ["on_panic"]
    (record,) = JsonlRescueSink(path).read()
    assert record.due_at is not None
    assert abs(record.due_at - (before + 86400.0)) < 5.0


def _interrupt_main_when(condition: Callable[[], bool]) -> threading.Thread:
    """SIGINT the main thread (KeyboardInterrupt) once ``condition`` holds."""
    main = threading.main_thread().ident
    assert main is not None

    def run() -> None:
        if eventually(condition):
            signal.pthread_kill(main, signal.SIGINT)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_ctrl_c_inside_close_rescues_at_once_then_propagates(recorder, tmp_path):
    assert threading.current_thread() is threading.main_thread()
    original = signal.signal(signal.SIGINT, signal.default_int_handler)
    path = tmp_path / "rescued.jsonl"
    bucket = TaskBucket(
        BucketConfig(life_span=120.0),
        RecordingExecutor(recorder),
        rescue_sink=JsonlRescueSink(path),
    )
    try:
        bucket.fill(TaskType.TIME_BOMB, "later", run_after=60.0)
        interrupter = _interrupt_main_when(lambda: bucket.closed)
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            bucket.close(wait_pending=True, grace=None)  # would wait a minute
        interrupter.join(WAIT)
        assert time.monotonic() - started < 5.0
        assert recorder.ends("later") == ["on_panic"]
        assert sink_ids(path) == ["later"]
    finally:
        signal.signal(signal.SIGINT, original)


def test_ctrl_c_in_join_inside_a_with_block_rescues_at_once(recorder, tmp_path):
    original = signal.signal(signal.SIGINT, signal.default_int_handler)
    path = tmp_path / "rescued.jsonl"
    entered = threading.Event()
    try:
        with pytest.raises(KeyboardInterrupt):  # noqa: SIM117 - the order is the point
            with TaskBucket(
                BucketConfig(life_span=120.0),
                RecordingExecutor(recorder),
                rescue_sink=JsonlRescueSink(path),
            ) as bucket:
                bucket.fill(TaskType.TIME_BOMB, "later", run_after=60.0)
                _interrupt_main_when(entered.is_set)
                entered.set()
                bucket.join()
        assert recorder.ends("later") == ["on_panic"]
        assert sink_ids(path) == ["later"]
    finally:
        signal.signal(signal.SIGINT, original)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_serve_forever_returns_cleanly_on_a_signal_and_rescues(recorder, tmp_path, signum):
    path = tmp_path / "rescued.jsonl"
    bucket = TaskBucket(
        BucketConfig(life_span=120.0, name="jobs"),
        RecordingExecutor(recorder),
        rescue_sink=JsonlRescueSink(path),
    )
    group = TaskBucketGroup({"jobs": bucket}, port=0, host="127.0.0.1", discovery=False)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    main = threading.main_thread().ident
    assert main is not None

    def send() -> None:
        # Once serve_forever() has put its own handler in place.
        if eventually(lambda: signal.getsignal(signum) is not before[signum]):
            signal.pthread_kill(main, signum)

    group.start()
    group.fill("jobs", "later", {"n": 1}, task_type=TaskType.TIME_BOMB, run_after=60.0)
    threading.Thread(target=send, daemon=True).start()
    started = time.monotonic()
    group.serve_forever(grace=1.0)  # returns, no exception
    assert time.monotonic() - started < WAIT
    assert bucket.closed
    assert recorder.ends("later") == ["on_panic"]
    assert sink_ids(path) == ["later"]
    assert {s: signal.getsignal(s) for s in before} == before
    raw = json.loads((path).read_text().splitlines()[0])
    assert raw["id"] == "later"
