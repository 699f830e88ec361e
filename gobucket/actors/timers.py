"""One timer thread for a whole node: a hashed wheel of 1 ms slots keyed by a heap.

Every pending task holds up to two timers (its ``run_after`` and its life
span), so timers must be cheap to add and to cancel. The timer thread alone
owns the wheel (a dict from slot to the set of its timers, and a heap holding
each non-empty slot once); ``schedule`` and ``cancel`` only append a request
to a deque, and wake the thread only when it must. No Python lock is taken on
the caller's side, so a signal handler that interrupts a caller can never
deadlock against the timer thread.
"""

from __future__ import annotations

import collections
import heapq
import logging
import math
import queue
import threading
import time
from typing import Any

from gobucket import _threads
from gobucket._threads import Recipient, mark_runtime_thread

__all__ = ["Timer", "TimerService"]

logger = logging.getLogger("gobucket.timers")

RESOLUTION = 0.001
"""Seconds per wheel slot; a timer never fires before its due time."""


class Timer:
    """A handle on one scheduled message; pass it to :meth:`TimerService.cancel`."""

    __slots__ = ("cancelled", "message", "slot", "target")

    target: Recipient | None
    """Who is told ``message``; None once the timer fired or was cancelled."""

    def __init__(self, slot: int, target: Recipient, message: Any) -> None:
        self.slot = slot
        self.target = target
        self.message = message
        self.cancelled = False


_STOP: Any = object()
_BATCH = 4096
"""Requests that may wait in the deque before the timer thread is woken for them."""

_MAX_SLEEP = 60.0
"""Longest single wait of the timer thread, in seconds.

However far the earliest timer is, the thread waits at most this long and then
looks again: a wait of billions of seconds overflows the platform's timeout
(OverflowError), which used to kill the thread and every timer with it.
"""

_NEVER = 1 << 62
"""The slot of a timer due at +infinity: kept in the wheel, never due."""

_BACKOFF_MIN = 0.01
_BACKOFF_MAX = 1.0
"""Pause before restarting a faulted timer loop: 10 ms, doubling while it keeps
faulting (it ran less than ``_BACKOFF_MAX`` before faulting again), up to 1 s."""


