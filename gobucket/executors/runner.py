"""The runner side of hooks: what a hook runner is, and how it tells an actor a hook ended.

A *hook runner* runs an executor's hooks off the dispatcher threads and tells
the task actor the result by message (:class:`HookDone`).
gobucket has two: worker threads for plain ``def`` hooks
(:class:`~gobucket.executors.thread.ThreadHookRunner`, which also runs other
blocking work with ``run_blocking``) and one event loop for ``async def`` hooks
(:class:`~gobucket.executors.async_.AsyncHookRunner`).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, Protocol

import pykka

from gobucket._threads import Recipient

__all__ = ["HookDone", "HookKind", "HookRunner", "RunHandle", "never_started", "report"]

logger = logging.getLogger("gobucket.executors")


class HookKind(enum.IntEnum):
    """Which hook a hook runner ran (carried back in :class:`HookDone`)."""

    EXECUTE = 0
    END = 1


class HookDone(NamedTuple):
    """A hook runner finished a hook; ``error`` is what it raised, if anything.

    (The messages on the hot path are NamedTuples: as immutable as a frozen
    dataclass, and four times cheaper to build.)
    """

    kind: HookKind
    error: BaseException | None = None


EXECUTED_OK = HookDone(HookKind.EXECUTE)
END_OK = HookDone(HookKind.END)
_EXECUTE = HookKind.EXECUTE


def never_started(kind: HookKind, args: tuple[Any, ...]) -> bool:
    """True for an ``on_execute`` whose task was drained, exhausted or rescued while queued."""
    return kind is _EXECUTE and bool(args) and getattr(args[0], "cancelled", False) is True


def report(reply_to: Recipient, kind: HookKind, error: BaseException | None) -> None:
    """Tell ``reply_to`` that a hook of ``kind`` ended (with ``error``, if it raised)."""
    if error is not None:
        message = HookDone(kind, error)
    else:
        message = EXECUTED_OK if kind is _EXECUTE else END_OK
    try:
        reply_to.tell(message)
    except pykka.ActorDeadError:
        pass  # the task ended meanwhile: its result is not wanted
    except Exception:
        logger.exception("could not report a hook result to %s", reply_to)


class RunHandle(Protocol):
    """What a runner returns for a started hook, so that it can be cancelled."""

    def cancel(self) -> bool:
        """Try to cancel the hook; True if it will not complete normally."""
        ...


class HookRunner(Protocol):
    """Runs hooks off the dispatcher threads and tells the result back to an actor.

    When the hook returns or raises, the runner tells ``reply_to`` a
    :class:`HookDone` of ``kind`` with the error (if any).
    """

    def submit(
        self,
        fn: Callable[..., Any] | Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        reply_to: Recipient,
        kind: HookKind,
        *,
        urgent: bool = False,
    ) -> RunHandle | None:
        """Start ``fn(*args)``; urgent work (rescue) must not wait behind busy workers."""
        ...
