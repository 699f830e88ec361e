"""One asyncio event loop, on its own thread, for ``async def`` hooks."""

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

__all__ = ["AsyncHookRunner"]

logger = logging.getLogger("gobucket.executors")


class AsyncHookRunner:
    """Runs coroutine hooks on one event loop; the returned handle cancels them for real."""

    def __init__(self, name: str = "gobucket-asyncio") -> None:
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name=name, daemon=True)
        self._thread.start()
        ready.wait()

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
    ) -> concurrent.futures.Future[None]:
        """Start ``fn(*args)`` on the loop; cancel the returned future to cancel the hook.

        ``load`` (for ``on_execute``) counts the call as running while it runs
        (it is never queued: the loop starts it at once).
        """
        return asyncio.run_coroutine_threadsafe(_call(fn, args, reply_to, kind, load), self.loop)

    def stop(self) -> None:
        """Stop the loop (running hooks are abandoned)."""
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5.0)


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
