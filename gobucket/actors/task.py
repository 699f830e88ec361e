"""TaskActor: one per task, a small state machine that ends its task exactly once.

A TaskActor is a :class:`~gobucket.actors.light.LightActor`: one slotted
object, no pykka ref, mailbox or lock of its own (see
``docs/how-a-task-runs.md``). States: ``WAITING`` (a time bomb before
``run_after``) → ``RUNNING`` (``on_execute`` submitted) → ``ENDING`` (its
end hook submitted) → ``ENDED``. The first message that ends the task wins
(``Executed``, ``Expire``, ``Drain``, ``Panic``); every later one is
ignored, so each accepted task gets exactly one end.
"""

from __future__ import annotations

import logging
from time import monotonic as _monotonic
from typing import TYPE_CHECKING, Any

import pykka

from gobucket._threads import tell_quietly
from gobucket.actors import messages as m
from gobucket.actors._future import LatchFuture, done_future
from gobucket.actors.light import LIGHT_SLOTS, Board, LightActor
from gobucket.actors.timers import RESOLUTION
from gobucket.config import TaskType
from gobucket.context import TaskContext
from gobucket.errors import TaskNotFoundError
from gobucket.executors.runner import HookDone, HookKind
from gobucket.recovery.record import RescuedTask
from gobucket.types import Outcome, TaskState, TaskStatus

if TYPE_CHECKING:
    from types import TracebackType

    from gobucket.actors.runtime import ActorRuntime
    from gobucket.actors.timers import Timer
    from gobucket.executors.base import Hook, HookTable
    from gobucket.executors.load import WorkLoad
    from gobucket.executors.runner import RunHandle

__all__ = ["TaskActor", "TaskSpec"]

logger = logging.getLogger("gobucket")

WAITING = 0
RUNNING = 1
RETRY_WAIT = 2
ENDING = 3
ENDED = 4
HANDING = 5
_LIVE = (WAITING, RUNNING, RETRY_WAIT, HANDING)
_PUBLIC_STATE = {
    WAITING: TaskState.WAITING,
    RUNNING: TaskState.RUNNING,
    RETRY_WAIT: TaskState.RETRY_WAIT,
    ENDING: TaskState.ENDING,
    ENDED: TaskState.ENDING,  # its end is done; the bucket frees its id next
    HANDING: TaskState.ENDING,  # reserved to be handed off to a peer: it will not run here
}


class TaskSpec:
    """What every task of one bucket shares (one object per bucket, not per task)."""

    __slots__ = (
        "backoff",
        "board",
        "bucket",
        "hooks",
        "load",
        "max_retries",
        "name",
        "runtime",
        "verbose",
    )

    def __init__(
        self,
        bucket: pykka.ActorRef[Any],
        hooks: HookTable,
        name: str,
        verbose: bool,
        max_retries: int,
        backoff: float,
        load: WorkLoad,
        runtime: ActorRuntime,
    ) -> None:
        self.bucket = bucket
        self.runtime = runtime
        self.board: Board = {}  # the claims of this bucket's tasks (see LightActor)
        self.load = load
        self.hooks = hooks
        self.name = name
        self.verbose = verbose
        self.max_retries = max_retries
        self.backoff = backoff


class _Start:
    """The first message of a task (``crashed``/``exhausted``: it ends at once)."""

    __slots__ = ("crashed", "exhausted")

    def __init__(self, crashed: BaseException | None = None, exhausted: bool = False) -> None:
        self.crashed = crashed
        self.exhausted = exhausted

    def __repr__(self) -> str:
        return "<start>"


_START = _Start()


