"""AsyncTaskBucket: a :class:`~gobucket.TaskBucket` for asyncio code (it forwards to one)."""

from __future__ import annotations

import asyncio
import logging
import os
from datetime import timedelta
from types import TracebackType
from typing import Any, Self

import pykka

from gobucket.actors import messages as m
from gobucket.actors.runtime import ActorRuntime
from gobucket.aio._bridge import ask_soon
from gobucket.aio.watchdog import DEFAULT_LAG_WARNING, LoopWatchdog, unwatch_loop, watch_loop
from gobucket.bucket import TaskBucket
from gobucket.config import BucketConfig, Duration, TaskType, to_seconds, validate_task_id
from gobucket.errors import GoBucketError, TaskNotFoundError
from gobucket.executors.async_ import AsyncHookRunner
from gobucket.executors.base import Executor
from gobucket.recovery.sinks import JsonlRescueSink, RescueSink
from gobucket.types import BucketStats, TaskStatus

__all__ = ["AsyncTaskBucket"]

logger = logging.getLogger("gobucket")


class AsyncTaskBucket:
    """A :class:`~gobucket.TaskBucket` to use from asyncio code; open it inside a running loop.

    Example::

        async with AsyncTaskBucket(config, Reminders()) as bucket:
            await bucket.fill(TaskType.TIME_BOMB, "remind::42", {"to": "ann"}, run_after=30)
            await bucket.drain("remind::42")
            await bucket.join(timeout=10)

    It forwards to a :class:`~gobucket.TaskBucket` (:attr:`sync`): same
    arguments, same semantics, same errors; only the waiting differs. Nothing
    here blocks the loop: fills, drains and joins are asked of the bucket's
    actor with a future that calls back into the loop, and the calls that
    really wait on threads (:meth:`rescue`, :meth:`close`, which wait for
    ``on_panic`` calls and write the rescue sink) run in
    :func:`asyncio.to_thread`.

    Hooks: ``async def`` hooks run on the loop that opened the bucket (the
    loop running when it was made, else the one of its first ``async with``
    or call), so they can use the application's sessions, locks and other
    loop-bound objects; a task whose life span runs out has its coroutine
    cancelled. Plain ``def`` hooks still run on gobucket's worker threads and
    may block. A loop-lag watchdog (:class:`~gobucket.aio.LoopWatchdog`) warns
    when something blocks that loop for ``loop_lag_warning`` seconds, naming
    the hook.

    Args:
        config, executor, runtime, rescue_sink, rescue_fallback, max_restarts,
            restart_window: as for :class:`~gobucket.TaskBucket`.
        loop_lag_warning: seconds the loop may be blocked before a warning
            (None: no watchdog).
    """

    def __init__(
        self,
        config: BucketConfig,
        executor: Executor,
        *,
        runtime: ActorRuntime | None = None,
        rescue_sink: RescueSink | None = None,
        rescue_fallback: JsonlRescueSink | str | os.PathLike[str] | None = None,
        max_restarts: int = 3,
        restart_window: float = 10.0,
        loop_lag_warning: float | None = DEFAULT_LAG_WARNING,
    ) -> None:
        if loop_lag_warning is not None:
            to_seconds(loop_lag_warning, "loop_lag_warning", allow_zero=False)
        self._sync = TaskBucket(
            config,
            executor,
            runtime=runtime,
            rescue_sink=rescue_sink,
            rescue_fallback=rescue_fallback,
            max_restarts=max_restarts,
            restart_window=restart_window,
        )
        self._lag_warning = loop_lag_warning
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watchdog: LoopWatchdog | None = None
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None  # made outside a loop: bound by the first async with / call
        if running is not None:
            self._bind(running)

    # the loop --------------------------------------------------------------------------
    def _bind(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Bind the bucket to ``loop`` (the running one): its async hooks run there."""
        loop = loop or asyncio.get_running_loop()
        if self._loop is loop:
            return
        if self._loop is not None and not self._loop.is_closed():
            raise GoBucketError(
                f"AsyncTaskBucket {self.name!r} belongs to another event loop "
                "(the one that opened it); use it from that loop only"
            )
        self._unwatch()
        self._loop = loop
        # why private: the hook table is shared by the bucket's actor and its tasks.
        self._sync._hooks.async_runner = AsyncHookRunner(loop=loop)
        if self._lag_warning is not None:
            self._watchdog = watch_loop(loop, self._lag_warning)

    def _unwatch(self) -> None:
        if self._watchdog is not None and self._loop is not None:
            unwatch_loop(self._loop)
        self._watchdog = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The loop the ``async def`` hooks run on (None until the bucket is opened)."""
        return self._loop

    @property
    def watchdog(self) -> LoopWatchdog | None:
        """The loop-lag watchdog of :attr:`loop` (None without one)."""
        return self._watchdog

    # properties --------------------------------------------------------------------------
    @property
    def sync(self) -> TaskBucket:
        """The :class:`~gobucket.TaskBucket` this forwards to (e.g. for a plain group)."""
        return self._sync

    @property
    def name(self) -> str:
        """The bucket's name (``config.name``)."""
        return self._sync.name

    @property
    def config(self) -> BucketConfig:
        """The configuration this bucket was made with."""
        return self._sync.config

    @property
    def executor(self) -> Executor:
        """The executor whose hooks run the tasks."""
        return self._sync.executor

    @property
    def closed(self) -> bool:
        """True once the bucket refuses fills (:meth:`close` was called, or it was shut down)."""
        return self._sync.closed

    # the API -------------------------------------------------------------------------------
    async def fill(
        self,
        task_type: TaskType,
        id: str,
        data: Any = None,
        *,
        run_after: Duration | None = None,
        life_span: Duration | None = None,
    ) -> None:
        """Put a task in the bucket, as :meth:`TaskBucket.fill <gobucket.TaskBucket.fill>`.

        Raises:
            DuplicateTaskError, BucketFullError, InvalidArgumentError,
            BucketClosedError: as the sync fill.
        """
        self._bind()
        message = self._sync._prepare_fill(
            task_type, id, data, run_after=run_after, life_span=life_span
        )
        await self._ask(message)

    async def drain(self, id: str) -> None:
        """Stop a live task and remove it, with no hook (see ``TaskBucket.drain``).

        Raises:
            TaskNotFoundError: no live task has this id, or it is already ending.
        """
        self._bind()
        validate_task_id(id)
        try:
            await self._ask(m.DrainTask(id))
        except pykka.ActorDeadError:
            # The task's own actor stopped with our drain still queued: it ended.
            raise TaskNotFoundError(id, "is already ending") from None

    async def rescue(self, timeout: float | timedelta | None = None) -> int:
        """Run ``on_panic`` for every task alive now; return how many (see ``TaskBucket.rescue``).

        Raises:
            RescueTimeoutError: ``timeout`` passed first.
        """
        self._bind()
        return await asyncio.to_thread(self._sync.rescue, timeout)

    async def join(self, timeout: float | timedelta | None = None) -> bool:
        """Wait until no task is alive; return False if ``timeout`` passed first."""
        self._bind()
        wait = None if timeout is None else to_seconds(timeout, "timeout")
        try:
            async with asyncio.timeout(wait):
                return bool(await ask_soon(self._sync.actor_ref, m.AwaitEmpty()))
        except TimeoutError:
            return False
        except pykka.ActorDeadError:
            return True

    def stats(self) -> BucketStats:
        """A snapshot of the bucket's counters (a short read of its actor; no await needed)."""
        return self._sync.stats()

    def status(self, id: str) -> TaskStatus | None:
        """The state of the live task ``id`` (a short read of its actor), or None.

        The same as :meth:`TaskBucket.status <gobucket.TaskBucket.status>`.
        """
        return self._sync.status(id)

    async def close(
        self,
        *,
        grace: float | timedelta | None = 30.0,
        wait_pending: bool = False,
        timeout: float | timedelta | None = 10.0,
    ) -> int:
        """Shut down without losing a task; return how many were rescued (``TaskBucket.close``).

        The async hooks of the tasks that end meanwhile run on this loop, which
        stays free: the shutdown waits in :func:`asyncio.to_thread`. Leaving
        an ``async with`` block calls it; calling it again does nothing.

        Raises:
            RescueTimeoutError: the rescue did not finish within ``timeout``.
        """
        if self._loop is None:
            self._bind()
        try:
            return await asyncio.to_thread(
                self._sync.close, grace=grace, wait_pending=wait_pending, timeout=timeout
            )
        finally:
            self._unwatch()

    def __len__(self) -> int:
        """How many tasks are alive (0 once closed)."""
        return len(self._sync)

    def __contains__(self, id: object) -> bool:
        return id in self._sync

    async def __aenter__(self) -> Self:
        self._bind()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            await self.close()
            return
        try:  # the block raised: rescue at once, and never hide its exception
            await self.close(grace=0)
        except GoBucketError:
            logger.exception("[%s] closing after %s", self.name, exc_type.__name__)

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<AsyncTaskBucket {self.name!r} {state} max={self.config.max_bucket}>"

    async def _ask(self, message: Any) -> Any:
        """Ask the bucket's actor; across a restart, ask the fresh one (as ``Supervised.ask``)."""
        actor = self._sync._actor
        while True:
            ref = actor.ref
            try:
                return await ask_soon(ref, message)
            except pykka.ActorDeadError:
                if ref.is_alive():
                    raise  # another actor (not ours) was gone: not ours to handle
                # Rare: wait for the supervisor's replacement off the loop.
                await asyncio.to_thread(actor._await_restart, ref)
