"""Which threads may deliver actor messages inline, and how deeply they are nested.

A *runtime thread* (a dispatcher, the timer thread, a hook worker, the event
loops of the hook runner and the network node) never blocks inside an actor
handler, so a ``tell`` it sends to an idle actor may run that actor's handler
right there (see :class:`gobucket.actors.actor.Mailbox`). This module holds the
thread-local marker that says so, the nesting depth of inline deliveries, and
:func:`tell_quietly`. It is a leaf: it imports nothing from gobucket, so the
timers, the hook runners and the network node can use it without knowing the
actor runtime.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

import pykka

__all__ = ["Recipient", "local", "mark_runtime_thread", "tell_quietly"]


class Recipient(Protocol):
    """Whatever can be told a message: a pykka ref, or a light actor (a task)."""

    def tell(self, message: Any) -> None:
        """Deliver ``message``; raise :class:`pykka.ActorDeadError` if it has stopped."""
        ...


local = threading.local()
"""Per-thread state: ``runtime`` (bool), ``depth`` (inline deliveries in progress),
``claim`` (the mailbox this thread is about to run, see ``Mailbox``)."""


def _depth() -> int:
    return getattr(local, "depth", 0)


def _runtime_thread() -> bool:
    return getattr(local, "runtime", False)


def mark_runtime_thread() -> None:
    """Declare the current thread a runtime thread (tells to idle actors may run inline)."""
    local.runtime = True


def tell_quietly(ref: Recipient, message: Any) -> bool:
    """Tell ``message`` to ``ref``; return False instead of raising if it has stopped."""
    try:
        ref.tell(message)
    except pykka.ActorDeadError:
        return False
    return True