class TaskActor(TaskContext, LightActor):
    """Runs one task: its timers, its ``on_execute``, drain-as-stop and panic.

    Started (:meth:`start`) by its :class:`~gobucket.actors.bucket.BucketActor`,
    which it tells :class:`~gobucket.actors.messages.TaskEnded` once its end is
    done (or :class:`~gobucket.actors.messages.TaskFailed` from ``on_failure``
    if it crashes). Timers and hook runners tell it their results directly
    (it has ``tell``); :meth:`~gobucket.actors.light.LightActor.actor_ref`
    makes a pykka ref to it when one is needed.

    A task is its own :class:`~gobucket.context.TaskContext` (the ``ctx`` its
    hooks get): one object per task, not two.
    """

    __slots__ = (
        *LIGHT_SLOTS,
        "_expire",
        "_fire",
        "_first",
        "_running",
        "_waiters",
        "data",
        "outcome",
        "run_after",
        "spec",
        "state",
    )

    def __init__(
        self,
        spec: TaskSpec,
        task_id: str,
        data: Any,
        task_type: TaskType,
        run_after: float,
        life_span: float,
        filled_at: float | None = None,
        crashed: BaseException | None = None,
        exhausted: bool = False,
    ) -> None:
        self._board = spec.board
        self._stopped = False
        now = _monotonic() if filled_at is None else filled_at
        TaskContext.__init__(self, task_id, spec.name, task_type, now, now + life_span)
        self.spec = spec
        self.data = data
        self.run_after = run_after
        self.state = WAITING
        self.outcome: Outcome | None = None
        self._fire: Timer | None = None
        self._expire: Timer | None = None
        self._running: RunHandle | None = None
        self._waiters: list[pykka.Future[Any]] | None = None
        self._first: _Start | None = (
            _START if crashed is None and not exhausted else _Start(crashed, exhausted)
        )

    @property
    def ctx(self) -> TaskContext:
        """The context handed to the task's hooks: the task itself."""
        return self

    def status(self, now: float | None = None) -> TaskStatus:
        """A snapshot of this task (read only; safe from its bucket's actor, unlocked).

        Its fields are read without a lock while the task may move on in
        another thread: the snapshot is of one moment close to the call.
        """
        now = _monotonic() if now is None else now
        state = self.state
        ctx = self.ctx
        due_in = 0.0
        if state == WAITING:
            due_in = max(0.0, ctx.filled_at + self.run_after - now)
        elif state == RETRY_WAIT:
            timer = self._fire
            if timer is not None:
                due_in = max(0.0, timer.slot * RESOLUTION - now)
        return TaskStatus(
            self.task_id,
            self.spec.name,
            _PUBLIC_STATE[state],
            ctx.attempt,
            due_in,
            max(0.0, ctx.deadline - now),
        )

    # lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        """Deliver the first message (:meth:`on_start` runs here unless someone is faster)."""
        first, self._first = self._first, None
        self._deliver(first if first is not None else _START)

    def on_start(self, first: _Start = _START) -> None:
        """Run at once (arming the life-span timer) or arm the ``run_after`` timer.

        A waiting time bomb holds one timer: its life span is armed when it fires.
        """
        if first.crashed is not None:
            self._end(Outcome.EXECUTE_ERROR, first.crashed)
            return
        if first.exhausted:
            self._end(Outcome.EXHAUSTED)  # its life span ran out before it was filled
            return
        timers = self.spec.runtime.timers
        ctx = self.ctx
        fire_at = ctx.filled_at + self.run_after
        if self.run_after > 0 and fire_at < ctx.deadline:
            # One timer at a time: the life-span timer is armed once it fires.
            self._fire = timers.schedule(fire_at, self, m.FIRE)
            if self.spec.verbose:
                logger.info(
                    "[%s] task %s waits %.3fs", self.spec.name, self.task_id, self.run_after
                )
            return
        self._expire = timers.schedule(ctx.deadline, self, m.EXPIRE)
        if self.run_after <= 0:
            self._execute()

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Tell the bucket (our supervisor), which gives the task its end and frees its id."""
        try:
            self._disarm()
        except Exception:  # the crash may have left it half-way: the end must still come
            logger.exception("[%s] disarming crashed task %s failed", self.spec.name, self.task_id)
        claimed = self.outcome if self.state >= ENDING else None
        tell_quietly(
            self.spec.bucket,
            m.TaskFailed(
                self.task_id,
                claimed,
                exception_value,
                self.data,
                self.ctx.task_type,
                self.ctx.remaining(),
            ),
        )

    def on_receive(self, message: Any) -> Any:
        """Handle Fire, Expire, Retry, Drain, Panic and hook results."""
        kind = type(message)
        if kind is HookDone:
            if message.kind is HookKind.EXECUTE:
                self._on_executed(message.error)
            else:
                self._on_end_done(message.error)
            return None
        if kind is _Start:
            self.on_start(message)
            return None
        if kind is m.Fire:
            if self.state == WAITING and self._fire is not None:
                timers = self.spec.runtime.timers
                timers.cancel(self._fire)  # a no-op once it fired (it may be a tell of Fire)
                self._fire = None
                self._expire = timers.schedule(self.ctx.deadline, self, m.EXPIRE)
                self._execute()
            return None
        if kind is m.Expire:
            if self.state in _LIVE and self.state != HANDING:
                self._end(Outcome.EXHAUSTED)  # cancelling a timer that fired is a no-op
            return None
        if kind is m.Retry:
            if self.state == RETRY_WAIT:
                self.spec.runtime.timers.cancel(self._fire)
                self._fire = None
                self._execute()
            return None
        if kind is m.Drain:
            return self._drain(message.reply)
        if kind is m.Panic:
            return self._panic()
        if kind is m.Shed:
            return self._shed()
        if kind is m.Reserve:
            return self._reserve()
        if kind is m.Release:
            return self._release_handoff(message.placed)
        return super().on_receive(message)

    def on_stop_request(self) -> None:
        """A pykka ``stop()`` through a task ref drains the task (it ends without a hook)."""
        if self._drain(None):
            tell_quietly(self.spec.bucket, m.TaskEnded(self.task_id, Outcome.DRAINED))

    def _reserve(self) -> RescuedTask | None:
        if self.state != WAITING:
            return None
        self.state = HANDING
        if self._fire is not None:
            self.spec.runtime.timers.cancel(self._fire)
            self._fire = None
        return self._record()

    def _release_handoff(self, placed: bool) -> Any:
        if self.state != HANDING:
            return False
        if placed:
            self.state = ENDED
            self.outcome = Outcome.HANDED_OFF
            self._disarm()
            if self.spec.verbose:
                logger.info("[%s] task %s handed off to a peer", self.spec.name, self.task_id)
            tell_quietly(self.spec.bucket, m.TaskEnded(self.task_id, Outcome.HANDED_OFF))
            self._stopped = True
            return True
        return self._panic()

    # transitions -------------------------------------------------------------------
    def _execute(self) -> None:
        self.state = RUNNING
        ctx = self.ctx
        ctx.attempt += 1
        entry = self.spec.hooks.execute
        ctx._started = False
        if self.spec.verbose:
            logger.info(
                "[%s] task %s executing (attempt %d)", self.spec.name, self.task_id, ctx.attempt
            )
        if entry is None:
            self._on_executed(None)
            return
        self._running = self._submit(entry, (ctx, self.task_id, self.data), HookKind.EXECUTE)

    def _on_executed(self, error: BaseException | None) -> None:
        if self.state != RUNNING:
            return  # a late result: the task already ended another way
        self._running = None
        if error is None:
            self._end(Outcome.FINISHED)
            return
        spec = self.spec
        ctx = self.ctx
        if ctx.attempt <= spec.max_retries:
            due = _monotonic() + spec.backoff * (2 ** (ctx.attempt - 1))
            if due < ctx.deadline:
                if spec.verbose:
                    logger.info(
                        "[%s] task %s failed attempt %d (%r); retrying",
                        spec.name,
                        self.task_id,
                        ctx.attempt,
                        error,
                    )
                self.state = RETRY_WAIT
                self._fire = self.spec.runtime.timers.schedule(due, self, m.RETRY)
                return
        self._end(Outcome.EXECUTE_ERROR, error)

    def _end(
        self, outcome: Outcome, error: BaseException | None = None, *, urgent: bool = False
    ) -> None:
        self.state = ENDING
        self.outcome = outcome
        # Only an end that cuts the task short cancels its context.
        self._disarm(cancel=outcome in (Outcome.EXHAUSTED, Outcome.PANICKED))
        hooks = self.spec.hooks
        if self.spec.verbose:
            logger.info(
                "[%s] task %s ending: %s%s",
                self.spec.name,
                self.task_id,
                outcome.value,
                f" ({error!r})" if error is not None else "",
            )
        args: tuple[Any, ...] = (self.ctx, self.task_id, self.data)
        if outcome is Outcome.FINISHED:
            entry = hooks.finish
        elif outcome is Outcome.EXECUTE_ERROR:
            entry = hooks.execute_error
            args = (*args, error)
        elif outcome is Outcome.EXHAUSTED:
            entry = hooks.exhausted
        else:
            entry = hooks.panic
        if entry is None:
            self._on_end_done(None)
        else:
            self._submit(entry, args, HookKind.END, urgent=urgent)

    def _on_end_done(self, error: BaseException | None) -> None:
        if self.state != ENDING:
            return
        if error is not None:
            logger.error(
                "[%s] %s hook of task %s raised",
                self.spec.name,
                self.outcome.value if self.outcome else "end",
                self.task_id,
                exc_info=(type(error), error, error.__traceback__),
            )
        self.state = ENDED
        assert self.outcome is not None
        tell_quietly(self.spec.bucket, m.TaskEnded(self.task_id, self.outcome))
        if self._waiters:
            for waiter in self._waiters:
                waiter.set(True)
        self._stopped = True

    def _drain(self, reply: pykka.Future[Any] | None) -> bool:
        if self.state not in _LIVE:
            if reply is not None:
                err = TaskNotFoundError(self.task_id, "is already ending")
                reply.set_exception((type(err), err, None))
            return False
        self.state = ENDED
        self.outcome = Outcome.DRAINED
        self._disarm()
        if self.spec.verbose:
            logger.info("[%s] task %s drained", self.spec.name, self.task_id)
        if reply is not None:
            tell_quietly(self.spec.bucket, m.TaskEnded(self.task_id, Outcome.DRAINED, reply))
        self._stopped = True
        return True

    def _panic(self) -> tuple[RescuedTask | None, pykka.Future[Any] | None]:
        """Rescue: answer the record at once, and a future set once the task ended."""
        if self.state == ENDED:
            return None, None
        record = None
        if self.state in _LIVE:
            record = self._record()
            self._end(Outcome.PANICKED, urgent=True)
        if self.state == ENDED:  # no on_panic hook: ended on the spot
            return record, done_future(True)
        ended: LatchFuture[Any] = LatchFuture()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(ended)
        return record, ended

    def _shed(self) -> tuple[RescuedTask | None, pykka.Future[Any] | None] | None:
        """Shutdown: rescue at once unless ``on_execute`` has really started."""
        state = self.state
        if state in (WAITING, RETRY_WAIT):
            return self._panic()
        if state == RUNNING and self.spec.load.cancel_unstarted(self.ctx):
            return self._panic()  # still queued for a worker: it never starts
        return None

    def _record(self) -> RescuedTask:
        """What a rescue sink stores of this task."""
        ctx = self.ctx
        now = _monotonic()
        wait = 0.0
        if ctx.attempt == 0 and self.run_after > 0:
            wait = max(0.0, ctx.filled_at + self.run_after - now)
        return RescuedTask(
            self.spec.name,
            self.task_id,
            ctx.task_type,
            self.data,
            max(0.0, ctx.deadline - now),
            wait,
        )

    # helpers -------------------------------------------------------------------------
    def _disarm(self, cancel: bool = True) -> None:
        if cancel:
            self.ctx._cancel()
        timers = self.spec.runtime.timers
        if self._fire is not None:
            timers.cancel(self._fire)
            self._fire = None
        if self._expire is not None:
            timers.cancel(self._expire)
            self._expire = None
        running = self._running
        if running is not None:
            self._running = None
            running.cancel()

    def _submit(
        self,
        entry: tuple[Hook, bool],
        args: tuple[Any, ...],
        kind: HookKind,
        *,
        urgent: bool = False,
    ) -> RunHandle | None:
        fn, is_async = entry
        spec = self.spec
        observer = spec.load.observer
        if observer is not None:  # metrics are on (gobucket.metrics)
            fn = observer.timed(fn, is_async, kind, self._due(kind))
        load = spec.load if kind is HookKind.EXECUTE else None
        runtime = spec.runtime
        if is_async:
            runner = self.spec.hooks.async_runner or runtime.async_runner
            return runner.submit(fn, args, self, kind, urgent=urgent, load=load)
        runtime.threads.submit(fn, args, self, kind, urgent=urgent, load=load)
        return None

    def _due(self, kind: HookKind) -> float | None:
        """When a time bomb's first ``on_execute`` was due (None for any other hook)."""
        if kind is HookKind.EXECUTE and self.run_after > 0 and self.attempt == 1:
            return self.filled_at + self.run_after
        return None
