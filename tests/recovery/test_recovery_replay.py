"""gobucket.replay(sink, bucket_or_group): fill rescued tasks back, at least once."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import msgpack
import pytest
from helpers.cluster import close_all as shared_close_all
from helpers.recording import Recorder, RecordingExecutor
from helpers.waiting import WAIT

from gobucket import (
    BucketConfig,
    Executor,
    JsonlRescueSink,
    RedisRescueSink,
    RescuedTask,
    TaskBucket,
    TaskBucketGroup,
    TaskType,
    replay,
)

EPS = 0.002  # float rounding of the 1 ms timer wheel; timers never fire early
LATE = 0.05  # a replayed time bomb fires within 50 ms of its original due time


def close_all(buckets: list[TaskBucket]) -> None:
    """Close every bucket without waiting for its tasks."""
    shared_close_all(buckets, WAIT, grace=0)


@pytest.fixture
def make_bucket() -> Iterator[Callable[..., TaskBucket]]:
    buckets: list[TaskBucket] = []

    def make(executor: Executor | None = None, **config: Any) -> TaskBucket:
        config.setdefault("name", "mail")
        config.setdefault("life_span", 60.0)
        bucket = TaskBucket(BucketConfig(**config), executor or Executor())
        buckets.append(bucket)
        return bucket

    yield make
    close_all(buckets)


def bombs(n: int, bucket: str = "mail", prefix: str = "t", wait: float = 50.0) -> list[RescuedTask]:
    """Rescued time bombs that still wait ``wait`` seconds (they stay in the bucket)."""
    return [
        RescuedTask(bucket, f"{prefix}{i}", TaskType.TIME_BOMB, {"i": i}, 55.0, wait)
        for i in range(n)
    ]


def ids(tasks: Iterable[RescuedTask]) -> list[str]:
    return sorted(t.task_id for t in tasks)


def test_replay_fills_every_task_back_and_empties_the_sink(make_bucket, tmp_path):
    sink = JsonlRescueSink(tmp_path / "r.jsonl")
    sink.write(bombs(20))
    bucket = make_bucket(max_bucket=100)
    assert replay(sink, bucket) == 20
    assert sink.read() == []
    assert len(bucket) == 20
    assert all(f"t{i}" in bucket for i in range(20))
    assert replay(sink, bucket) == 0  # nothing left


def test_replayed_tasks_keep_their_data_type_and_wall_clock_deadline(make_bucket, tmp_path):
    recorder = Recorder()
    sink = JsonlRescueSink(tmp_path / "r.jsonl")
    data = {"blob": b"\x00\x01", "nested": [1, {"x": None}]}
    rescued = [
        RescuedTask("mail", "now", TaskType.IMMEDIATE, data, remaining_life=7.5),
        RescuedTask("mail", "later", TaskType.TIME_BOMB, "bomb", 9.0, remaining_wait=0.3),
        # A time bomb rescued after it started (e.g. waiting for a retry): due now.
        RescuedTask("mail", "started", TaskType.TIME_BOMB, 3, 6.0, remaining_wait=0.0),
    ]
    sink.write(rescued)
    bucket = make_bucket(RecordingExecutor(recorder), life_span=60.0, run_after=40.0)
    assert replay(sink, bucket) == 3
    for task_id in ("now", "later", "started"):
        assert recorder.wait_hook("on_finish", task_id)
    assert bucket.join(WAIT)
    now = recorder.first("on_execute", "now")
    assert now[2] == data
    assert now[4].task_type is TaskType.IMMEDIATE
    assert recorder.first("on_execute", "later")[2] == "bomb"
    assert recorder.first("on_execute", "later")[4].task_type is TaskType.TIME_BOMB
    assert recorder.first("on_execute", "started")[4].task_type is TaskType.IMMEDIATE
    # Each life span still ends at its original wall-clock deadline: what the task
    # got is its remaining life less the time between its rescue and its fill.
    for task in rescued:
        ctx = recorder.first("on_execute", task.task_id)[4]
        life = ctx.deadline - ctx.filled_at
        since_rescue = time.time() - task.rescued_at
        assert task.remaining_life - since_rescue <= life <= task.remaining_life, task.task_id


def ran_at_wall_clock(recorder: Recorder) -> tuple[RecordingExecutor, dict[str, float]]:
    """An executor noting the wall-clock time each task's on_execute started."""
    ran: dict[str, float] = {}

    def execute(ctx: Any, id: str, data: Any) -> None:
        ran[id] = time.time()

    return RecordingExecutor(recorder, execute=execute), ran


