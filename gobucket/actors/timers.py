"""One timer thread for a whole node: a hashed wheel of 1 ms slots keyed by a heap.

Every pending task holds up to two timers (its ``run_after`` and its life
span), so timers must be cheap to add and to cancel: a timer is a small slotted
object in the set of its millisecond slot; cancelling removes it from the set;
a heap holds each non-empty slot number once. When a slot comes due the
thread tells each of its timers' message to its actor.
"""

from __future__ import annotations

import heapq
import logging
import math
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

    __slots__ = ("message", "slot", "target")

    def __init__(self, slot: int, target: pykka.ActorRef[Any], message: Any) -> None:
        self.slot = slot
        self.target = target
        self.message = message


class TimerService:
    """Delivers a message to an actor at a monotonic time, from one thread."""

    def __init__(self, name: str = "gobucket-timer") -> None:
        self._cond = threading.Condition(threading.Lock())
        self._slots: dict[int, set[Timer]] = {}
        self._heap: list[int] = []
        self._wake_slot = math.inf
        self._running = True
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def __len__(self) -> int:
        with self._cond:
            return sum(len(s) for s in self._slots.values())

    def schedule(self, due: float, target: pykka.ActorRef[Any], message: Any) -> Timer:
        """Tell ``message`` to ``target`` at ``due`` (a ``time.monotonic()`` value)."""
        slot = math.ceil(due / RESOLUTION)
        timer = Timer(slot, target, message)
        with self._cond:
            bucket = self._slots.get(slot)
            if bucket is None:
                self._slots[slot] = {timer}
                heapq.heappush(self._heap, slot)
                if slot < self._wake_slot:
                    self._cond.notify()
            else:
                bucket.add(timer)
        return timer

    def cancel(self, timer: Timer | None) -> None:
        """Cancel a timer; harmless if it already fired or was cancelled."""
        if timer is None:
            return
        with self._cond:
            bucket = self._slots.get(timer.slot)
            if bucket is not None:
                bucket.discard(timer)

    def stop(self) -> None:
        """Stop the thread; timers not yet due never fire."""
        with self._cond:
            self._running = False
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(5.0)

    def _run(self) -> None:
        from gobucket.actors.runtime import mark_runtime_thread, tell_quietly

        mark_runtime_thread()
        cond = self._cond
        heap = self._heap
        slots = self._slots
        monotonic = time.monotonic
        while True:
            with cond:
                due_now: list[Timer] = []
                while self._running:
                    if not heap:
                        self._wake_slot = math.inf
                        cond.wait()
                        continue
                    now_slot = monotonic() / RESOLUTION
                    if heap[0] > now_slot:
                        self._wake_slot = heap[0]
                        cond.wait((heap[0] - now_slot) * RESOLUTION)
                        continue
                    while heap and heap[0] <= now_slot:
                        bucket = slots.pop(heapq.heappop(heap), None)
                        if bucket:
                            due_now.extend(bucket)
                    if due_now:
                        break
                if not self._running:
                    return
                self._wake_slot = -math.inf  # firing: schedule() need not wake us
            for timer in due_now:
                try:
                    tell_quietly(timer.target, timer.message)
                except Exception:
                    logger.exception("timer delivery to %s failed", timer.target)
