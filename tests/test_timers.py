"""TimerService: one thread delivering messages to actors at monotonic times."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from conftest import WAIT

from gobucket.actors.runtime import RuntimeActor
from gobucket.actors.timers import TimerService


class Inbox(RuntimeActor):
    """Records (message, monotonic time received)."""

    def __init__(self, received: list[tuple[Any, float]], cond: threading.Condition) -> None:
        super().__init__()
        self.received = received
        self.cond = cond

    def on_receive(self, message: Any) -> Any:
        now = time.monotonic()
        with self.cond:
            self.received.append((message, now))
            self.cond.notify_all()
        return None


@pytest.fixture
def timers():
    service = TimerService(name="test-timer")
    yield service
    service.stop()


@pytest.fixture
def inbox():
    received: list[tuple[Any, float]] = []
    cond = threading.Condition()
    ref = Inbox.start(received, cond)

    def wait_for(messages: set[Any]) -> bool:
        with cond:
            return cond.wait_for(lambda: messages <= {m for m, _ in received}, WAIT)

    yield ref, received, wait_for
    ref.stop()


def test_timers_never_fire_early(timers, inbox):
    ref, received, wait_for = inbox
    now = time.monotonic()
    dues = {f"t{k}": now + 0.003 * k + 0.0007 * (k % 3) for k in range(30)}
    for name, due in dues.items():
        timers.schedule(due, ref, name)
    assert wait_for(set(dues))
    for message, fired_at in received:
        assert fired_at >= dues[message], message


def test_timers_fire_in_due_order(timers, inbox):
    ref, received, wait_for = inbox
    now = time.monotonic()
    for k in reversed(range(10)):
        timers.schedule(now + 0.01 + 0.005 * k, ref, k)
    assert wait_for(set(range(10)))
    assert [m for m, _ in received] == list(range(10))


def test_timer_due_in_the_past_fires_promptly(timers, inbox):
    ref, received, wait_for = inbox
    timers.schedule(time.monotonic() - 1.0, ref, "late")
    assert wait_for({"late"})
    assert [m for m, _ in received] == ["late"]


def test_cancelled_timer_never_fires(timers, inbox):
    ref, received, wait_for = inbox
    now = time.monotonic()
    cancelled = timers.schedule(now + 0.05, ref, "cancelled")
    kept = timers.schedule(now + 0.06, ref, "kept")
    timers.cancel(cancelled)
    timers.cancel(cancelled)  # twice is harmless
    timers.cancel(None)
    timers.schedule(now + 0.15, ref, "sentinel")
    assert wait_for({"kept", "sentinel"})
    assert "cancelled" not in {m for m, _ in received}
    timers.cancel(kept)  # cancelling a fired timer is harmless
    assert [m for m, _ in received].count("kept") == 1


def test_concurrent_schedules_and_cancels_deliver_exactly_the_kept_timers(timers, inbox):
    ref, received, wait_for = inbox
    start = time.monotonic()
    barrier = threading.Barrier(4)

    def work(worker: int) -> None:
        barrier.wait(WAIT)
        for i in range(100):
            timer = timers.schedule(start + 0.05 + 0.0003 * i, ref, (worker, i))
            if i % 2 == 0:
                timers.cancel(timer)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    timers.schedule(time.monotonic() + 0.1, ref, "sentinel")
    kept = {(w, i) for w in range(4) for i in range(100) if i % 2}
    assert wait_for(kept | {"sentinel"})
    delivered = [m for m, _ in received if m != "sentinel"]
    assert sorted(delivered) == sorted(kept)


def test_stopped_service_never_fires_pending_timers(inbox):
    ref, received, _ = inbox
    service = TimerService(name="test-timer-stop")
    service.schedule(time.monotonic() + 0.05, ref, "pending")
    service.stop()
    time.sleep(0.15)  # past its due time: give a wrong delivery a chance
    assert received == []
