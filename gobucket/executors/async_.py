"""An asyncio event loop for ``async def`` hooks: gobucket's own (on its thread) or a given one."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from gobucket._threads import Recipient, mark_runtime_thread
from gobucket.executors.load import WorkLoad
from gobucket.executors.runner import HookKind, never_started, report

__all__ = ["AsyncHookRunner", "hook_task_name"]

logger = logging.getLogger("gobucket.executors")


class AsyncHookRunner:
    """Runs coroutine hooks on one event loop; the returned handle cancels them for real.

    Without ``loop`` the runner starts its own loop on a thread of its own (the
    runtime's runner, shared by every bucket). With ``loop`` it runs hooks on
    that loop, which someone else runs (an :class:`~gobucket.AsyncTaskBucket`
    passes the loop that opened it): no thread is started and :meth:`stop`
    leaves the loop alone. A hook submitted once that loop is closed never
    runs; the task is told it failed (a :class:`RuntimeError`).
    """

    def __init__(
        self, name: str = "gobucket-asyncio", *, loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        self._thread: threading.Thread | None = None
        if loop is not None:
            self.loop = loop
            return
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name=name, daemon=True)
        self._thread.start()
        ready.wait()

    @property
    def owns_loop(self) -> bool:
        """True when the runner runs its own loop (False: it was given one)."""
        return self._thread is not None

    def _run(self, ready: threading.Event) -> None:
        mark_runtime_thread()
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(ready.set)
        self.loop.run_forever()

    def submit(
        self,
        fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        reply_to: Recipient,
        kind: HookKind,
        *,
        urgent: bool = False,
        load: WorkLoad | None = None,
    ) -> concurrent.futures.Future[None] | None:
        """Start ``fn(*args)`` on the loop; cancel the returned future to cancel the hook.

        ``load`` (for ``on_execute``) counts the call as running while it runs
        (it is never queued: the loop starts it at once).
        """
        coro = _call(fn, args, reply_to, kind, load)
        try:
            return asyncio.run_coroutine_threadsafe(coro, self.loop)
        except RuntimeError as error:  # the loop is closed: the hook can never run
            coro.close()
            report(reply_to, kind, RuntimeError(f"cannot run {_hook_name(fn)}: {error}"))
            return None

    def stop(self) -> None:
        """Stop the loop if it is the runner's own (running hooks are abandoned)."""
        if self._thread is None:
            return
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5.0)


def hook_task_name(fn: Callable[..., Any], args: tuple[Any, ...]) -> str:
    """The asyncio task name a hook runs under: which hook, of which task and bucket.

    Loop-lag warnings (:class:`gobucket.aio.LoopWatchdog`) name the blocking
    task by it.
    """
    ctx = args[0] if args else None
    task_id = getattr(ctx, "task_id", None)
    bucket = getattr(ctx, "bucket", None)
    if task_id is None:
        return f"gobucket hook {_hook_name(fn)}"
    return f"gobucket hook {_hook_name(fn)} of task {task_id!r} in bucket {bucket!r}"


def _hook_name(fn: Callable[..., Any]) -> str:
    return str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn))


async def _call(
    fn: Callable[..., Awaitable[Any]],
    args: tuple[Any, ...],
    reply_to: Recipient,
    kind: HookKind,
    load: WorkLoad | None,
) -> None:
    ctx = args[0] if load is not None else None
    if ctx is not None:
        assert load is not None
        if not load.begin(ctx, queued=False):
            return
    elif never_started(kind, args):
        return
    task = asyncio.current_task()
    if task is not None:
        task.set_name(hook_task_name(fn, args))
    try:
        await fn(*args)
    except asyncio.CancelledError as error:
        _ended(load, ctx)
        report(reply_to, kind, error)
        raise
    except BaseException as error:
        _ended(load, ctx)
        report(reply_to, kind, error)
    else:
        _ended(load, ctx)
        report(reply_to, kind, None)


def _ended(load: WorkLoad | None, ctx: Any) -> None:
    if load is not None and ctx is not None:
        load.end(ctx)
