"""Waiting in tests: generous deadlines and polled conditions, never a fixed sleep."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pykka

T = TypeVar("T")

WAIT = 10.0
"""Generous deadline for anything we wait on."""

POLL = 0.03
"""How often a condition is checked while waiting."""


def wait_until(
    predicate: Callable[[], T], timeout: float = WAIT, interval: float = POLL, what: str = ""
) -> T:
    """Poll ``predicate`` until it returns something truthy; return that, or fail the test."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def future_done(future: pykka.Future[Any]) -> bool:
    """True once ``future`` holds a value or an exception (never blocks)."""
    try:
        future.get(timeout=0)
    except pykka.Timeout:
        return False
    except BaseException:
        return True
    return True


def outcome(future: pykka.Future[Any], timeout: float = WAIT) -> Any:
    """The value of ``future`` or the exception it holds (fails the test if it never ends)."""
    try:
        return future.get(timeout=timeout)
    except pykka.Timeout:
        raise AssertionError(f"a fill future did not resolve within {timeout}s") from None
    except Exception as error:
        return error


def run_threads(target: Callable[[int], Any], count: int, timeout: float = WAIT) -> None:
    """Run ``target(0)`` ... ``target(count - 1)`` on threads at once; fail if one hangs."""
    threads = [threading.Thread(target=target, args=(n,), daemon=True) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not any(thread.is_alive() for thread in threads), "a thread did not finish in time"