def test_a_time_bomb_replays_at_its_original_due_time(make_bucket, tmp_path):
    recorder = Recorder()
    executor, ran = ran_at_wall_clock(recorder)
    sink = JsonlRescueSink(tmp_path / "r.jsonl")
    task = RescuedTask("mail", "b", TaskType.TIME_BOMB, None, 10.0, remaining_wait=0.4)
    sink.write([task])
    bucket = make_bucket(executor, run_after=30.0)
    assert replay(sink, bucket) == 1
    assert recorder.wait_hook("on_finish", "b")
    assert task.due_at is not None
    assert ran["b"] >= task.due_at - EPS  # never early ...
    assert ran["b"] - task.due_at < LATE  # ... and on time


def test_replay_after_5s_of_downtime_fires_within_50ms_of_the_original_due_time(
    make_bucket, tmp_path
):
    """Rescued 5 s ago with 6 s left to wait: due 1 s from now, not 6 s from now."""
    recorder = Recorder()
    executor, ran = ran_at_wall_clock(recorder)
    rescued_at = time.time() - 5.0
    task = RescuedTask("mail", "bomb", TaskType.TIME_BOMB, {"n": 1}, 60.0, 6.0, rescued_at)
    sink = JsonlRescueSink(tmp_path / "r.jsonl")
    sink.write([task])
    bucket = make_bucket(executor, run_after=30.0)
    assert replay(JsonlRescueSink(sink.path), bucket) == 1
    assert recorder.wait_hook("on_finish", "bomb")
    ctx = recorder.first("on_execute", "bomb")[4]
    assert ctx.task_type is TaskType.TIME_BOMB
    assert task.due_at == rescued_at + 6.0
    lateness = ran["bomb"] - task.due_at
    assert -EPS <= lateness < LATE, lateness


def test_a_task_due_during_the_downtime_runs_at_once(make_bucket, tmp_path):
    recorder = Recorder()
    executor, ran = ran_at_wall_clock(recorder)
    rescued_at = time.time() - 5.0  # it had 2 s to wait: due 3 s ago
    sink = JsonlRescueSink(tmp_path / "r.jsonl")
    sink.write([RescuedTask("mail", "late", TaskType.TIME_BOMB, "x", 60.0, 2.0, rescued_at)])
    bucket = make_bucket(executor, run_after=30.0)
    start = time.time()
    assert replay(sink, bucket) == 1
    assert recorder.wait_hook("on_finish", "late")
    ctx = recorder.first("on_execute", "late")[4]
    assert ctx.task_type is TaskType.IMMEDIATE
    assert ran["late"] - start < 1.0  # at once, not 2 s (its old remaining wait) later
    assert ctx.deadline - ctx.filled_at <= 55.0  # its life still ends at the old deadline


def test_a_task_whose_life_span_ran_out_while_down_ends_as_exhausted_at_once(make_bucket, tmp_path):
    recorder = Recorder()
    long_ago = time.time() - 10.0
    sink = JsonlRescueSink(tmp_path / "r.jsonl")
    sink.write(
        [
            # Its 5 s of life ran out 5 s ago, waiting or not.
            RescuedTask("mail", "dead-bomb", TaskType.TIME_BOMB, {"d": 1}, 5.0, 2.0, long_ago),
            RescuedTask("mail", "dead-now", TaskType.IMMEDIATE, [b"\x01"], 5.0, 0.0, long_ago),
            # Hand-made: its deadline comes before its due time; it could never run.
            RescuedTask(
                "mail",
                "never",
                TaskType.TIME_BOMB,
                None,
                1.0,
                0.0,
                due_at=time.time() + 30,
                deadline_at=time.time() + 20,
            ),
            RescuedTask("mail", "alive", TaskType.TIME_BOMB, None, 60.0, 50.0),
        ]
    )
    bucket = make_bucket(RecordingExecutor(recorder), run_after=30.0)
    assert replay(sink, bucket) == 4  # delivered: nothing dropped silently
    assert sink.read() == []
    for task_id, data in (("dead-bomb", {"d": 1}), ("dead-now", [b"\x01"]), ("never", None)):
        assert recorder.wait_hook("on_task_exhausted", task_id), task_id
        assert recorder.hooks(task_id) == ["on_task_exhausted"], task_id
        assert recorder.first("on_task_exhausted", task_id)[2] == data
    assert "alive" in bucket and recorder.hooks("alive") == []


def test_an_old_format_record_replays_on_its_wall_clock_schedule(make_bucket, tmp_path):
    """A v1 line (relative times, data base64 msgpack) rescued 5 s ago, 5.8 s to wait."""
    recorder = Recorder()
    executor, ran = ran_at_wall_clock(recorder)
    rescued_at = time.time() - 5.0
    data = {"i": 1, "blob": b"\x00"}
    line = {
        "bucket": "mail",
        "id": "v1",
        "type": "time_bomb",
        "data": base64.b64encode(msgpack.packb(data, use_bin_type=True)).decode(),
        "remaining_life": 30.0,
        "remaining_wait": 5.8,
        "rescued_at": rescued_at,
        "key": "old",
    }
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(line) + "\n")
    bucket = make_bucket(executor, run_after=30.0)
    assert replay(JsonlRescueSink(path), bucket) == 1
    assert recorder.wait_hook("on_finish", "v1")
    assert recorder.first("on_execute", "v1")[2] == data
    assert -EPS <= ran["v1"] - (rescued_at + 5.8) < LATE


