"""BucketActor: owns the ids of a bucket's live tasks and supervises their TaskActors."""

from __future__ import annotations

import logging
from time import monotonic as _monotonic
from typing import TYPE_CHECKING, Any

import pykka

from gobucket._threads import tell_quietly
from gobucket.actors import messages as m
from gobucket.actors.actor import RuntimeActor
from gobucket.actors.task import TaskActor, TaskSpec
from gobucket.actors.watch import EndWatch
from gobucket.config import BucketConfig, TaskType
from gobucket.errors import (
    BucketClosedError,
    BucketFullError,
    DuplicateTaskError,
    GoBucketError,
    TaskActorCrashedError,
    TaskNotFoundError,
)
from gobucket.executors.load import WorkLoad
from gobucket.types import BucketStats, Outcome

if TYPE_CHECKING:
    from types import TracebackType

    from gobucket.executors.base import HookTable

__all__ = ["BucketActor"]

logger = logging.getLogger("gobucket")


class BucketActor(RuntimeActor):
    """Admits or refuses fills, frees ids when tasks end, answers rescue, supervises tasks."""

    def __init__(
        self,
        config: BucketConfig,
        hooks: HookTable,
        supervisor_key: str | None = None,
        load: WorkLoad | None = None,
        watch: EndWatch | None = None,
    ) -> None:
        super().__init__()
        self.supervisor_key = supervisor_key
        self.watch = watch
        self.config = config
        self.load = load if load is not None else WorkLoad(config.name)
        self.spec = TaskSpec(
            self.actor_ref,
            hooks,
            config.name,
            config.verbose,
            config.max_retries,
            config.retry_backoff,
            self.load,
            self.runtime,
        )
        self.tasks: dict[str, TaskActor] = {}
        self.load.alive = self.tasks.__len__  # a read-only count for other threads (PONG)
        self.closed = False
        self._empty_waiters: list[pykka.Future[Any]] = []
        self._counts = dict.fromkeys(Outcome, 0)
        self._filled = 0
        self._refused_full = 0
        self._refused_dup = 0
        self._crashed = 0
        self._ends = _EndRing()

    def on_receive(self, message: Any) -> Any:
        """Dispatch bucket messages (see :mod:`gobucket.actors.messages`)."""
        kind = type(message)
        if kind is m.FillTask:
            return self._fill(message)
        if kind is m.TryFill:
            return self._admit(message)  # refused: the error is the answer, not raised
        if kind is m.TaskEnded:
            self._remove(message.task_id, message.outcome)
            if message.reply is not None:
                message.reply.set(None)
            return None
        if kind is m.DrainTask:
            return self._drain(message.task_id)
        if kind is m.Contains:
            return message.task_id in self.tasks
        if kind is m.TaskRef:
            return self.task(message.task_id).actor_ref()
        if kind is m.Count:
            return len(self.tasks)
        if kind is m.RescueAll:
            ask = m.SHED if message.shed else m.PANIC
            return [
                (task_id, task.actor_ref(), task.ask(ask, block=False))
                for task_id, task in list(self.tasks.items())
            ]
        if kind is m.ReserveAll:
            ids = message.ids
            return [
                (task.actor_ref(), task.ask(m.RESERVE, block=False))
                for task_id, task in list(self.tasks.items())
                if ids is None or task_id in ids
            ]
        if kind is m.GetStats:
            return self._stats()
        if kind is m.GetTaskStatus:
            task = self.tasks.get(message.task_id)
            return None if task is None else task.status()
        if kind is m.AwaitEmpty:
            if not self.tasks:
                return True
            waiter = self.defer_reply()
            if waiter is not None:
                self._empty_waiters.append(waiter)
            return None
        if kind is m.SetWatch:
            self.watch = message.watch
            return None
        if kind is m.CloseBucket:
            self.closed = True
            return None
        if kind is m.TaskFailed:
            self._on_task_failed(message)
            return None
        return super().on_receive(message)

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Tell the root supervisor, with our live tasks, so that it can rescue and restart."""
        if self.supervisor_key is None:
            return
        tell_quietly(
            self.runtime.supervisor,
            m.ChildFailed(
                self.supervisor_key,
                exception_value,
                [(task_id, task.actor_ref()) for task_id, task in self.tasks.items()],
            ),
        )

    def _fill(self, msg: m.FillTask) -> None:
        refused = self._admit(msg)
        if refused is not None:
            raise refused

    def _admit(self, msg: m.FillTask) -> GoBucketError | None:
        """Start the task, or count the refusal and return (not raise) its error."""
        if self.closed:
            return BucketClosedError(f"bucket {self.config.name!r} is closed")
        tasks = self.tasks
        task_id = msg.task_id
        if task_id in tasks:
            self._refused_dup += 1
            return DuplicateTaskError(task_id, self.config.name)
        if self.load.overrunning(task_id) is not None:
            self._refused_dup += 1
            self.load.warnings.warning(
                "overrun-fill",
                "[%s] a fill of task %r was refused: the on_execute of the ended task with "
                "that id is still running (overrunning); its id is free once it returns",
                self.config.name,
                task_id,
            )
            return DuplicateTaskError(
                task_id,
                self.config.name,
                "task {task} ended{where} but its on_execute is still running (it overran its "
                "life span, or was drained or rescued, and a plain hook cannot be stopped); "
                "its id is free once on_execute returns",
            )
        if len(tasks) >= self.config.max_bucket:
            self._refused_full += 1
            return BucketFullError(
                f"task buffer exceeded: bucket {self.config.name!r} holds its maximum of "
                f"{self.config.max_bucket} live tasks"
            )
        run_after = msg.run_after if msg.task_type is TaskType.TIME_BOMB else 0.0
        if self.config.verbose:
            logger.info("[%s] task %s filled (%s)", self.config.name, task_id, msg.task_type.value)
        task = TaskActor(
            self.spec,
            task_id,
            msg.data,
            msg.task_type,
            run_after,
            msg.life_span,
            exhausted=msg.exhausted,
        )
        tasks[task_id] = task  # before it starts: if it ends at once, its TaskEnded is queued
        if msg.watched and self.watch is not None:
            self.watch.ids.add(task_id)
        self._filled += 1
        task.start()
        return None

    def _drain(self, task_id: str) -> Any:
        task = self.tasks.get(task_id)
        if task is None:
            raise TaskNotFoundError(task_id)
        try:
            ran, drained = task.call(m.DRAIN)
        except Exception:  # stopped, or crashed right now (its supervision ends it)
            raise TaskNotFoundError(task_id, "is already ending") from None
        if ran:
            if not drained:
                raise TaskNotFoundError(task_id, "is already ending")
            self._remove(task_id, Outcome.DRAINED)
            return None
        # The task is busy: forward, and let it answer through us once its id is freed.
        reply = self.defer_reply()
        try:
            task.tell(m.Drain(reply))
        except pykka.ActorDeadError:
            err = TaskNotFoundError(task_id, "is already ending")
            if reply is not None:
                reply.set_exception((type(err), err, None))
        return None

    def task(self, task_id: str) -> TaskActor:
        """The live task ``task_id`` (raises TaskNotFoundError)."""
        task = self.tasks.get(task_id)
        if task is None:
            raise TaskNotFoundError(task_id)
        return task

    def _remove(self, task_id: str, outcome: Outcome) -> None:
        if self.tasks.pop(task_id, None) is None:
            return
        watch = self.watch
        if watch is not None and watch.ids and task_id in watch.ids:
            watch.ids.discard(task_id)
            watch.ended(task_id, outcome)
        self._counts[outcome] += 1
        self._ends.count()
        if not self.tasks and self._empty_waiters:
            waiters, self._empty_waiters = self._empty_waiters, []
            for waiter in waiters:
                waiter.set(True)

    def _on_task_failed(self, msg: m.TaskFailed) -> None:
        """Supervision: a crashed TaskActor's task still gets exactly one end."""
        self._crashed += 1
        if msg.task_id not in self.tasks:
            return
        if msg.claimed is not None:
            # It had already taken its end; that end stands, the id is freed.
            self._remove(msg.task_id, msg.claimed)
            return
        error = TaskActorCrashedError(f"the actor of task {msg.task_id!r} failed: {msg.error!r}")
        error.__cause__ = msg.error
        replacement = TaskActor(
            self.spec,
            msg.task_id,
            msg.data,
            msg.task_type,
            0.0,
            max(0.001, msg.remaining),
            crashed=error,
        )
        self.tasks[msg.task_id] = replacement
        replacement.start()

    def _stats(self) -> BucketStats:
        c = self._counts
        load = self.load.snapshot()
        return BucketStats(
            name=self.config.name,
            alive=len(self.tasks),
            max_bucket=self.config.max_bucket,
            filled=self._filled,
            finished=c[Outcome.FINISHED],
            execute_errors=c[Outcome.EXECUTE_ERROR],
            exhausted=c[Outcome.EXHAUSTED],
            panicked=c[Outcome.PANICKED],
            drained=c[Outcome.DRAINED],
            refused_full=self._refused_full,
            refused_duplicate=self._refused_dup,
            crashed=self._crashed,
            closed=self.closed,
            handed_off=c[Outcome.HANDED_OFF],
            running=load.running,
            queued=load.queued,
            overrunning=load.overrunning,
            end_rate_10s=self._ends.rate(10),
            end_rate_60s=self._ends.rate(60),
        )


