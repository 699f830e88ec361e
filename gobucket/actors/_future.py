"""A light pykka future: a one-shot latch instead of a condition variable."""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import pykka

from gobucket.actors._pykka import init_future, set_get_hook_unset

if TYPE_CHECKING:
    from gobucket.actors._pykka import GetHookFunc, OptExcInfo

__all__ = ["CallbackFuture", "LatchFuture"]

T = TypeVar("T")

logger = logging.getLogger("gobucket.runtime")

_UNSET: Any = object()


class LatchFuture(pykka.Future[T]):
    """A :class:`pykka.Future` that costs one lock, set at most once.

    Most asks in gobucket are answered before the asker waits (the runtime
    runs an idle actor's handler on the asking thread), so the future must be
    cheap to make and to read; a waiter only blocks on the latch when the
    answer is still on its way.
    """

    __slots__ = ("_exc_info", "_latch", "_value")

    def __init__(self) -> None:
        # pykka.Future.__init__ is skipped on purpose (it costs a microsecond we
        # pay on every ask); the get-hook field it sets is set here instead.
        init_future(self)
        self._value: Any = _UNSET
        self._exc_info: OptExcInfo | None = None
        self._latch = threading.Lock()
        self._latch.acquire()

    def done(self) -> bool:
        """True once a value or an exception was set."""
        return self._value is not _UNSET or self._exc_info is not None

    def get(self, *, timeout: float | None = None) -> Any:
        """Wait for the value (or raise the exception), like :meth:`pykka.Future.get`."""
        if self._get_hook is not None:  # pykka private field (see gobucket.actors._pykka)
            return super().get(timeout=timeout)
        if not self.done():
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                wait = -1.0 if deadline is None else max(0.0, deadline - time.monotonic())
                if self._latch.acquire(timeout=wait):
                    self._latch.release()
                    break
                if self.done():
                    break
                raise pykka.Timeout(f"{timeout} seconds")
        if self._exc_info is not None:
            _, exc_value, exc_tb = self._exc_info
            assert exc_value is not None
            raise exc_value.with_traceback(exc_tb)
        return self._value

    def set(self, value: Any | None = None) -> None:
        """Set the value; a second set raises :class:`queue.Full`, as pykka's futures do."""
        if self.done():
            raise queue.Full
        self._value = value
        self._latch.release()

    def set_exception(self, exc_info: OptExcInfo | None = None) -> None:
        """Set an exception (from ``sys.exc_info()`` by default) to raise in ``get``."""
        if self.done():
            raise queue.Full
        self._exc_info = exc_info if exc_info is not None else sys.exc_info()
        self._latch.release()

    def set_get_hook(self, func: GetHookFunc[T]) -> None:
        """Compute the value lazily on ``get`` (used by pykka's map/filter/join)."""
        if self.done():
            raise queue.Full
        set_get_hook_unset(self)
        super().set_get_hook(func)


class CallbackFuture(LatchFuture[T]):
    """A :class:`LatchFuture` that also calls ``done(value, error)`` once it is set.

    ``done`` runs on the thread that sets the future (the one that handled the
    message); an exception it raises is logged, never passed to that thread.
    """

    __slots__ = ("_done",)

    def __init__(self, done: Callable[[Any, BaseException | None], None]) -> None:
        super().__init__()
        self._done = done

    def set(self, value: Any | None = None) -> None:
        """Set the value, then call ``done(value, None)``."""
        super().set(value)
        self._notify(value, None)

    def set_exception(self, exc_info: OptExcInfo | None = None) -> None:
        """Set the exception, then call ``done(None, exception)``."""
        super().set_exception(exc_info)
        assert self._exc_info is not None
        self._notify(None, self._exc_info[1])

    def _notify(self, value: Any, error: BaseException | None) -> None:
        try:
            self._done(value, error)
        except Exception:
            logger.exception("the callback of an answer raised")


def failed_future(error: BaseException) -> LatchFuture[Any]:
    """A future already holding ``error``."""
    future: LatchFuture[Any] = LatchFuture()
    future.set_exception((type(error), error, error.__traceback__))
    return future


def done_future(value: Any) -> LatchFuture[Any]:
    """A future already holding ``value``."""
    future: LatchFuture[Any] = LatchFuture()
    future.set(value)
    return future
