"""TaskBucket: the standalone bucket's facade over its BucketActor."""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from types import TracebackType
from typing import Any, Self

import pykka

from gobucket.actors import messages as m
from gobucket.actors.bucket import BucketActor, BucketStats
from gobucket.actors.runtime import ActorRuntime, call, default_runtime
from gobucket.actors.supervisor import Supervise, Unsupervise
from gobucket.config import BucketConfig, Duration, TaskType, to_seconds
from gobucket.errors import BucketClosedError, InvalidArgumentError, TaskNotFoundError
from gobucket.executors.base import Executor, HookTable
from gobucket.recovery.record import RescuedTask
from gobucket.recovery.sinks import RescueSink

__all__ = ["TaskBucket", "validate_task_id"]

logger = logging.getLogger("gobucket")


def validate_task_id(task_id: object) -> str:
    """Return ``task_id`` if it is a non-empty string, else raise InvalidArgumentError."""
    if not isinstance(task_id, str):
        raise InvalidArgumentError(f"task id must be a str, not {type(task_id).__name__}")
    if not task_id:
        raise InvalidArgumentError("task id must be a non-empty string")
    return task_id


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
        rescue_sink: where :meth:`rescue` writes every rescued task (e.g.
            :class:`~gobucket.JsonlRescueSink`), after its ``on_panic`` returned.
        max_restarts, restart_window: supervision. If the bucket's actor fails,
            its live tasks are rescued and a fresh actor takes its place; more
            than ``max_restarts`` failures within ``restart_window`` seconds stop
            the bucket for good (callers then get :class:`BucketClosedError`).
    """

    def __init__(
        self,
        config: BucketConfig,
        executor: Executor,
        *,
        runtime: ActorRuntime | None = None,
        rescue_sink: RescueSink | None = None,
        max_restarts: int = 3,
        restart_window: float = 10.0,
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
        self._hooks = hooks
        self._key = f"bucket:{config.name}:{id(self):x}"
        self._failure: BaseException | None = None
        self._swapped = threading.Condition()  # notified when the supervisor swaps the actor
        self._ref: pykka.ActorRef[BucketActor] = self._spawn()
        call(
            self._runtime.supervisor,
            Supervise(
                self._key, self._spawn, self._restarted, self._gave_up, max_restarts, restart_window
            ),
        )
        self._closed = False
        self._close_lock = threading.Lock()

    # supervision -------------------------------------------------------------------
    def _spawn(self) -> pykka.ActorRef[BucketActor]:
        return BucketActor.start_on(self._runtime, self._config, self._hooks, self._key)

    def _restarted(self, fresh: pykka.ActorRef[Any], panics: list[pykka.Future[Any]]) -> None:
        with self._swapped:
            self._ref = fresh
            self._swapped.notify_all()
        self._after_crash(panics)

    def _gave_up(self, error: BaseException, panics: list[pykka.Future[Any]]) -> None:
        with self._swapped:
            self._failure = error
            self._closed = True
            self._swapped.notify_all()
        self._after_crash(panics)

    def _after_crash(self, panics: list[pykka.Future[Any]]) -> None:
        """Wait for the rescued tasks' on_panic (on a worker) and write them to the sink."""
        sink = self.rescue_sink
        name = self.name

        def collect() -> None:
            records = []
            for future in panics:
                try:
                    result = future.get(timeout=60)
                except Exception:
                    continue
                if isinstance(result, RescuedTask):
                    records.append(result)
            logger.warning("[%s] rescued %d task(s) of a failed bucket actor", name, len(records))
            if sink is not None and records:
                sink.write(records)

        self._runtime.threads.submit(collect, (), self._runtime.supervisor, m.HookKind.END)

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
        return self._ref

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

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
            DuplicateTaskError: a task with this id is alive.
            BucketFullError: ``max_bucket`` tasks are alive.
            InvalidArgumentError: a bad id, type or duration (nothing changed).
            BucketClosedError: the bucket was closed.
        """
        self._ask(self.prepare_fill(task_type, id, data, run_after=run_after, life_span=life_span))

    def prepare_fill(
        self,
        task_type: TaskType,
        id: str,
        data: Any = None,
        *,
        run_after: Duration | None = None,
        life_span: Duration | None = None,
    ) -> m.FillTask:
        """Validate a fill's arguments and build its message (used by groups too)."""
        if not isinstance(task_type, TaskType):
            try:
                task_type = TaskType(task_type)
            except ValueError:
                raise InvalidArgumentError(
                    f"task_type must be a TaskType, not {task_type!r}"
                ) from None
        validate_task_id(id)
        cfg = self._config
        life = (
            cfg.life_span
            if life_span is None
            else to_seconds(life_span, "life_span", allow_zero=False)
        )
        if task_type is TaskType.TIME_BOMB:
            after = cfg.run_after if run_after is None else to_seconds(run_after, "run_after")
            if life <= after:
                raise InvalidArgumentError(
                    f"life_span ({life}s) must be longer than run_after ({after}s) for a "
                    "time bomb, or it would be exhausted before it runs"
                )
        else:
            if run_after is not None and to_seconds(run_after, "run_after") != 0:
                raise InvalidArgumentError(
                    "run_after applies to TaskType.TIME_BOMB only; an IMMEDIATE task runs now"
                )
            after = 0.0
        if self._closed:
            if self._failure is not None:
                raise BucketClosedError(
                    f"bucket {self.name!r} was stopped after repeated failures of its actor "
                    f"(last: {self._failure!r})"
                )
            raise BucketClosedError(f"bucket {self.name!r} is closed")
        return m.FillTask(task_type, id, data, after, life)

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

    def rescue(self, timeout: float | None = None) -> int:
        """Run ``on_panic`` for every live task; return how many were rescued.

        Returns once every ``on_panic`` returned (and, with a rescue sink, once
        every rescued task was written). Safe from any thread, an ``except``
        block or a signal handler. Tasks filled afterwards are not affected.
        """
        answer: tuple[list[pykka.Future[Any]], list[pykka.ActorRef[Any]]] = self._ask(m.RescueAll())
        futures, refs = answer
        records: list[RescuedTask] = []
        for future, ref in zip(futures, refs, strict=True):
            if ref.actor_inbox.held_by_current_thread():  # type: ignore[attr-defined]
                # A signal handler interrupted this very task's handler (it is
                # being filled right now); its Panic runs when the handler returns.
                logger.warning(
                    "[%s] task being filled when rescue() interrupted it "
                    "is rescued after the signal handler returns",
                    self.name,
                )
                continue
            try:
                result = future.get(timeout=timeout)
            except pykka.ActorDeadError:
                continue
            if isinstance(result, RescuedTask):
                records.append(result)
        rescued = len(records)
        if self.rescue_sink is not None and records:
            self.rescue_sink.write(records)
        if self._config.verbose:
            logger.info("[%s] rescued %d task(s)", self.name, rescued)
        return rescued

    def join(self, timeout: float | timedelta | None = None) -> bool:
        """Wait until no task is alive; return False if ``timeout`` passed first."""
        wait = None if timeout is None else to_seconds(timeout, "timeout")
        try:
            future = self._ref.ask(m.AwaitEmpty(), block=False)
            return bool(future.get(timeout=wait))
        except pykka.Timeout:
            return False
        except pykka.ActorDeadError:
            return True

    def stats(self) -> BucketStats:
        """A snapshot of the bucket's counters (alive, finished, drained, ...)."""
        stats: BucketStats = self._ask(m.GetStats())
        return stats

    def close(self, *, wait: bool = True, timeout: float | None = None) -> int:
        """Refuse further fills, let live tasks end, then stop the bucket's actor.

        With ``wait`` (the default) live tasks may end on their own for up to
        ``timeout`` seconds (forever if None); whatever is still alive then is
        rescued through ``on_panic``, so nothing is dropped silently. Returns how
        many tasks were rescued. Calling it again does nothing.
        """
        with self._close_lock:
            if self._closed:
                return 0
            with self._swapped:
                self._closed = True
                self._swapped.notify_all()
        try:
            self._ref.ask(m.CloseBucket())
        except pykka.ActorDeadError:
            return 0
        if wait:
            self.join(timeout)
        rescued = self.rescue() if len(self) else 0
        self.join(5.0)
        call(self._runtime.supervisor, Unsupervise(self._key))
        self._ref.stop()
        return rescued

    def __len__(self) -> int:
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
        self.close(wait=exc_type is None)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<TaskBucket {self.name!r} {state} max={self._config.max_bucket}>"

    def _ask(self, message: Any) -> Any:
        while True:
            ref = self._ref
            try:
                return call(ref, message)
            except pykka.ActorDeadError:
                if ref.is_alive():
                    raise  # another actor (not the bucket's) was gone: not ours to handle
                self._await_restart(ref)

    def _await_restart(self, dead: pykka.ActorRef[Any]) -> None:
        """The actor died under us: return once the supervisor replaced it, or raise."""
        with self._swapped:
            self._swapped.wait_for(
                lambda: self._ref is not dead or self._failure is not None or self._closed,
                timeout=5.0,
            )
        if self._failure is not None:
            raise BucketClosedError(
                f"bucket {self.name!r} was stopped after repeated failures of its "
                f"actor (last: {self._failure!r})"
            ) from None
        if self._ref is dead:
            if self._closed:
                raise BucketClosedError(f"bucket {self.name!r} is closed") from None
            raise BucketClosedError(f"bucket {self.name!r} is not running") from None
