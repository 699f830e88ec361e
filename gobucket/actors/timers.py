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

import pykka

__all__ = ["Timer", "TimerService"]

logger = logging.getLogger("gobucket.timers")

RESOLUTION = 0.001
"""Seconds per wheel slot; a timer never fires before its due time."""


class Timer:
    """A handle on one scheduled message; pass it to :meth:`TimerService.cancel`."""

    __slots__ = ("cancelled", "message", "slot", "target")

    def __init__(self, slot: int, target: pykka.ActorRef[Any], message: Any) -> None:
        self.slot = slot
        self.target = target
        self.message = message
        self.cancelled = False


_STOP: Any = object()
_BATCH = 4096
"""Requests that may wait in the deque before the timer thread is woken for them."""


class TimerService:
    """Delivers a message to an actor at a monotonic time, from one thread."""

    def __init__(self, name: str = "gobucket-timer") -> None:
        # Requests land in a deque (append and popleft are atomic); the thread is
        # woken through a SimpleQueue only when a request is due before the time
        # it sleeps until, or when requests pile up: not once per timer.
        self._incoming: collections.deque[Timer] = collections.deque()
        self._wake: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._wake_slot: float = math.inf
        self._slots: dict[int, set[Timer]] = {}
        self._heap: list[int] = []
        self._count = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def __len__(self) -> int:
        """Timers in the wheel (requests not yet taken in by the thread are not counted)."""
        return self._count

    def schedule(self, due: float, target: pykka.ActorRef[Any], message: Any) -> Timer:
        """Tell ``message`` to ``target`` at ``due`` (a ``time.monotonic()`` value)."""
        slot = math.ceil(due / RESOLUTION)
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
        incoming = self._incoming
        incoming.append(timer)  # so that the thread frees its slot entry
        if len(incoming) > _BATCH:
            self._wake.put(None)

    def stop(self) -> None:
        """Stop the thread; timers not yet due never fire."""
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

    def _run(self) -> None:
        from gobucket.actors.runtime import mark_runtime_thread, tell_quietly

        mark_runtime_thread()
        incoming = self._incoming
        wake = self._wake
        heap = self._heap
        slots = self._slots
        monotonic = time.monotonic
        take = self._take
        while True:
            # Publish when we mean to wake up *before* taking requests in: a
            # request for an earlier time arriving after this wakes us.
            self._wake_slot = heap[0] if heap else math.inf
            while incoming:
                take(incoming.popleft())
            if heap and heap[0] < self._wake_slot:
                continue  # an earlier timer was just taken in: recompute
            timeout = None if not heap else max(0.0, heap[0] * RESOLUTION - monotonic())
            try:
                token = wake.get(timeout=timeout)
            except queue.Empty:
                token = None
            if token is _STOP:
                return
            self._wake_slot = -math.inf  # taking in and firing: no need to wake us
            while incoming:
                take(incoming.popleft())
            now_slot = monotonic() / RESOLUTION
            due: list[Timer] = []
            while heap and heap[0] <= now_slot:
                bucket = slots.pop(heapq.heappop(heap), None)
                if bucket:
                    due.extend(bucket)
            for timer in due:
                self._count -= 1
                if timer.cancelled:
                    continue
                timer.cancelled = True  # fired: a later cancel() is a no-op
                try:
                    tell_quietly(timer.target, timer.message)
                except Exception:
                    logger.exception("timer delivery to %s failed", timer.target)