def test_a_full_target_leaves_the_rest_stored_and_replaying_again_continues(make_bucket, tmp_path):
    sink = JsonlRescueSink(tmp_path / "r.jsonl")
    sink.write(bombs(10))
    bucket = make_bucket(max_bucket=4)
    delivered: list[str] = []

    def take_all() -> None:
        for task in bombs(10):
            if task.task_id in bucket:
                delivered.append(task.task_id)
                bucket.drain(task.task_id)

    assert replay(sink, bucket) == 4
    assert len(sink.read()) == 6
    assert replay(sink, bucket) == 0  # still full: nothing lost, nothing removed
    assert len(sink.read()) == 6
    take_all()
    assert replay(sink, bucket) == 4
    assert len(sink.read()) == 2
    take_all()
    assert replay(sink, bucket) == 2
    assert sink.read() == []
    take_all()
    assert sorted(delivered) == ids(bombs(10))  # every task exactly once


def test_each_task_is_removed_from_the_sink_only_once_the_target_accepted_it(make_bucket, tmp_path):
    bucket = make_bucket(max_bucket=1000)

    class Watching(JsonlRescueSink):
        def __init__(self, path: Any) -> None:
            super().__init__(path)
            self.removed_while_absent: list[str] = []
            self.removed: list[str] = []

        def remove(self, tasks: Iterable[RescuedTask]) -> None:
            tasks = list(tasks)
            for task in tasks:
                self.removed.append(task.task_id)
                if task.task_id not in bucket:
                    self.removed_while_absent.append(task.task_id)
            super().remove(tasks)

    sink = Watching(tmp_path / "r.jsonl")
    sink.write(bombs(300))  # more than one removal batch
    assert replay(sink, bucket) == 300
    assert sink.removed_while_absent == []
    assert sorted(sink.removed) == ids(bombs(300))
    assert sink.read() == []


def test_a_crash_during_replay_loses_nothing(make_bucket, tmp_path):
    class CrashingBucket(TaskBucket):
        """Dies (not a gobucket error) on its 5th fill, like a process going down."""

        fills = 0

        def fill(self, *args: Any, **kwargs: Any) -> None:
            self.fills += 1
            if self.fills == 5:
                raise RuntimeError("crash")
            super().fill(*args, **kwargs)

    sink = JsonlRescueSink(tmp_path / "r.jsonl")
    sink.write(bombs(10))
    crashing = CrashingBucket(BucketConfig(name="mail", life_span=60.0), Executor())
    try:
        with pytest.raises(RuntimeError, match="crash"):
            replay(sink, crashing)
        accepted = [t.task_id for t in bombs(10) if t.task_id in crashing]
        assert len(accepted) == 4
    finally:
        close_all([crashing])
    left = ids(sink.read())
    assert sorted(accepted + left) == ids(bombs(10))  # each either accepted or still stored
    fresh = make_bucket()
    assert replay(sink, fresh) == 6
    assert sink.read() == []


def test_delivery_is_at_least_once_when_the_sink_cannot_forget(make_bucket, tmp_path):
    class Unforgetting(JsonlRescueSink):
        def remove(self, tasks: Iterable[RescuedTask]) -> None:
            raise OSError("disk gone")

    sink = Unforgetting(tmp_path / "r.jsonl")
    sink.write(bombs(3))
    first = make_bucket()
    with pytest.raises(OSError):
        replay(sink, first)
    assert len(first) == 3  # filled ...
    assert ids(sink.read()) == ids(bombs(3))  # ... and still stored
    second = make_bucket()
    assert replay(JsonlRescueSink(sink.path), second) == 3  # so delivered again
    assert all(f"t{i}" in second for i in range(3))


def test_a_task_whose_id_is_alive_counts_as_delivered_but_not_as_filled(make_bucket, tmp_path):
    bucket = make_bucket()
    bucket.fill(TaskType.TIME_BOMB, "t1", "original", run_after=50.0)
    sink = JsonlRescueSink(tmp_path / "r.jsonl")
    sink.write(bombs(3))
    assert replay(sink, bucket) == 2
    assert sink.read() == []
    assert len(bucket) == 3


