"""AsyncTaskBucket end to end on a real loop: fill, drain, rescue, join, close, the errors of
the sync bucket, async hooks on the caller's loop (with objects bound to it), plain hooks on
worker threads, the life span cancelling an async hook, and the loop-lag watchdog."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import pytest
from helpers.waiting import WAIT, wait_until

from gobucket import (
    AsyncTaskBucket,
    BucketClosedError,
    BucketConfig,
    BucketFullError,
    DuplicateTaskError,
    Executor,
    FunctionExecutor,
    InvalidArgumentError,
    TaskNotFoundError,
    TaskState,
    TaskType,
)


def config(**overrides: Any) -> BucketConfig:
    values: dict[str, Any] = {"life_span": 30.0, "max_bucket": 16, "run_after": 20.0}
    values.update(overrides)
    return BucketConfig(**values)


class LoopBound(Executor):
    """Async hooks that use objects made on the test's loop (a Lock, an Event, a Queue)."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.ended: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self.threads: set[int] = set()
        self.panicked: list[str] = []
        # A future of the caller's loop: awaiting it from a task of another loop raises
        # "got Future attached to a different loop".
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.opened.set_result(None)

    async def on_execute(self, ctx: Any, id: str, data: Any) -> None:
        self.threads.add(threading.get_ident())
        await self.opened
        async with self.lock:
            await asyncio.sleep(0)

    async def on_finish(self, ctx: Any, id: str, data: Any) -> None:
        self.threads.add(threading.get_ident())
        await self.ended.put(("finish", id))

    async def on_panic(self, ctx: Any, id: str, data: Any) -> None:
        self.threads.add(threading.get_ident())
        self.panicked.append(id)
        await self.ended.put(("panic", id))


def test_fill_drain_join_and_hooks_on_the_callers_loop() -> None:
    async def scenario() -> None:
        executor = LoopBound()
        here = threading.get_ident()
        async with AsyncTaskBucket(config(), executor) as bucket:
            assert bucket.loop is asyncio.get_running_loop()
            for i in range(5):
                await bucket.fill(TaskType.IMMEDIATE, f"now::{i}", {"i": i})
            await bucket.fill(TaskType.TIME_BOMB, "later", None, run_after=20.0)
            assert "later" in bucket
            await bucket.drain("later")
            assert "later" not in bucket
            ends = [await asyncio.wait_for(executor.ended.get(), WAIT) for _ in range(5)]
            assert sorted(ends) == [("finish", f"now::{i}") for i in range(5)]
            assert await bucket.join(timeout=WAIT)
            stats = bucket.stats()
            assert (stats.filled, stats.finished, stats.drained, stats.alive) == (6, 5, 1, 0)
            assert len(bucket) == 0
        assert executor.threads == {here}  # every async hook ran on this loop's thread
        assert bucket.closed

    asyncio.run(scenario())


def test_errors_are_the_sync_buckets() -> None:
    async def scenario() -> None:
        async with AsyncTaskBucket(config(max_bucket=2), Executor()) as bucket:
            await bucket.fill(TaskType.TIME_BOMB, "a")
            with pytest.raises(DuplicateTaskError):
                await bucket.fill(TaskType.TIME_BOMB, "a")
            await bucket.fill(TaskType.TIME_BOMB, "b")
            with pytest.raises(BucketFullError):
                await bucket.fill(TaskType.TIME_BOMB, "c")
            with pytest.raises(InvalidArgumentError):
                await bucket.fill(TaskType.TIME_BOMB, "", None)
            with pytest.raises(InvalidArgumentError):
                await bucket.fill(TaskType.TIME_BOMB, "d", run_after=-1)
            with pytest.raises(TaskNotFoundError):
                await bucket.drain("nobody")
            assert not await bucket.join(timeout=0.05)
            assert await bucket.close(grace=0) == 2
            with pytest.raises(BucketClosedError):
                await bucket.fill(TaskType.IMMEDIATE, "e")
            assert await bucket.close() == 0  # a second close does nothing

    asyncio.run(scenario())


def test_rescue_and_close_run_async_on_panic_on_the_loop() -> None:
    async def scenario() -> None:
        executor = LoopBound()
        bucket = AsyncTaskBucket(config(), executor)
        for i in range(3):
            await bucket.fill(TaskType.TIME_BOMB, f"bomb::{i}", None)
        assert await bucket.rescue(timeout=WAIT) == 3
        assert sorted(executor.panicked) == [f"bomb::{i}" for i in range(3)]
        assert not bucket.closed  # a rescue is a snapshot: the bucket stays open
        await bucket.fill(TaskType.TIME_BOMB, "bomb::late", None)
        assert await bucket.close(grace=0, timeout=WAIT) == 1
        assert executor.panicked[-1] == "bomb::late"
        assert executor.threads == {threading.get_ident()}

    asyncio.run(scenario())


def test_leaving_the_block_by_an_exception_rescues_at_once() -> None:
    made: list[LoopBound] = []

    async def scenario() -> None:
        made.append(LoopBound())
        async with AsyncTaskBucket(config(), made[0]) as bucket:
            await bucket.fill(TaskType.TIME_BOMB, "pending", None)
            raise KeyError("boom")

    started = time.monotonic()
    with pytest.raises(KeyError):
        asyncio.run(scenario())
    assert made[0].panicked == ["pending"]
    assert time.monotonic() - started < WAIT  # no grace wait for the time bomb


