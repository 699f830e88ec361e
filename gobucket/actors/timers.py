"""One timer thread for a whole node: a hashed wheel of 1 ms slots keyed by a heap.

Every pending task holds up to two timers (its ``run_after`` and its life
span), so timers must be cheap to add and to cancel. The timer thread alone
owns the wheel (a dict from slot to the set of its timers, and a heap holding
each non-empty slot once); ``schedule`` and ``cancel`` only drop a request in
a :class:`queue.SimpleQueue`, which is also what wakes the thread. No Python
lock is taken on the caller's side, so a signal handler that interrupts a
caller can never deadlock against the timer thread.
"""

from __future__ import annotations

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


class TimerService:
    """Delivers a message to an actor at a monotonic time, from one thread."""

    def __init__(self, name: str = "gobucket-timer") -> None:
        self._requests: queue.SimpleQueue[Timer] = queue.SimpleQueue()
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
        timer = Timer(math.ceil(due / RESOLUTION), target, message)
        self._requests.put(timer)
        return timer

    def cancel(self, timer: Timer | None) -> None:
        """Cancel a timer; harmless if it already fired or was cancelled."""
        if timer is None or timer.cancelled:
            return
        timer.cancelled = True
        self._requests.put(timer)  # so that the thread frees its slot entry now

    def stop(self) -> None:
        """Stop the thread; timers not yet due never fire."""
        self._requests.put(_STOP)
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
        requests = self._requests
        heap = self._heap
        slots = self._slots
        monotonic = time.monotonic
        take = self._take
        while True:
            # Sleep until the next slot is due or a request arrives.
            timeout = None
            if heap:
                timeout = max(0.0, heap[0] * RESOLUTION - monotonic())
            try:
                request = requests.get(timeout=timeout)
            except queue.Empty:
                pass
            else:
                while True:
                    if request is _STOP:
                        return
                    take(request)
                    try:
                        request = requests.get_nowait()
                    except queue.Empty:
                        break
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
