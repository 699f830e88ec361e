"""The composition root of gobucket's actors: an :class:`ActorRuntime` per node.

An :class:`ActorRuntime` wires together what the actors of a node share: the
dispatcher threads that run queued actor messages (see
:class:`gobucket.actors.actor.Mailbox`), one
:class:`~gobucket.actors.timers.TimerService`, the hook runners of
:mod:`gobucket.executors` (worker threads, and one event loop for ``async def``
hooks) and the :class:`~gobucket.actors.supervisor.RootSupervisor`.
:func:`default_runtime` is the one most programs use; it is also where actors
started without a runtime run.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

import pykka

from gobucket._threads import mark_runtime_thread
from gobucket.actors.actor import Mailbox, use_default_runtime
from gobucket.actors.supervisor import RootSupervisor
from gobucket.actors.timers import TimerService
from gobucket.executors.async_ import AsyncHookRunner
from gobucket.executors.thread import ThreadHookRunner

__all__ = ["ActorRuntime", "default_runtime"]

logger = logging.getLogger("gobucket.runtime")


class ActorRuntime:
    """Dispatcher threads, one timer service and the hook runners of a node.

    Args:
        dispatchers: threads that run queued actor messages.
        workers: threads that run blocking (plain ``def``) executor hooks.
        name: a label for thread names and logs.

    Most programs use :func:`default_runtime`; make your own to give a bucket
    a separate worker pool (e.g. for hooks that block for a long time).
    """

    def __init__(self, dispatchers: int = 2, workers: int = 16, name: str = "gobucket") -> None:
        if dispatchers < 1 or workers < 1:
            raise ValueError("an ActorRuntime needs at least one dispatcher and one worker")
        self.name = name
        self._runq: queue.SimpleQueue[Mailbox | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._lock = threading.Lock()
        for index in range(dispatchers):
            thread = threading.Thread(
                target=self._dispatch, name=f"{name}-dispatch-{index}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        self.timers: TimerService = TimerService(name=f"{name}-timer")
        self.threads: ThreadHookRunner = ThreadHookRunner(workers, name=f"{name}-worker")
        self._async: AsyncHookRunner | None = None
        self._supervisor: pykka.ActorRef[Any] | None = None

    @property
    def async_runner(self) -> AsyncHookRunner:
        """The event loop that runs ``async def`` hooks (started on first use)."""
        if self._async is None:
            with self._lock:
                if self._async is None:
                    self._async = AsyncHookRunner(name=f"{self.name}-asyncio")
        return self._async

    @property
    def supervisor(self) -> pykka.ActorRef[Any]:
        """The root supervisor of this runtime (started on first use)."""
        if self._supervisor is None:
            with self._lock:
                if self._supervisor is None:
                    self._supervisor = RootSupervisor.start_on(self)
        return self._supervisor

    def run_blocking(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run blocking work that is not a hook on a worker thread (an error is logged)."""
        self.threads.run_blocking(fn, *args)

    def schedule(self, mailbox: Mailbox) -> None:
        """Queue a mailbox with waiting messages for a dispatcher."""
        self._runq.put(mailbox)

    def _dispatch(self) -> None:
        mark_runtime_thread()
        get = self._runq.get
        while True:
            mailbox = get()
            if mailbox is None:
                return
            try:
                mailbox.run_batch()
            except BaseException:  # pragma: no cover - _process never raises
                logger.exception("dispatcher caught an unexpected error")

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop the threads of this runtime (pending hooks are abandoned)."""
        if self._closed:
            return
        self._closed = True
        for _ in self._threads:
            self._runq.put(None)
        self.timers.stop()
        self.threads.stop()
        if self._async is not None:
            self._async.stop()
        current = threading.current_thread()
        for thread in self._threads:
            if thread is not current:
                thread.join(timeout)


_default: ActorRuntime | None = None
_default_lock = threading.Lock()


def default_runtime() -> ActorRuntime:
    """The process-wide runtime, started on first use and stopped at exit."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = ActorRuntime()
                atexit.register(_default.shutdown)
    return _default


use_default_runtime(default_runtime)
