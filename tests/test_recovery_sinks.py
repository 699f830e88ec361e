"""Rescue sinks: JsonlRescueSink (append, fsync, torn last line) and RedisRescueSink (real
redis-server), and the RescuedTask record they store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import gobucket
from gobucket import JsonlRescueSink, RedisRescueSink, RescuedTask, TaskType
from tests.redis_fixture import redis_url  # noqa: F401  (a fixture)

CHILD = Path(__file__).parent / "nodes" / "rescue_child.py"
WAIT = 20.0

DATA = [
    {"i": 1, "blob": b"\x00\xffbytes", "nested": {"list": [1, 2.5, None, True, "x"]}},
    "plain string ünïcode",
    None,
    [1, [2, [3]]],
    12345678901234,
    b"raw bytes",
]


def records(bucket: str = "mail", prefix: str = "t", n: int = len(DATA)) -> list[RescuedTask]:
    out = []
    for i in range(n):
        bomb = i % 2 == 0
        out.append(
            RescuedTask(
                bucket,
                f"{prefix}{i}",
                TaskType.TIME_BOMB if bomb else TaskType.IMMEDIATE,
                DATA[i % len(DATA)],
                remaining_life=10.0 + i,
                remaining_wait=(1.5 + i) if bomb else 0.0,
            )
        )
    return out


def same_task(a: RescuedTask, b: RescuedTask) -> bool:
    return (
        a.bucket == b.bucket
        and a.task_id == b.task_id
        and a.task_type is b.task_type
        and a.data == b.data
        and a.remaining_life == b.remaining_life
        and a.remaining_wait == b.remaining_wait
        and a.rescued_at == b.rescued_at
    )


def test_sinks_are_importable_from_gobucket():
    assert gobucket.JsonlRescueSink is JsonlRescueSink
    assert gobucket.RedisRescueSink is RedisRescueSink
    assert gobucket.RescuedTask is RescuedTask
    assert callable(gobucket.replay)


def test_rescued_task_round_trips_through_its_dict():
    for task in records():
        raw = task.to_dict()
        json.dumps(raw)  # JSON-safe, bytes included
        again = RescuedTask.from_dict(raw, key="k")
        assert same_task(task, again)
        assert again.key == "k"


# JsonlRescueSink -------------------------------------------------------------------------


def test_jsonl_write_appends_and_read_returns_every_field(tmp_path):
    path = tmp_path / "rescued.jsonl"
    sink = JsonlRescueSink(path)
    first, second = records(prefix="a"), records(prefix="b", n=3)
    sink.write(first)
    sink.write(second)  # appended, not overwritten
    stored = sink.read()
    assert len(stored) == len(first) + len(second)
    for want, got in zip(first + second, stored, strict=True):
        assert same_task(want, got), (want, got)
    keys = [t.key for t in stored]
    assert all(keys) and len(set(keys)) == len(keys)
    lines = path.read_text().splitlines()
    assert len(lines) == len(stored)
    for line, task in zip(lines, first + second, strict=True):
        raw = json.loads(line)
        assert raw["bucket"] == "mail"
        assert raw["id"] == task.task_id
        assert raw["type"] == task.task_type.value
        assert raw["remaining_life"] == task.remaining_life
        assert "data" in raw


def test_jsonl_read_of_a_missing_file_is_empty_and_an_empty_write_makes_no_file(tmp_path):
    sink = JsonlRescueSink(tmp_path / "nothing.jsonl")
    assert sink.read() == []
    sink.write([])
    assert not (tmp_path / "nothing.jsonl").exists()
    sink.remove([])  # nothing to do


def test_jsonl_write_fsyncs_the_file_before_returning(tmp_path, monkeypatch):
    path = tmp_path / "rescued.jsonl"
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.fstat(fd).st_ino)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    JsonlRescueSink(path).write(records())
    assert path.stat().st_ino in synced


def test_jsonl_torn_last_line_is_skipped_and_later_writes_still_work(tmp_path):
    path = tmp_path / "rescued.jsonl"
    sink = JsonlRescueSink(path)
    sink.write(records(prefix="a", n=3))
    # A crash in the middle of the last record's write: cut the file inside its line.
    raw = path.read_bytes()
    last_start = raw.rstrip(b"\n").rfind(b"\n") + 1
    path.write_bytes(raw[: last_start + (len(raw) - last_start) // 2])
    assert [t.task_id for t in sink.read()] == ["a0", "a1"]
    later = records(prefix="b", n=2)
    sink.write(later)
    assert [t.task_id for t in sink.read()] == ["a0", "a1", "b0", "b1"]
    # A fresh sink on the same file (the next process) reads the same.
    again = JsonlRescueSink(path)
    stored = again.read()
    assert [t.task_id for t in stored] == ["a0", "a1", "b0", "b1"]
    assert same_task(stored[2], later[0]) and same_task(stored[3], later[1])
    # remove() keeps every complete record but the removed one.
    again.remove([stored[0]])
    assert [t.task_id for t in again.read()] == ["a1", "b0", "b1"]


def test_jsonl_garbage_without_newline_does_not_swallow_the_next_record(tmp_path):
    path = tmp_path / "rescued.jsonl"
    sink = JsonlRescueSink(path)
    sink.write(records(prefix="a", n=1))
    with open(path, "ab") as handle:
        handle.write(b'{"bucket":"mail","id":"torn","ty')
    sink.write(records(prefix="b", n=1))
    assert [t.task_id for t in sink.read()] == ["a0", "b0"]


def test_jsonl_remove_forgets_only_the_given_tasks_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "rescued.jsonl"
    sink = JsonlRescueSink(path)
    sink.write(records(prefix="a", n=5))
    stored = sink.read()
    sink.remove([stored[1], stored[3]])
    left = sink.read()
    assert [t.task_id for t in left] == ["a0", "a2", "a4"]
    assert [t.key for t in left] == [stored[0].key, stored[2].key, stored[4].key]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rescued.jsonl"]
    # Removing already-removed tasks is harmless.
    sink.remove([stored[1]])
    assert [t.task_id for t in sink.read()] == ["a0", "a2", "a4"]


def test_jsonl_the_same_id_written_twice_is_stored_twice_with_distinct_keys(tmp_path):
    sink = JsonlRescueSink(tmp_path / "r.jsonl")
    sink.write(records(prefix="same", n=1))
    sink.write(records(prefix="same", n=1))
    stored = sink.read()
    assert [t.task_id for t in stored] == ["same0", "same0"]
    sink.remove([stored[0]])
    assert [t.key for t in sink.read()] == [stored[1].key]


def test_jsonl_concurrent_writers_lose_nothing(tmp_path):
    sink = JsonlRescueSink(tmp_path / "r.jsonl")
    start = threading.Barrier(6)
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        try:
            start.wait(WAIT)
            for k in range(20):
                sink.write(records(prefix=f"w{w}-{k}-", n=3))
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert not errors
    ids = [t.task_id for t in sink.read()]
    assert len(ids) == 6 * 20 * 3
    assert len(set(ids)) == len(ids)


@pytest.mark.slow
def test_jsonl_survives_a_process_killed_in_the_middle_of_writing(tmp_path):
    path = tmp_path / "crash.jsonl"
    batch = 200
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), "write-loop", "--jsonl", str(path), "--count", str(batch)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    acked = -1
    watchdog = threading.Timer(WAIT, proc.kill)  # bounds the blocking reads below
    watchdog.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # ends at EOF if the child dies early
            acked = int(line.split()[1])
            if acked >= 15:
                break
        assert acked >= 15, "the writer died early"
        proc.send_signal(signal.SIGKILL)  # while it keeps writing
        proc.wait(WAIT)
        for line in proc.stdout:  # batches acknowledged before the kill
            acked = max(acked, int(line.split()[1]))
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
        proc.wait(WAIT)
        if proc.stdout is not None:
            proc.stdout.close()
    sink = JsonlRescueSink(path)
    stored = sink.read()
    ids = {t.task_id for t in stored}
    assert len(ids) == len(stored)  # nothing doubled
    # Every acknowledged (fsynced) batch is there in full.
    for k in range(acked + 1):
        assert {f"w{k}-{n}" for n in range(batch)} <= ids, k
    # At most the batch in flight is partial; nothing beyond it exists.
    assert len(stored) <= (acked + 2) * batch
    # The file still takes writes, and they read back.
    sink.write(records(prefix="after", n=2))
    assert [t.task_id for t in sink.read()[-2:]] == ["after0", "after1"]


# RedisRescueSink --------------------------------------------------------------------------


def test_redis_sink_stores_every_field_in_a_hash(redis_url):  # noqa: F811
    import redis

    sink = RedisRescueSink(redis_url, "rescued:test")
    client = redis.Redis.from_url(redis_url)
    try:
        assert sink.read() == []
        first, second = records(prefix="a"), records(prefix="b", n=2)
        sink.write(first)
        sink.write(second)
        sink.write([])
        assert client.hlen("rescued:test") == len(first) + len(second)
        stored = {t.task_id: t for t in sink.read()}
        assert set(stored) == {t.task_id for t in first + second}
        for want in first + second:
            assert same_task(want, stored[want.task_id])
            assert stored[want.task_id].key
        # What is in Redis: one JSON record per field, with the documented fields.
        for value in client.hvals("rescued:test"):
            raw = json.loads(value)
            assert {"bucket", "id", "type", "data", "remaining_life"} <= set(raw)
    finally:
        client.close()
        sink.close()


def test_redis_sink_remove_forgets_only_the_given_tasks_and_keys_are_separate(
    redis_url,  # noqa: F811
):
    a = RedisRescueSink(redis_url, "rescued:a")
    b = RedisRescueSink(redis_url, "rescued:b")
    try:
        a.write(records(prefix="a", n=4))
        b.write(records(prefix="b", n=2))
        stored = sorted(a.read(), key=lambda t: t.task_id)
        a.remove([stored[0], stored[2]])
        a.remove([])
        assert sorted(t.task_id for t in a.read()) == ["a1", "a3"]
        assert sorted(t.task_id for t in b.read()) == ["b0", "b1"]
        # A second client on the same key (the next process) sees the same.
        again = RedisRescueSink(redis_url, "rescued:a")
        try:
            assert sorted(t.task_id for t in again.read()) == ["a1", "a3"]
        finally:
            again.close()
    finally:
        a.close()
        b.close()


def test_redis_sink_skips_an_invalid_record(redis_url):  # noqa: F811
    import redis

    sink = RedisRescueSink(redis_url, "rescued:bad")
    client = redis.Redis.from_url(redis_url)
    try:
        sink.write(records(prefix="ok", n=1))
        client.hset("rescued:bad", "junk", "{not json")
        assert [t.task_id for t in sink.read()] == ["ok0"]
    finally:
        client.close()
        sink.close()
