"""TaskBucket: the standalone bucket's facade over its BucketActor."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import pykka

from gobucket.actors import messages as m
from gobucket.actors.bucket import BucketActor
from gobucket.actors.runtime import ActorRuntime, default_runtime
from gobucket.actors.supervisor import Supervised
from gobucket.config import (
    MAX_TASK_ID,
    BucketConfig,
    Duration,
    FillFields,
    TaskType,
    make_fill,
    to_seconds,
    validate_task_id,
)
from gobucket.errors import (
    BucketClosedError,
    BucketFullError,
    GoBucketError,
    InvalidArgumentError,
    PoolFullError,
    PoolUnavailableError,
    RescueTimeoutError,
    TaskNotFoundError,
)
from gobucket.executors.base import Executor, HookTable
from gobucket.executors.load import WorkLoad
from gobucket.metrics import _live
from gobucket.pool._record import PoolTask
from gobucket.pool.puller import Puller
from gobucket.recovery.collect import RescueReport, default_fallback, rescue_pass
from gobucket.recovery.record import check_storable
from gobucket.recovery.sinks import JsonlRescueSink, RescueSink
from gobucket.types import BucketStats, TaskStatus

if TYPE_CHECKING:
    from gobucket.pool.pool import RedisTaskPool

__all__ = ["MAX_TASK_ID", "TaskBucket", "validate_task_id"]

logger = logging.getLogger("gobucket")

_RESCUE_PASSES = 10
"""Rescue rounds at shutdown before giving up on tasks that keep appearing (crash restarts)."""


class TaskBucket:
    """A bucket of in-memory background tasks, each run by its own actor.

    Example::

        config = BucketConfig(life_span=5.0, max_bucket=1024, run_after=1.0)
        with TaskBucket(config, MyExecutor()) as bucket:
            bucket.fill(TaskType.IMMEDIATE, "process::1", {"name": "Johnson"})
            bucket.fill(TaskType.TIME_BOMB, "process::2", data, run_after=0.5)
            bucket.drain("process::2")
            bucket.join(timeout=10)

    Every accepted task ends exactly once: ``on_finish``, ``on_execute_error``,
    ``on_task_exhausted``, ``on_panic`` (rescued) or drained (no hook). It stays
    in the bucket (``len``, ``in``) until that end is done.

    Args:
        config: life span, capacity, default ``run_after``, verbosity.
        executor: the hooks (an :class:`~gobucket.Executor`).
        runtime: the actor runtime to run on (the process default if omitted).
        rescue_sink: where every rescued task is written (e.g.
            :class:`~gobucket.JsonlRescueSink`, :class:`~gobucket.RedisRescueSink`).
            With a sink, :meth:`fill` refuses data the sink cannot store.
        rescue_fallback: where records go when the sink raises or does not
            answer within its ``timeout``: a :class:`~gobucket.JsonlRescueSink`
            or a path (default: ``gobucket-rescue-fallback.jsonl`` in the
            working directory, or ``$GOBUCKET_RESCUE_FALLBACK``).
        max_restarts, restart_window: supervision. If the bucket's actor fails,
            its live tasks are rescued and a fresh actor takes its place; more
            than ``max_restarts`` failures within ``restart_window`` seconds stop
            the bucket for good (callers then get :class:`BucketClosedError`).
        pool: a shared task pool (:class:`~gobucket.RedisTaskPool`). A fill that
            finds the bucket full goes to the pool instead (and ``fill`` returns
            as for a local fill); while the bucket has room above the pool's low
            watermark, a thread takes due tasks of this bucket's name from the
            pool and runs them here. ``close`` puts back the pool's tasks that
            have not started. See ``docs/pool.md``.
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
        pool: RedisTaskPool | None = None,
    ) -> None:
        if not isinstance(config, BucketConfig):
            raise InvalidArgumentError(
                f"config must be a BucketConfig, not {type(config).__name__}"
            )
        hooks = HookTable(executor)
        self._config = config
        self._executor = executor
        self._runtime = runtime or default_runtime()
        self.rescue_sink = rescue_sink
        if rescue_fallback is None:
            self.rescue_fallback = default_fallback()
        elif isinstance(rescue_fallback, JsonlRescueSink):
            self.rescue_fallback = rescue_fallback
        else:
            self.rescue_fallback = JsonlRescueSink(os.path.abspath(rescue_fallback))
        self._hooks = hooks
        self._load = WorkLoad(config.name)
        self._key = f"bucket:{config.name}:{id(self):x}"
        self._sealed = False  # fills are refused (the door closed)
        self._closing = False  # close() started
        self._finished = False  # the actor was stopped
        self._close_lock = threading.Lock()
        self._rescue_lock = threading.RLock()  # one rescue pass at a time
        self.pool: RedisTaskPool | None = None
        """The shared task pool this bucket spills to and pulls from (None: none)."""
        self._puller: Puller | None = None
        self._actor: Supervised[BucketActor] = Supervised(
            self._runtime.supervisor,
            self._key,
            self._spawn,
            gone=self._gone,
            restarted=self._restarted,
            gave_up=self._gave_up,
            max_restarts=max_restarts,
            window=restart_window,
        )
        _live.track_bucket(self)  # so that gobucket.metrics.serve(port) can expose it
        if pool is not None:
            self._attach_pool(pool)

    def _attach_pool(self, pool: RedisTaskPool) -> None:
        """Spill to ``pool`` when full, and start pulling from it (once per bucket)."""
        if self.pool is not None:
            if self.pool is not pool:
                raise InvalidArgumentError(f"bucket {self.name!r} is attached to another pool")
            return
        reserve = max(0, int(self._config.max_bucket * pool.low_watermark))

        def room() -> int:
            return self._config.max_bucket - reserve - self._alive_now()

        puller = Puller(pool, self.name, room, self._pool_fill)
        self._puller = puller
        self.pool = pool
        self._ask(m.SetWatch(puller.watch))
        puller.start()

    def _pool_fill(self, task: PoolTask) -> GoBucketError | None:
        """Fill a task taken from the pool, watched (acknowledged there once it ended)."""
        kind, run_after, life, exhausted = task.plan()
        try:
            refused: GoBucketError | None = self._ask(
                m.TryFill(kind, task.task_id, task.data, run_after, life, exhausted, True)
            )
        except (BucketClosedError, pykka.ActorDeadError):
            return BucketClosedError(f"bucket {self.name!r} is closed")
        return refused

    # supervision -------------------------------------------------------------------
    def _spawn(self) -> pykka.ActorRef[BucketActor]:
        watch = None if self._puller is None else self._puller.watch
        return BucketActor.start_on(
            self._runtime, self._config, self._hooks, self._key, self._load, watch
        )

    def _restarted(self, _fresh: pykka.ActorRef[BucketActor], panics: list[m.Answer]) -> None:
        self._after_crash(panics)

    def _gave_up(self, _error: BaseException, panics: list[m.Answer]) -> None:
        self._sealed = True
        self._after_crash(panics)

    def _gone(self, failure: BaseException | None) -> BucketClosedError:
        """The error for a call that finds the bucket's actor gone for good."""
        if failure is not None:
            return BucketClosedError(
                f"bucket {self.name!r} was stopped after repeated failures of its actor "
                f"(last: {failure!r})"
            )
        if self._sealed:
            return BucketClosedError(f"bucket {self.name!r} is closed")
        return BucketClosedError(f"bucket {self.name!r} is not running")

    def _after_crash(self, panics: list[m.Answer]) -> None:
        """Wait for the rescued tasks' on_panic (off the supervisor) and store their records."""

        def collect() -> None:
            report = self._collect(panics, time.monotonic() + 60.0)
            logger.warning(
                "[%s] rescued %d task(s) of a failed bucket actor", self.name, report.records
            )

        threading.Thread(target=collect, name=f"gobucket-rescue-{self.name}", daemon=True).start()

    # properties ------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The bucket's name (``config.name``)."""
        return self._config.name

    @property
    def config(self) -> BucketConfig:
        """The configuration this bucket was made with."""
        return self._config

    @property
    def executor(self) -> Executor:
        """The executor whose hooks run the tasks."""
        return self._executor

    @property
    def actor_ref(self) -> pykka.ActorRef[BucketActor]:
        """The pykka ref of this bucket's BucketActor."""
        return self._actor.ref

    @property
    def closed(self) -> bool:
        """True once the bucket refuses fills (:meth:`close` was called, or it was shut down)."""
        return self._sealed

    # the API -------------------------------------------------------------------------
    def fill(
        self,
        task_type: TaskType,
        id: str,
        data: Any = None,
        *,
        run_after: Duration | None = None,
        life_span: Duration | None = None,
    ) -> None:
        """Put a task in the bucket; it runs now (IMMEDIATE) or after ``run_after`` (TIME_BOMB).

        ``run_after`` and ``life_span`` override the config for this task.

        Raises:
            DuplicateTaskError: a task with this id is alive (or its ``on_execute``
                still runs after it ended).
            BucketFullError: ``max_bucket`` tasks are alive.
            InvalidArgumentError: a bad id, type or duration, or data the
                bucket's rescue sink could not store (nothing changed).
            BucketClosedError: the bucket was closed.

        With a ``pool``, a fill that finds the bucket full goes to the pool and
        returns normally (``stats().pool_*`` shows the pool's depth); it raises
        :class:`BucketFullError` only when the pool refuses too (unreachable:
        its ``__cause__`` is a :class:`~gobucket.PoolUnavailableError`; or over
        its ``max_pending``: a :class:`~gobucket.PoolFullError`), and
        :class:`DuplicateTaskError` when the pool holds a task with this id.
        """
        message = self._prepare_fill(task_type, id, data, run_after=run_after, life_span=life_span)
        if self.pool is None:
            self._ask(message)
            return
        refused: GoBucketError | None = self._ask(m.TryFill(*message))
        if refused is None:
            return
        if not isinstance(refused, BucketFullError):
            raise refused
        self._spill(message, refused)

    def _spill(self, message: m.FillTask, full: BucketFullError) -> None:
        """Put a fill the bucket refused as full into the pool (on the caller's thread)."""
        assert self.pool is not None
        try:
            self.pool.add(
                self.name,
                message.task_id,
                message.data,
                task_type=message.task_type,
                run_after=message.run_after,
                life_span=message.life_span,
            )
        except (PoolFullError, PoolUnavailableError) as error:
            raise BucketFullError(f"{full}, and {error}") from error

    def _fill_exhausted(self, task_type: TaskType, task_id: str, data: Any) -> None:
        """Fill a task whose life span already ran out: it ends through ``on_task_exhausted``.

        Used by :func:`~gobucket.replay` for tasks whose deadline passed while
        the process was down, so that they are never dropped silently.
        """
        if not isinstance(task_type, TaskType):
            raise InvalidArgumentError(f"task_type must be a TaskType, not {task_type!r}")
        validate_task_id(task_id)
        if self.rescue_sink is not None:
            check_storable(data)
        self._check_open()
        self._ask(m.FillTask(task_type, task_id, data, 0.0, 0.0, True))

    def _prepare_fill(
        self,
        task_type: TaskType,
        id: str,
        data: Any = None,
        *,
        run_after: Duration | None = None,
        life_span: Duration | None = None,
    ) -> m.FillTask:
        """Check a fill (:func:`~gobucket.config.make_fill`) and build its message.

        Raises BucketClosedError, after the arguments were checked, when the bucket
        refuses fills.
        """
        message = m.FillTask(*self._make_fill(task_type, id, data, run_after, life_span))
        self._check_open()
        return message

    def _make_fill(
        self,
        task_type: TaskType,
        id: str,
        data: Any,
        run_after: Duration | None,
        life_span: Duration | None,
    ) -> FillFields:
        """Check a fill's arguments (and its data against the rescue sink, if any)."""
        return make_fill(
            self._config,
            task_type,
            id,
            data,
            run_after=run_after,
            life_span=life_span,
            check_data=None if self.rescue_sink is None else check_storable,
        )

    def _check_open(self) -> None:
        if self._sealed:
            raise self._gone(self._actor.failure)

    def drain(self, id: str) -> None:
        """Stop a live task and remove it, with no hook.

        A task that has not started never starts; a running one has its context
        cancelled and its late result dropped. Its id is free when this returns.

        Raises:
            TaskNotFoundError: no live task has this id, or it is already ending.
        """
        validate_task_id(id)
        try:
            self._ask(m.DrainTask(id))
        except pykka.ActorDeadError:
            # The task's own actor stopped with our drain still queued: it ended.
            raise TaskNotFoundError(id, "is already ending") from None

    def task_ref(self, id: str) -> pykka.ActorRef[Any]:
        """A pykka :class:`~pykka.ActorRef` to the actor of the live task ``id``.

        Tasks run on light actors that have no pykka ref of their own; this
        makes one on demand (each call a new one). ``tell`` and ``ask`` deliver
        the task's messages (see :mod:`gobucket.actors.messages`), ``stop()``
        drains the task; pykka proxies are not supported. Once the task has
        ended the ref is dead (``is_alive()`` is False, ``tell`` raises
        :class:`pykka.ActorDeadError`).

        Raises:
            TaskNotFoundError: no live task has this id.
        """
        validate_task_id(id)
        ref: pykka.ActorRef[Any] = self._ask(m.TaskRef(id))
        return ref

    def rescue(self, timeout: float | timedelta | None = None) -> int:
        """Run ``on_panic`` for every task alive now; return how many were rescued.

        A snapshot: tasks filled afterwards are not affected, and the bucket
        stays open (to shut down, use :meth:`close`). Each task's record is
        taken the instant it is rescued and, with a rescue sink, written once
        the ``on_panic`` calls returned (or ``timeout`` passed: a hanging
        ``on_panic`` does not keep its record out of the sink). Safe from any
        thread, an ``except`` block or a signal handler.

        Raises:
            RescueTimeoutError: ``timeout`` passed first; everything taken was
                written before it was raised (see ``.rescued`` and ``.pending``).
        """
        limit = None if timeout is None else to_seconds(timeout, "timeout")
        with self._rescue_lock:
            answers: list[m.Answer] = self._ask(m.RescueAll())
            report = self._collect(answers, _deadline(limit))
        if self._config.verbose:
            logger.info("[%s] rescued %d task(s)", self.name, report.rescued)
        if report.pending_ids:
            raise RescueTimeoutError(report.rescued, report.pending_ids, limit)
        return report.rescued

    def join(self, timeout: float | timedelta | None = None) -> bool:
        """Wait until no task is alive; return False if ``timeout`` passed first."""
        wait = None if timeout is None else to_seconds(timeout, "timeout")
        try:
            future = self._actor.ask_later(m.AwaitEmpty())
            return bool(future.get(timeout=wait))
        except pykka.Timeout:
            return False
        except pykka.ActorDeadError:
            return True

    def stats(self) -> BucketStats:
        """A snapshot of the bucket's counters (alive, finished, drained, running, ...)."""
        stats: BucketStats = self._ask(m.GetStats())
        return self._with_pool(stats)

    def _with_pool(self, stats: BucketStats) -> BucketStats:
        """``stats`` with the pool's depth for this bucket (as last read, about each second)."""
        cached = None if self._puller is None else self._puller.cached
        if cached is None:
            return stats
        return dataclasses.replace(
            stats,
            pool_ready=cached.ready,
            pool_delayed=cached.delayed,
            pool_claimed=cached.claimed,
        )

    def status(self, id: str) -> TaskStatus | None:
        """A snapshot of the live task ``id``, or None when no live task has that id.

        Its ``state`` is waiting (a time bomb before ``run_after``), running,
        retry-wait (``on_execute`` raised; the next attempt is due in ``due_in``
        seconds) or ending (its end hook runs); ``attempt`` counts the
        ``on_execute`` attempts so far (0 before the first) and ``life_left``
        the seconds of its life span left. A task that ended is gone: None.
        A bucket closed for good holds no task: None.
        """
        validate_task_id(id)
        try:
            status: TaskStatus | None = self._ask(m.GetTaskStatus(id))
        except BucketClosedError:
            return None
        return status

    def close(
        self,
        *,
        grace: float | timedelta | None = 30.0,
        wait_pending: bool = False,
        timeout: float | timedelta | None = 10.0,
    ) -> int:
        """Shut the bucket down without losing a task; return how many were rescued.

        1. Fills are refused from now on (:class:`BucketClosedError`).
        2. Tasks whose work has not started (waiting time bombs, retry waits,
           ``on_execute`` calls still queued for a worker) are rescued at once.
        3. Running tasks get up to ``grace`` seconds to end (None: as long as
           they take).
        4. Whatever is still alive is rescued through ``on_panic`` (and the
           rescue sink); this rescue is bounded by ``timeout`` seconds.

        With ``wait_pending`` step 2 is skipped: every task, time bombs
        included, may run and end within ``grace`` (None: however long the
        last time bomb waits). A ``KeyboardInterrupt`` (or any exception)
        raised while waiting rescues everything at once, then propagates.
        Leaving a ``with`` block calls ``close()``; calling it again does nothing.

        Raises:
            RescueTimeoutError: the rescue did not finish within ``timeout``
                (everything taken was written first).
        """
        limit = None if timeout is None else to_seconds(timeout, "timeout")
        report = self._shutdown(grace, wait_pending, limit)
        if report.pending_ids:
            raise RescueTimeoutError(report.rescued, report.pending_ids, limit)
        return report.rescued

    # shutdown machinery (also used by the signal handlers and rescue_on_error) ------
    def _shutdown(
        self,
        grace: float | timedelta | None,
        wait_pending: bool,
        timeout: float | None,
        *,
        hurry: bool = False,
    ) -> RescueReport:
        """Close the door, rescue what has not started, wait ``grace``, rescue the rest.

        ``hurry`` (signal path, escaping exception) skips the waiting and
        rescues even if another thread is closing the bucket right now.
        """
        wait = None if grace is None else to_seconds(grace, "grace")
        with self._close_lock:
            first = not self._closing
            self._closing = True
        if not (first or hurry):
            return RescueReport()
        self._seal()
        budget = _Budget(timeout)
        report = RescueReport()
        if self._puller is not None and not hurry:
            report.merge(self._put_back(budget))
        try:
            if not hurry:
                if not wait_pending:
                    report.merge(self._rescue_until_empty(budget, shed=True))
                if wait is None or wait > 0:
                    self.join(wait)
        except BaseException:
            report.merge(self._rescue_until_empty(budget))
            self._finish_close()
            raise
        report.merge(self._rescue_until_empty(budget))
        self._finish_close()
        return report

    def _release_pool_tasks(self, timeout: float) -> None:
        """Stop pulling and put back the pool's tasks that have not started (a group's
        hand-off does this first, so that they go back to the pool, not to a peer)."""
        if self._puller is not None:
            self._put_back(_Budget(timeout))

    def _put_back(self, budget: _Budget) -> RescueReport:
        """Give the pool back the tasks taken from it that have not started."""
        assert self._puller is not None
        wait = min(budget.left(), 10.0)

        def reserve(ids: frozenset[str]) -> list[tuple[pykka.ActorRef[Any], pykka.Future[Any]]]:
            reserved: list[tuple[pykka.ActorRef[Any], pykka.Future[Any]]] = self._ask(
                m.ReserveAll(ids)
            )
            return reserved

        unplaced = self._puller.put_back(reserve, wait)
        if not unplaced:
            return RescueReport()
        return self._collect(unplaced, budget.deadline())

    def _seal(self) -> None:
        """Refuse every further fill (the door closes before any rescue)."""
        self._sealed = True
        self._actor.retire()
        with contextlib.suppress(pykka.ActorDeadError, BucketClosedError):
            self._ask(m.CloseBucket())

    def _rescue_until_empty(self, budget: _Budget, *, shed: bool = False) -> RescueReport:
        """Rescue (with ``shed``: only tasks not started) until nothing is alive or time is up."""
        report = RescueReport()
        if not self._rescue_lock.acquire(timeout=budget.left() if budget.bounded else -1):
            alive = self._alive()
            logger.error("[%s] could not rescue in time: %d task(s) unsafe", self.name, alive)
            report.unsafe_ids.extend(["<unknown>"] * alive)
            return report
        try:
            with budget.spending():
                for _ in range(_RESCUE_PASSES):
                    try:
                        answers: list[m.Answer] = self._ask(m.RescueAll(shed))
                    except (BucketClosedError, pykka.ActorDeadError):
                        break
                    if not answers:
                        break
                    passed = self._collect(answers, budget.deadline())
                    report.merge(passed)
                    if shed or passed.pending_ids:
                        break
                    # Tasks may still be listed a moment after they ended; a task
                    # replaced after a crash needs another pass.
                    if self.join(min(budget.left(), 1.0) if budget.bounded else 1.0):
                        break
        finally:
            self._rescue_lock.release()
        if report.records or report.unsafe_ids:
            logger.warning(
                "[%s] rescued %d task(s): %d in the sink, %d in the fallback, %d lost, %d pending",
                self.name,
                report.records,
                report.stored,
                report.fallback,
                report.lost,
                len(report.pending_ids),
            )
        return report

    def _collect(self, answers: list[m.Answer], deadline: float | None) -> RescueReport:
        """Wait for rescued tasks and store their records (sink, else fallback)."""
        return rescue_pass(answers, deadline, self.rescue_sink, self.rescue_fallback, self.name)

    def _alive(self) -> int:
        try:
            return len(self)
        except Exception:
            return 0

    def _finish_close(self) -> None:
        with self._close_lock:
            if self._finished:
                return
            self._finished = True
        self._actor.stop()
        if self._puller is not None:
            self._puller.close()

    def _alive_now(self) -> int:
        """How many tasks are alive, read without asking the actor (a snapshot; 0 once closed)."""
        return 0 if self._finished else self._load.alive()

    def __len__(self) -> int:
        """How many tasks are alive (0 once closed)."""
        try:
            count: int = self._ask(m.Count())
        except BucketClosedError:
            return 0
        return count

    def __contains__(self, id: object) -> bool:
        if not isinstance(id, str):
            return False
        try:
            return bool(self._ask(m.Contains(id)))
        except BucketClosedError:
            return False

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # the block raised: rescue at once, and never hide its exception
            self.close(grace=0)
        except GoBucketError:
            logger.exception("[%s] closing after %s", self.name, exc_type.__name__)

    def __repr__(self) -> str:
        state = "closed" if self._sealed else "open"
        return f"<TaskBucket {self.name!r} {state} max={self._config.max_bucket}>"

    def _ask(self, message: Any) -> Any:
        return self._actor.ask(message)


def _deadline(limit: float | None) -> float | None:
    return None if limit is None else time.monotonic() + limit


class _Budget:
    """A time budget shared by the rescue passes of one shutdown (None: unbounded)."""

    __slots__ = ("_since", "spent", "total")

    def __init__(self, total: float | None) -> None:
        self.total = total
        self.spent = 0.0
        self._since: float | None = None

    @property
    def bounded(self) -> bool:
        return self.total is not None

    def left(self) -> float:
        if self.total is None:
            return float("inf")
        running = 0.0 if self._since is None else time.monotonic() - self._since
        return max(0.0, self.total - self.spent - running)

    def deadline(self) -> float | None:
        return None if self.total is None else time.monotonic() + self.left()

    @contextlib.contextmanager
    def spending(self) -> Iterator[None]:
        self._since = time.monotonic()
        try:
            yield
        finally:
            self.spent += time.monotonic() - self._since
            self._since = None
