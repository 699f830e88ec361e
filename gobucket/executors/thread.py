"""Worker threads for blocking (plain ``def``) hooks: one pool for ``on_execute``, one for ends.

``on_execute`` is the user's work and may block for as long as it likes; the
end hooks (``on_finish``, ``on_execute_error``, ``on_task_exhausted``,
``on_panic``) are how every task leaves the bucket. If they shared one queue,
a few stuck ``on_execute`` calls would stop every task from ending, and a
rescue would wait behind them. So:

* ``on_execute`` runs on ``workers`` threads (the documented pool size);
* end hooks run on a separate pool of ``end_workers`` threads, which grows by
  up to ``extra_end_workers`` short-lived threads while all of them are busy;
* ``on_panic`` during a rescue (*urgent*) is taken before other end hooks;
* the end hook of a task whose ``on_execute`` just returned runs next on the
  same worker (no hand-off), which is the fast path of every task.

Blocking work that is not a hook (a user callback of the group, say) goes to
the end pool too, with :meth:`ThreadHookRunner.run_blocking`: nothing is
reported back; an exception it raises is logged.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from gobucket._ratelimit import RateLimitedLog
from gobucket._threads import Recipient, mark_runtime_thread
from gobucket.executors.load import WorkLoad
from gobucket.executors.runner import HookKind, report

__all__ = ["ThreadHookRunner"]

logger = logging.getLogger("gobucket.executors")

_Job = tuple[Callable[..., Any], tuple[Any, ...], Recipient | None, HookKind, WorkLoad | None]
_EXECUTE = HookKind.EXECUTE
_END = HookKind.END

SATURATION_GRACE = 1.0
"""Seconds calls must keep waiting for a worker before the saturation warning."""


class ThreadHookRunner:
    """Runs hooks on worker threads and reports back by message.

    Args:
        workers: threads for ``on_execute`` calls; more calls wait in a queue
            (see ``BucketStats.queued``).
        end_workers: threads for end hooks, never blocked by ``on_execute``.
        extra_end_workers: how many more end-hook threads may be started while
            every end worker is busy (they exit once the queue is empty).
    """

    def __init__(
        self,
        workers: int = 16,
        name: str = "gobucket-worker",
        *,
        end_workers: int = 4,
        extra_end_workers: int = 16,
    ) -> None:
        if workers < 1 or end_workers < 1 or extra_end_workers < 0:
            raise ValueError("a hook runner needs at least one worker and one end worker")
        self.workers = workers
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._ends: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._urgent: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0  # execute workers waiting for a job
        self._backlog = 0  # execute jobs queued and not yet taken by a worker
        self._saturated_since: float | None = None  # calls have waited for a worker since
        self._end_idle = 0  # end workers waiting for a job
        self._extra = 0  # short-lived end threads running now
        self._extra_max = extra_end_workers
        self._local = threading.local()
        self._name = name
        self._stopping = False
        self._warnings = RateLimitedLog(logger)
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(workers)
        ]
        self._end_threads = [
            threading.Thread(target=self._work_ends, name=f"{name}-end-{i}", daemon=True)
            for i in range(end_workers)
        ]
        for thread in (*self._threads, *self._end_threads):
            thread.start()

    def submit(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        reply_to: Recipient,
        kind: HookKind,
        *,
        urgent: bool = False,
        load: WorkLoad | None = None,
    ) -> None:
        """Queue ``fn(*args)``; ``reply_to`` is told :class:`HookDone` when it ends.

        ``load`` (for ``on_execute``) is the bucket's :class:`WorkLoad`: the
        call is counted as queued, then running, and skipped if its task ended
        before a worker took it.
        """
        job = (fn, args, reply_to, kind, load)
        if kind is _EXECUTE:
            with self._lock:
                self._backlog += 1
                waits = self._backlog > self._idle  # more calls queued than idle workers
            if load is not None:
                load.submitted()
                if waits and self._saturated_for() >= SATURATION_GRACE:
                    self._warnings.warning(
                        "saturated",
                        "all %d hook workers are busy running on_execute: calls now wait for a "
                        "worker (bucket %r); long or stuck plain hooks cause this, see "
                        "stats().running/queued/overrunning and ActorRuntime(workers=...)",
                        self.workers,
                        load.name,
                    )
            self._jobs.put(job)
            return
        self._queue_end(job, urgent)

    def run_blocking(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on an end worker; nothing is reported, an exception is logged.

        For blocking work that is not a hook: it is queued like an end hook
        (and, submitted while a worker reports a result, runs next there).
        """
        self._queue_end((fn, args, None, _END, None), False)

    def _queue_end(self, job: _Job, urgent: bool) -> None:
        if not urgent:
            follow_ups = getattr(self._local, "follow_ups", None)
            if follow_ups is not None and self._local.reporting:
                # Submitted while one of our execute workers reports a result (a
                # task's end hook right after its on_execute): run it next there.
                follow_ups.append(job)
                return
            self._ends.put(job)
        else:
            self._urgent.put(job)
            self._ends.put(None)  # wake an end worker to look at the urgent queue
        if self._end_idle <= 0:
            self._spawn_extra()

    def _saturated_for(self) -> float:
        """Seconds since calls started to wait for a worker (a short burst is not news)."""
        now = time.monotonic()
        since = self._saturated_since
        if since is None:
            self._saturated_since = now
            return 0.0
        return now - since

    def stop(self) -> None:
        """Ask the workers to exit once the queues ahead of them are done."""
        self._stopping = True
        for _ in self._threads:
            self._jobs.put(None)
        for _ in self._end_threads:
            self._ends.put(None)

    # end-hook threads ----------------------------------------------------------------
    def _spawn_extra(self) -> None:
        with self._lock:
            if self._extra >= self._extra_max or self._stopping:
                return
            self._extra += 1
        threading.Thread(target=self._extra_ends, name=f"{self._name}-end-x", daemon=True).start()

    def _extra_ends(self) -> None:
        """A short-lived end worker: runs what is queued now, then exits."""
        mark_runtime_thread()
        try:
            while True:
                job = self._next_urgent()
                if job is None:
                    try:
                        job = self._ends.get_nowait()
                    except queue.Empty:
                        return
                    if job is None:
                        continue
                _run(job, None)
        finally:
            with self._lock:
                self._extra -= 1

    def _next_urgent(self) -> _Job | None:
        try:
            return self._urgent.get_nowait()
        except queue.Empty:
            return None

    def _work_ends(self) -> None:
        mark_runtime_thread()
        ends = self._ends
        lock = self._lock
        while True:
            job = self._next_urgent()
            if job is None:
                with lock:
                    self._end_idle += 1
                job = ends.get()
                with lock:
                    self._end_idle -= 1
                if job is None:
                    if self._stopping and self._urgent.empty():
                        return
                    continue
            _run(job, None)
            job = None  # an idle worker must not keep the last task alive

    # execute threads -------------------------------------------------------------------
    def _work(self) -> None:
        mark_runtime_thread()
        jobs = self._jobs
        lock = self._lock
        follow_ups: list[_Job] = []
        local = self._local
        local.follow_ups = follow_ups
        local.reporting = False
        while True:
            with lock:
                self._idle += 1
            job = jobs.get()
            with lock:
                self._idle -= 1
                if job is not None:
                    self._backlog -= 1
                    if self._backlog == 0:
                        self._saturated_since = None
            if job is None:
                if self._stopping:
                    return
                continue
            _run(job, local)
            job = None  # an idle worker must not keep the last task alive
            while follow_ups:
                _run(follow_ups.pop(), local)


def _run(job: _Job, local: threading.local | None) -> None:
    fn, args, reply_to, kind, load = job
    ctx = args[0] if load is not None else None
    if ctx is not None:
        assert load is not None
        if not load.begin(ctx):
            return  # its task ended while it waited: it never starts
    elif kind is _EXECUTE and args and getattr(args[0], "cancelled", False) is True:
        return
    error: BaseException | None = None
    try:
        fn(*args)
    except BaseException as raised:  # also SystemExit, KeyboardInterrupt inside a hook
        error = raised
    finally:
        if ctx is not None:
            assert load is not None
            load.end(ctx)
    if reply_to is None:  # run_blocking: nobody to tell
        if error is not None:
            logger.error("a blocking call %r raised", fn, exc_info=error)
        return
    # While the result is reported (the actor may run inline here), an end hook
    # the actor submits is a follow-up of this job: this worker runs it next.
    if local is not None:
        local.reporting = True
    try:
        report(reply_to, kind, error)
    finally:
        if local is not None:
            local.reporting = False
