"""TimerService: one thread delivering messages to actors at monotonic times."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from helpers.waiting import WAIT, run_threads

import gobucket._threads as threads_module
from gobucket.actors.actor import RuntimeActor
from gobucket.actors.timers import Timer, TimerService


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

    run_threads(work, 4)
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


def wait_until(predicate: Callable[[], Any], what: str) -> None:
    """Poll ``predicate`` until true, failing the test after WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


# --- far-future due times -------------------------------------------------------------


def test_far_future_timers_do_not_kill_the_thread(timers, inbox):
    """A wait past threading.TIMEOUT_MAX (~9.2e9 s) used to raise OverflowError in the thread."""
    ref, received, wait_for = inbox
    now = time.monotonic()
    far = [
        timers.schedule(now + threading.TIMEOUT_MAX * 10, ref, "far"),
        timers.schedule(now + 1e300, ref, "farther"),
        timers.schedule(math.inf, ref, "never"),
    ]
    wait_until(lambda: len(timers) == 3, "the far timers taken into the wheel")
    time.sleep(0.05)  # the thread is now waiting on the earliest (far) one
    timers.schedule(time.monotonic() + 0.02, ref, "near")
    timers.schedule(-math.inf, ref, "past")
    assert wait_for({"near", "past"})
    assert timers.restarts == 0  # not rescued by the supervisor: the wait is capped
    assert {m for m, _ in received} == {"near", "past"}
    assert len(timers) == 3  # the far ones are kept...
    for timer in far:
        timers.cancel(timer)
    timers.schedule(time.monotonic(), ref, "flush")  # wakes the thread to take cancels in
    assert wait_for({"flush"})
    assert len(timers) == 0  # ...and cancellable


def test_nan_due_time_is_refused_by_the_caller(timers, inbox):
    ref, _, wait_for = inbox
    with pytest.raises(ValueError, match="NaN"):
        timers.schedule(math.nan, ref, "nan")
    timers.schedule(time.monotonic(), ref, "after")
    assert wait_for({"after"})


# --- supervision: a fault in the loop restarts it, keeping every timer ----------------


@pytest.fixture
def timer_errors(caplog):
    caplog.set_level(logging.ERROR, logger="gobucket.timers")

    def records() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "gobucket.timers"]

    return records


def fail_take(timers: TimerService, times: int) -> list[set[Any]]:
    """Make the next ``times`` calls of the thread's ``_take`` raise; return wheel snapshots.

    Each snapshot holds the messages in the wheel when a fault was injected.
    """
    real = timers._take
    snapshots: list[set[Any]] = []

    def take(timer: Timer) -> None:
        if len(snapshots) < times:
            snapshots.append({t.message for slot in timers._slots.values() for t in slot})
            raise RuntimeError("injected timer fault")
        real(timer)

    timers._take = take  # type: ignore[method-assign]
    return snapshots


def test_fault_in_the_timer_loop_is_logged_and_every_timer_still_fires(timers, inbox, timer_errors):
    ref, received, wait_for = inbox
    # In the wheel before the fault (due well after it, even on a loaded machine).
    wheel_due = time.monotonic() + 1.5
    before = {f"wheel-{k}" for k in range(5)}
    for name in sorted(before):
        timers.schedule(wheel_due, ref, name)
    wait_until(lambda: len(timers) == len(before), "the timers taken into the wheel")
    snapshots = fail_take(timers, 1)
    # The request whose taking-in faults: it stays in the deque and is taken in again.
    timers.schedule(time.monotonic() + 0.01, ref, "in-flight")
    wait_until(lambda: timers.restarts == 1, "the timer loop restarted")
    assert snapshots == [before], "the fault hit after the wheel timers fired: too slow"
    (record,) = timer_errors()
    assert record.exc_info is not None and "injected timer fault" in str(record.exc_info[1])
    # And a timer scheduled after the fault.
    timers.schedule(time.monotonic() + 0.01, ref, "after")
    assert wait_for(before | {"in-flight", "after"})
    assert sorted(m for m, _ in received) == sorted(before | {"in-flight", "after"})
    assert timers.restarts == 1
    assert len(timers) == 0


def test_timers_due_but_undelivered_when_the_loop_faults_are_delivered(
    inbox, timer_errors, monkeypatch
):
    """A fault while delivering a batch: the rest of the batch is delivered after the restart.

    The timer whose own delivery raised is not delivered again (at most once: it may
    have reached its actor).
    """
    ref, received, wait_for = inbox
    real_tell = threads_module.tell_quietly
    name = "test-timer-deliver"
    gate = threading.Event()
    in_gate = threading.Event()
    pending: list[int] = []

    class Fault(BaseException):
        """Escapes the per-delivery ``except Exception``: it faults the loop itself."""

    def tell(target: Any, message: Any) -> bool:
        if threading.current_thread().name == name:
            if message == "gate":  # hold the thread while the batch is scheduled
                in_gate.set()
                gate.wait(WAIT)
            elif message == "boom":
                pending.append(len(service._due))
                raise Fault("injected delivery fault")
        return real_tell(target, message)

    # The loop looks tell_quietly up when it starts: patch it before the service starts.
    monkeypatch.setattr(threads_module, "tell_quietly", tell)
    service = TimerService(name=name)
    try:
        service.schedule(time.monotonic(), ref, "gate")
        assert in_gate.wait(WAIT)
        # Both already due, "boom" one slot earlier: taken off the wheel in one go
        # when the gate opens, "boom" delivered first.
        now = time.monotonic()
        service.schedule(now - 0.002, ref, "boom")
        batch = {f"batch-{k}" for k in range(20)}
        for message in sorted(batch):
            service.schedule(now - 0.001, ref, message)
        gate.set()
        wait_until(lambda: service.restarts == 1, "the delivery fault restarting the loop")
        assert pending == [len(batch)]
        service.schedule(time.monotonic(), ref, "after")
        assert wait_for(batch | {"gate", "after"})
        assert sorted(m for m, _ in received) == sorted(batch | {"gate", "after"})
        assert [r.exc_info[0] for r in timer_errors() if r.exc_info] == [Fault]
        assert len(service) == 0
    finally:
        gate.set()
        service.stop()


def test_repeated_faults_back_off_and_lose_nothing(timers, inbox, timer_errors):
    ref, received, wait_for = inbox
    snapshots = fail_take(timers, 4)
    timers.schedule(time.monotonic(), ref, "patient")
    assert wait_for({"patient"})
    assert len(snapshots) == 4
    assert timers.restarts == 4
    assert len(timer_errors()) == 4
    timers.schedule(time.monotonic(), ref, "after")
    assert wait_for({"after"})
    assert [m for m, _ in received] == ["patient", "after"]


def test_stop_ends_a_loop_that_keeps_faulting(inbox, timer_errors):
    ref, _, _ = inbox
    service = TimerService(name="test-timer-faulting")
    fail_take(service, 10**9)
    service.schedule(time.monotonic(), ref, "never-taken")
    wait_until(lambda: service.restarts >= 3, "a few restarts")
    service.stop()
    assert not service._thread.is_alive()