def test_plain_hooks_still_run_on_worker_threads() -> None:
    threads: list[str] = []

    class Plain(Executor):
        def on_execute(self, ctx: Any, id: str, data: Any) -> None:
            threads.append(threading.current_thread().name)

    async def scenario() -> None:
        async with AsyncTaskBucket(config(), Plain()) as bucket:
            await bucket.fill(TaskType.IMMEDIATE, "plain")
            assert await bucket.join(timeout=WAIT)

    asyncio.run(scenario())
    assert len(threads) == 1
    assert threads[0] != threading.current_thread().name
    assert "worker" in threads[0]


def test_an_expiring_task_cancels_its_async_hook_for_real() -> None:
    class Stuck(Executor):
        def __init__(self) -> None:
            self.cancelled = asyncio.Event()
            self.exhausted: list[str] = []

        async def on_execute(self, ctx: Any, id: str, data: Any) -> None:
            try:
                await asyncio.Event().wait()  # never set
            except asyncio.CancelledError:
                self.cancelled.set()
                raise

        async def on_task_exhausted(self, ctx: Any, id: str, data: Any) -> None:
            self.exhausted.append(id)

    async def scenario() -> None:
        executor = Stuck()
        async with AsyncTaskBucket(config(life_span=0.3), executor) as bucket:
            await bucket.fill(TaskType.IMMEDIATE, "stuck")
            await asyncio.wait_for(executor.cancelled.wait(), WAIT)
            assert await bucket.join(timeout=WAIT)
            assert executor.exhausted == ["stuck"]
            assert bucket.stats().exhausted == 1

    asyncio.run(scenario())


def test_a_bucket_made_outside_a_loop_binds_to_the_loop_that_opens_it() -> None:
    seen: list[asyncio.AbstractEventLoop] = []

    class Where(Executor):
        async def on_execute(self, ctx: Any, id: str, data: Any) -> None:
            seen.append(asyncio.get_running_loop())

    bucket = AsyncTaskBucket(config(), Where())
    assert bucket.loop is None

    async def scenario() -> asyncio.AbstractEventLoop:
        async with bucket:
            await bucket.fill(TaskType.IMMEDIATE, "x")
            assert await bucket.join(timeout=WAIT)
        return asyncio.get_running_loop()

    loop = asyncio.run(scenario())
    assert seen == [loop]


def test_the_watchdog_names_an_async_hook_that_blocks_the_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="gobucket.aio")

    class Sleepy(Executor):
        async def on_execute(self, ctx: Any, id: str, data: Any) -> None:
            time.sleep(0.5)  # blocks the loop: the mistake the watchdog is there for

    async def scenario() -> None:
        async with AsyncTaskBucket(config(), Sleepy(), loop_lag_warning=0.1) as bucket:
            assert bucket.watchdog is not None
            await bucket.fill(TaskType.IMMEDIATE, "sleepy::1")
            assert await bucket.join(timeout=WAIT)

    asyncio.run(scenario())

    def about_the_hook() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.name == "gobucket.aio"
            and r.levelno == logging.WARNING
            and "Sleepy.on_execute of task 'sleepy::1' in bucket 'default'" in r.getMessage()
        ]

    messages = wait_until(lambda: len(about_the_hook()) >= 2 and about_the_hook())
    assert "has been blocked" in messages[0]  # logged while the loop was still held
    assert "ran again" in messages[1]
    held = float(messages[1].split("blocked for ")[1].split(" s")[0])
    assert 0.3 <= held <= 5.0


def test_a_hook_that_awaits_longer_than_the_threshold_is_not_blamed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="gobucket.aio")

    class Polite(Executor):
        async def on_execute(self, ctx: Any, id: str, data: Any) -> None:
            await asyncio.sleep(0.4)  # four thresholds, but the loop is free meanwhile

    async def scenario() -> None:
        async with AsyncTaskBucket(config(), Polite(), loop_lag_warning=0.1) as bucket:
            await bucket.fill(TaskType.IMMEDIATE, "polite")
            assert await bucket.join(timeout=WAIT)
            assert bucket.stats().finished == 1

    asyncio.run(scenario())
    # (a loaded host may stall the whole process now and then; never because of this hook)
    assert not [r for r in caplog.records if "Polite" in r.getMessage()]


def test_status_answers_for_a_live_task_and_none_after_a_drain() -> None:
    async def main() -> None:
        async with AsyncTaskBucket(
            BucketConfig(name="status", run_after=60.0, life_span=120.0), FunctionExecutor()
        ) as bucket:
            await bucket.fill(TaskType.TIME_BOMB, "later")
            status = bucket.status("later")
            assert status is not None
            assert status.state is TaskState.WAITING
            assert 50.0 < status.due_in <= 60.0
            assert status.attempt == 0
            await bucket.drain("later")
            assert bucket.status("later") is None

    asyncio.run(main())
