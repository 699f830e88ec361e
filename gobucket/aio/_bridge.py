"""Asking an actor from a coroutine: the answer comes back as an asyncio future.

No thread waits: the message goes into the actor's mailbox with a
:class:`~gobucket.actors._future.CallbackFuture` whose callback hands the
answer to the loop (``call_soon_threadsafe``, or at once when the actor ran
inline on the loop's own thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

import pykka

from gobucket.actors._future import CallbackFuture
from gobucket.actors._pykka import Envelope

__all__ = ["ask_soon"]


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

    def settle(value: Any, error: BaseException | None) -> None:
        if future.done():
            return  # cancelled by the awaiting task meanwhile
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)

    def done(value: Any, error: BaseException | None) -> None:
        if threading.get_ident() == home:
            settle(value, error)
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody awaits it
            loop.call_soon_threadsafe(settle, value, error)

    if not ref.is_alive():
        settle(None, pykka.ActorDeadError(f"{ref} not found"))
        return future
    # A message queued to an actor that then stops is answered ActorDeadError (fail_dead).
    ref.actor_inbox.put(Envelope(message, reply_to=CallbackFuture(done)))
    return future
