"""Asking an actor from a coroutine: the answer comes back as an asyncio future.

No thread waits: the message goes into the actor's mailbox with a
:class:`~gobucket.actors._future.CallbackFuture` whose callback hands the
answer to the loop: at once when the actor ran inline on the loop's own thread,
else through the loop's :class:`_Inbox` (one ``call_soon_threadsafe`` wakes
the loop for a whole burst of answers, which are settled at most
:data:`SETTLE_BATCH` per loop iteration, so that a burst does not hold the loop).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import weakref
from typing import Any

import pykka

from gobucket.actors._future import CallbackFuture
from gobucket.actors._pykka import Envelope

__all__ = ["SETTLE_BATCH", "ask_soon"]

SETTLE_BATCH = 32
"""Answers settled per loop iteration; each wakes one awaiting task in the next iteration."""

_Answer = tuple[asyncio.Future[Any], Any, BaseException | None]


class _Inbox:
    """Answers from other threads waiting to be settled on one loop."""

    __slots__ = ("__weakref__", "_items", "_loop", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._items: collections.deque[_Answer] = collections.deque()
        self._scheduled = False

    def put(self, answer: _Answer) -> None:
        """Queue an answer (any thread); wake the loop unless a drain is due already."""
        self._items.append(answer)
        if not self._scheduled:
            self._scheduled = True
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody awaits it
                self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        items = self._items
        for _ in range(min(len(items), SETTLE_BATCH)):
            _settle(*items.popleft())
        # Lower the flag before looking again: a put that saw it raised is then seen here,
        # and one that sees it lowered schedules its own drain (two drains are harmless).
        self._scheduled = False
        if items and not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._drain)  # the rest next iteration, after other callbacks


_inboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Inbox] = weakref.WeakKeyDictionary()
_inboxes_lock = threading.Lock()


def _inbox(loop: asyncio.AbstractEventLoop) -> _Inbox:
    inbox = _inboxes.get(loop)
    if inbox is None:
        with _inboxes_lock:
            inbox = _inboxes.get(loop)
            if inbox is None:
                inbox = _inboxes[loop] = _Inbox(loop)
    return inbox


def _settle(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():
        return  # cancelled by the awaiting task meanwhile
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


def ask_soon(ref: pykka.ActorRef[Any], message: Any) -> asyncio.Future[Any]:
    """Ask ``ref`` without blocking; the returned future (of the running loop) gets the answer.

    The actor handles the message inline when it is free (on this thread, as
    :func:`gobucket.actors.actor.call` would), or later on whichever thread
    runs it. A dead actor answers :class:`pykka.ActorDeadError`. Cancelling
    the returned future drops the answer, not the request.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    home = threading.get_ident()
    inbox = _inbox(loop)

    def done(value: Any, error: BaseException | None) -> None:
        if threading.get_ident() == home:
            _settle(future, value, error)
        else:
            inbox.put((future, value, error))

    if not ref.is_alive():
        _settle(future, None, pykka.ActorDeadError(f"{ref} not found"))
        return future
    # A message queued to an actor that then stops is answered ActorDeadError (fail_dead).
    ref.actor_inbox.put(Envelope(message, reply_to=CallbackFuture(done)))
    return future
