"""A bounded pool of worker threads for blocking (plain ``def``) hooks."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

import pykka

from gobucket.actors.messages import HookKind
from gobucket.executors.base import never_started, report

__all__ = ["ThreadHookRunner"]

logger = logging.getLogger("gobucket.executors")

_Job = tuple[Callable[..., Any], tuple[Any, ...], pykka.ActorRef[Any], HookKind]


class ThreadHookRunner:
    """Runs hooks on at most ``workers`` threads and reports back by message.

    Urgent jobs (``on_panic`` during a rescue) skip the queue; when every
    worker is busy an extra short-lived thread is started for them, so a rescue
    never waits behind long ``on_execute`` calls.
    """

    def __init__(self, workers: int = 16, name: str = "gobucket-worker") -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._urgent: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._idle = 0
        self._lock = threading.Lock()
        self._local = threading.local()
        self._name = name
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        reply_to: pykka.ActorRef[Any],
        kind: HookKind,
        *,
        urgent: bool = False,
    ) -> None:
        """Queue ``fn(*args)``; ``reply_to`` is told :class:`HookDone` when it ends."""
        job = (fn, args, reply_to, kind)
        if not urgent:
            follow_ups = getattr(self._local, "follow_ups", None)
            if follow_ups is not None and self._local.reporting:
                # Submitted from one of our workers (a task's end hook, right
                # after its on_execute): that worker runs it next, no hand-off.
                follow_ups.append(job)
            else:
                self._jobs.put(job)
            return
        self._urgent.put(job)
        if self._idle > 0:
            self._jobs.put(None)  # wake an idle worker to look at the urgent queue
        else:
            threading.Thread(
                target=self._drain_urgent, name=f"{self._name}-rescue", daemon=True
            ).start()

    def stop(self) -> None:
        """Ask the workers to exit once the queue ahead of them is done."""
        for _ in self._threads:
            self._jobs.put(None)
        self._stopping = True

    _stopping = False

    def _drain_urgent(self) -> None:
        from gobucket.actors.runtime import mark_runtime_thread

        mark_runtime_thread()
        while True:
            try:
                job = self._urgent.get_nowait()
            except queue.Empty:
                return
            _run(job, None)

    def _work(self) -> None:
        from gobucket.actors.runtime import mark_runtime_thread

        mark_runtime_thread()
        jobs = self._jobs
        urgent = self._urgent
        lock = self._lock
        follow_ups: list[_Job] = []
        self._local.follow_ups = follow_ups
        self._local.reporting = False
        local = self._local
        while True:
            if not urgent.empty():
                self._drain_urgent()
            with lock:
                self._idle += 1
            job = jobs.get()
            with lock:
                self._idle -= 1
            if job is None:
                if self._stopping:
                    return
                continue
            _run(job, local)
            while follow_ups:
                _run(follow_ups.pop(), local)


def _run(job: _Job, local: threading.local | None) -> None:
    fn, args, reply_to, kind = job
    if never_started(kind, args):
        return
    error: BaseException | None = None
    try:
        fn(*args)
    except BaseException as raised:  # also SystemExit, KeyboardInterrupt inside a hook
        error = raised
    # While the result is reported (the actor may run inline here), an end hook
    # the actor submits is a follow-up of this job: this worker runs it next.
    if local is not None:
        local.reporting = True
    try:
        report(reply_to, kind, error)
    finally:
        if local is not None:
            local.reporting = False
