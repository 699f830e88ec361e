"""gobucket.replay(sink, bucket_or_group): fill rescued tasks back, at least once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import pytest
from conftest import WAIT, Recorder, RecordingExecutor
from conftest import close_all as shared_close_all

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
from tests.redis_fixture import redis_url  # noqa: F401  (a fixture)

EPS = 0.002  # float rounding of the 1 ms timer wheel; timers never fire early


def close_all(buckets: list[TaskBucket]) -> None:
    """Close every bucket without waiting for its tasks."""
    shared_close_all(buckets, WAIT, wait=False)


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


def test_replayed_tasks_keep_their_data_type_wait_and_remaining_life(make_bucket, tmp_path):
    recorder = Recorder()
    sink = JsonlRescueSink(tmp_path / "r.jsonl")
    data = {"blob": b"\x00\x01", "nested": [1, {"x": None}]}
    sink.write(
        [
            RescuedTask("mail", "now", TaskType.IMMEDIATE, data, remaining_life=7.5),
            RescuedTask("mail", "later", TaskType.TIME_BOMB, "bomb", 9.0, remaining_wait=0.3),
            # A time bomb rescued after it started (e.g. waiting for a retry): due now.
            RescuedTask("mail", "started", TaskType.TIME_BOMB, 3, 6.0, remaining_wait=0.0),
        ]
    )
    bucket = make_bucket(RecordingExecutor(recorder), life_span=60.0, run_after=40.0)
    assert replay(sink, bucket) == 3
    for task_id in ("now", "later", "started"):
        assert recorder.wait_hook("on_finish", task_id)
    assert bucket.join(WAIT)
    now = recorder.first("on_execute", "now")
    assert now[2] == data
    assert now[4].task_type is TaskType.IMMEDIATE
    assert now[4].deadline - now[4].filled_at == pytest.approx(7.5, abs=1e-6)
    later = recorder.first("on_execute", "later")
    assert later[2] == "bomb"
    assert later[4].task_type is TaskType.TIME_BOMB
    assert later[4].deadline - later[4].filled_at == pytest.approx(9.0, abs=1e-6)
    started_ctx = recorder.first("on_execute", "started")[4]
    assert started_ctx.task_type is TaskType.IMMEDIATE
    assert started_ctx.deadline - started_ctx.filled_at == pytest.approx(6.0, abs=1e-6)


def test_a_time_bomb_replays_with_its_remaining_wait(make_bucket, tmp_path):
    ran_at: list[float] = []
    done = threading.Event()

    def execute(ctx, id, data):
        ran_at.append(time.monotonic())
        done.set()

    sink = JsonlRescueSink(tmp_path / "r.jsonl")
    sink.write([RescuedTask("mail", "b", TaskType.TIME_BOMB, None, 10.0, remaining_wait=0.4)])
    bucket = make_bucket(RecordingExecutor(Recorder(), execute=execute), run_after=30.0)
    before = time.monotonic()
    assert replay(sink, bucket) == 1
    assert done.wait(WAIT)
    assert ran_at[0] - before >= 0.4 - EPS


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
        stopper = threading.Thread(target=group.stop, daemon=True)
        stopper.start()
        stopper.join(WAIT)
        assert not stopper.is_alive(), "group.stop() hung"


def test_replay_from_redis(make_bucket, redis_url):  # noqa: F811
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