class _EndRing:
    """Ends per second over the last minute: a ring of 60 one-second counts.

    Counting an end costs a clock read and an add; a second with no end is
    cleared when the ring next moves past it.
    """

    __slots__ = ("_counts", "_now", "_since")

    SIZE = 60

    def __init__(self) -> None:
        self._counts = [0] * self.SIZE
        self._since = _monotonic()
        self._now = int(self._since)  # the second the last count went to

    def _advance(self, second: int) -> None:
        gap = second - self._now
        if gap <= 0:
            return
        counts = self._counts
        if gap >= self.SIZE:
            counts[:] = [0] * self.SIZE
        else:
            for passed in range(self._now + 1, second + 1):
                counts[passed % self.SIZE] = 0
        self._now = second

    def count(self) -> None:
        """One task ended now."""
        second = int(_monotonic())
        if second != self._now:
            self._advance(second)
        self._counts[second % self.SIZE] += 1

    def rate(self, window: int) -> float:
        """Ends per second over the last ``window`` seconds (at most 60; the current one
        included), over the bucket's age when it is younger than that."""
        now = _monotonic()
        second = int(now)
        self._advance(second)
        window = max(1, min(window, self.SIZE))
        total = sum(self._counts[(second - back) % self.SIZE] for back in range(window))
        span = min(float(window), max(1.0, now - self._since))
        return total / span