class TimerService:
    """Delivers a message to an actor at a monotonic time, from one thread.

    The thread is supervised: an unexpected error in its loop is logged on the
    ``gobucket.timers`` logger and the loop restarted (counted in
    :attr:`restarts`) with every timer kept.
    """

    def __init__(self, name: str = "gobucket-timer") -> None:
        # Requests land in a deque (append and popleft are atomic); the thread is
        # woken through a SimpleQueue only when a request is due before the time
        # it sleeps until, or when requests pile up: not once per timer.
        self._incoming: collections.deque[Timer] = collections.deque()
        self._wake: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._wake_slot: float = math.inf
        self._slots: dict[int, set[Timer]] = {}
        self._heap: list[int] = []
        # Timers taken off the wheel as due and not yet delivered: state of the
        # service, not of one loop run, so that a restarted loop delivers them.
        self._due: collections.deque[Timer] = collections.deque()
        self._count = 0
        self._stopping = threading.Event()
        self.restarts = 0
        """How many times the timer loop was restarted after an unexpected error."""
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def __len__(self) -> int:
        """Timers in the wheel (requests not yet taken in by the thread are not counted)."""
        return self._count

    def schedule(self, due: float, target: Recipient, message: Any) -> Timer:
        """Tell ``message`` to ``target`` at ``due`` (a ``time.monotonic()`` value).

        A ``due`` of +infinity is kept but never fires (until cancelled); one of
        -infinity fires at once. NaN raises :class:`ValueError`.
        """
        try:
            slot = math.ceil(due / RESOLUTION)
        except (OverflowError, ValueError):  # costs nothing unless raised
            slot = _infinite_slot(due)
        timer = Timer(slot, target, message)
        incoming = self._incoming
        incoming.append(timer)
        if slot < self._wake_slot or len(incoming) > _BATCH:
            self._wake.put(None)
        return timer

    def cancel(self, timer: Timer | None) -> None:
        """Cancel a timer; harmless if it already fired or was cancelled."""
        if timer is None or timer.cancelled:
            return
        timer.cancelled = True
        # Let go of the target now: a cancelled timer may wait in the wheel until
        # the thread next wakes, and must not keep a finished task alive so long.
        timer.target = None
        incoming = self._incoming
        incoming.append(timer)  # so that the thread frees its slot entry
        if len(incoming) > _BATCH:
            self._wake.put(None)

    def stop(self) -> None:
        """Stop the thread; timers not yet due never fire."""
        self._stopping.set()  # ends a restart back-off at once
        self._wake.put(_STOP)
        if threading.current_thread() is not self._thread:
            self._thread.join(5.0)

    def _take(self, timer: Timer) -> None:
        slots = self._slots
        bucket = slots.get(timer.slot)
        if timer.cancelled:
            if bucket is not None and timer in bucket:
                bucket.discard(timer)
                self._count -= 1
            return
        if bucket is None:
            slots[timer.slot] = {timer}
            heapq.heappush(self._heap, timer.slot)
        else:
            bucket.add(timer)
        self._count += 1

    def _take_incoming(self) -> None:
        """Move every request from the deque into the wheel (timer thread only)."""
        incoming = self._incoming
        take = self._take
        while incoming:
            timer = incoming.popleft()
            try:
                take(timer)
            except BaseException:
                # Only this thread pops, so putting it back at the front is
                # safe: the restarted loop takes it in again.
                incoming.appendleft(timer)
                raise

    def _run(self) -> None:
        """Supervise the timer loop: restart it after an unexpected error."""
        mark_runtime_thread()
        backoff = _BACKOFF_MIN
        while True:
            started = time.monotonic()
            try:
                self._loop()
                return  # stopped
            # BaseException too: nothing but stop() may end the one timer thread
            # of the process, or no timer would ever fire again.
            except BaseException:
                logger.exception("timer thread failed; restarting it with every timer kept")
            self.restarts += 1
            if time.monotonic() - started >= _BACKOFF_MAX:
                backoff = _BACKOFF_MIN  # it ran fine for a while: an isolated fault
            # A pause keeps a fault that repeats from spinning a core; the timers
            # stay in the wheel and the deque meanwhile.
            if self._stopping.wait(backoff):
                return
            backoff = min(backoff * 2, _BACKOFF_MAX)

    def _loop(self) -> None:
        tell_quietly = _threads.tell_quietly  # looked up when the loop starts
        wake = self._wake
        heap = self._heap
        slots = self._slots
        due = self._due
        monotonic = time.monotonic
        take_incoming = self._take_incoming
        while True:
            # Deliver what was found due (and, after a restart, what a fault left).
            while due:
                timer = due.popleft()
                self._count -= 1
                if timer.cancelled:
                    continue
                timer.cancelled = True  # fired: a later cancel() is a no-op
                target = timer.target
                if target is None:
                    continue  # cancelled by another thread just now
                timer.target = None
                try:
                    tell_quietly(target, timer.message)
                except Exception:
                    logger.exception("timer delivery to %s failed", target)
                target = None  # a sleeping thread must not keep the last task alive
            # Publish when we mean to wake up *before* taking requests in: a
            # request for an earlier time arriving after this wakes us.
            self._wake_slot = heap[0] if heap else math.inf
            take_incoming()
            if heap and heap[0] < self._wake_slot:
                continue  # an earlier timer was just taken in: recompute
            timeout = (
                None if not heap else min(_MAX_SLEEP, max(0.0, heap[0] * RESOLUTION - monotonic()))
            )
            try:
                token = wake.get(timeout=timeout)
            except queue.Empty:
                token = None
            if token is _STOP:
                return
            self._wake_slot = -math.inf  # taking in and firing: no need to wake us
            take_incoming()
            now_slot = monotonic() / RESOLUTION
            while heap and heap[0] <= now_slot:
                bucket = slots.pop(heapq.heappop(heap), None)
                if bucket:
                    due.extend(bucket)


def _infinite_slot(due: float) -> int:
    """The slot of a due time too large (or small) for a slot number."""
    if math.isnan(due):
        raise ValueError("a timer's due time must not be NaN")
    return _NEVER if due > 0 else 0