def test_tasks_of_another_bucket_are_left_in_the_sink(make_bucket, tmp_path):
    sink = JsonlRescueSink(tmp_path / "r.jsonl")
    sink.write(bombs(2, bucket="mail", prefix="m") + bombs(3, bucket="sms", prefix="s"))
    mail = make_bucket(name="mail")
    assert replay(sink, mail) == 2
    assert ids(sink.read()) == ["s0", "s1", "s2"]
    sms = make_bucket(name="sms")
    assert replay(sink, sms) == 3
    assert sink.read() == []
    assert len(mail) == 2 and len(sms) == 3


def test_replay_of_an_empty_sink_fills_nothing(make_bucket, tmp_path):
    assert replay(JsonlRescueSink(tmp_path / "none.jsonl"), make_bucket()) == 0


def test_replay_into_a_group_fills_each_task_into_its_bucket(make_bucket, tmp_path):
    mail = make_bucket(name="mail", max_bucket=100)
    sms = make_bucket(name="sms", max_bucket=2)
    group = TaskBucketGroup(
        {"mail": mail, "sms": sms},
        port=0,
        host="127.0.0.1",
        secret="s3cret",
        discovery=False,
    )
    group.start()
    try:
        sink = JsonlRescueSink(tmp_path / "r.jsonl")
        sink.write(bombs(3, bucket="mail", prefix="m") + bombs(4, bucket="sms", prefix="s"))
        # sms holds 2: the other 2 have no room (and no peer) and stay stored.
        assert replay(sink, group) == 5
        assert all(f"m{i}" in mail for i in range(3))
        assert len(sms) == 2
        left = ids(sink.read())
        assert len(left) == 2 and all(task_id.startswith("s") for task_id in left)
        assert not any(task_id in sms for task_id in left)
        for task_id in ("s0", "s1", "s2", "s3"):
            if task_id in sms:
                sms.drain(task_id)
        assert replay(sink, group) == 2
        assert sink.read() == []
        assert sorted(t for t in ("s0", "s1", "s2", "s3") if t in sms) == left
    finally:
        stop_in_time(group)


def test_replay_into_a_group_ends_an_expired_task_in_its_own_bucket(make_bucket, tmp_path):
    recorder = Recorder()
    mail = make_bucket(name="mail")
    sms = make_bucket(RecordingExecutor(recorder), name="sms")
    group = TaskBucketGroup(
        {"mail": mail, "sms": sms}, port=0, host="127.0.0.1", secret="s3cret", discovery=False
    )
    group.start()
    try:
        sink = JsonlRescueSink(tmp_path / "r.jsonl")
        expired = RescuedTask("sms", "gone", TaskType.IMMEDIATE, "d", 1.0, 0.0, time.time() - 9)
        sink.write([expired, *bombs(2, bucket="sms", prefix="s")])
        assert replay(sink, group) == 3
        assert recorder.wait_hook("on_task_exhausted", "gone")
        assert recorder.hooks("gone") == ["on_task_exhausted"]
        assert "s0" in sms and "s1" in sms and len(mail) == 0
        assert sink.read() == []
    finally:
        stop_in_time(group)


def test_replay_from_redis(make_bucket, redis_url):
    sink = RedisRescueSink(redis_url, "rescued")
    try:
        sink.write(bombs(25))
        bucket = make_bucket(max_bucket=10)
        assert replay(sink, bucket) == 10
        assert len(sink.read()) == 15
        other = make_bucket(max_bucket=100)
        assert replay(sink, other) == 15
        assert sink.read() == []
        present = [t.task_id for t in bombs(25) if t.task_id in bucket or t.task_id in other]
        assert sorted(present) == ids(bombs(25))
    finally:
        sink.close()


class ListSink:
    """The smallest RescueSink: the protocol is all replay() needs."""

    def __init__(self, tasks: Sequence[RescuedTask]) -> None:
        self.tasks = [
            RescuedTask(
                t.bucket,
                t.task_id,
                t.task_type,
                t.data,
                t.remaining_life,
                t.remaining_wait,
                key=str(n),
            )
            for n, t in enumerate(tasks)
        ]

    def write(self, tasks: Sequence[RescuedTask]) -> None:  # pragma: no cover - unused
        self.tasks.extend(tasks)

    def read(self) -> list[RescuedTask]:
        return list(self.tasks)

    def remove(self, tasks: Iterable[RescuedTask]) -> None:
        keys = {t.key for t in tasks}
        self.tasks = [t for t in self.tasks if t.key not in keys]


def test_replay_works_with_any_sink_following_the_protocol(make_bucket):
    sink = ListSink(bombs(5))
    bucket = make_bucket()
    assert replay(sink, bucket) == 5
    assert sink.tasks == []


def stop_in_time(group: TaskBucketGroup) -> None:
    """Stop ``group`` on another thread and fail (not hang) if that takes over WAIT."""
    stopper = threading.Thread(target=group.stop, daemon=True)
    stopper.start()
    stopper.join(WAIT)
    assert not stopper.is_alive(), "group.stop() hung"
