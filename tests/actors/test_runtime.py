"""RuntimeActor: pykka actors on shared dispatcher threads."""

from __future__ import annotations

import threading
import time
from typing import Any

import pykka
import pytest
from helpers.waiting import WAIT

from gobucket import ActorRuntime
from gobucket.actors.actor import RuntimeActor
from gobucket.actors.runtime import default_runtime


class Calculator(RuntimeActor):
    def __init__(self, start: int = 0) -> None:
        super().__init__()
        self.value = start
        self.events: list[str] = []

    def on_start(self) -> None:
        self.events.append("start")

    def on_stop(self) -> None:
        self.events.append("stop")

    def on_receive(self, message: Any) -> Any:
        if message == "events":
            return list(self.events)
        if message == "value":
            return self.value
        if isinstance(message, int):
            self.value += message
            return self.value
        if message == "fail":
            raise ValueError("asked to fail")
        return super().on_receive(message)

    def add(self, a: int, b: int) -> int:
        return a + b


@pytest.fixture
def runtime():
    rt = ActorRuntime(dispatchers=2, workers=2, name="test-rt")
    yield rt
    rt.shutdown()


def test_actor_starts_and_answers_asks():
    ref = Calculator.start(10)
    try:
        assert ref.is_alive()
        assert ref.ask(5) == 15
        assert ref.ask("events") == ["start"]
    finally:
        ref.stop()


def test_told_messages_are_handled_before_a_later_ask():
    ref = Calculator.start()
    try:
        for _ in range(100):
            ref.tell(1)
        assert ref.ask("value", timeout=WAIT) == 100
    finally:
        ref.stop()


def test_messages_from_one_sender_are_handled_in_order():
    seen: list[int] = []

    class Log(RuntimeActor):
        def on_receive(self, message: Any) -> Any:
            if message == "done":
                return list(seen)
            seen.append(message)
            return None

    ref = Log.start()
    try:
        for i in range(500):
            if i % 7 == 0:
                ref.ask(i)
            else:
                ref.tell(i)
        assert ref.ask("done", timeout=WAIT) == list(range(500))
    finally:
        ref.stop()


def test_proxy_calls_methods_and_reads_and_writes_attributes():
    ref = Calculator.start(3)
    try:
        proxy = ref.proxy()
        assert proxy.add(2, 3).get(timeout=WAIT) == 5
        assert proxy.value.get(timeout=WAIT) == 3
        proxy.value = 42
        assert ref.ask("value") == 42
    finally:
        ref.stop()


def test_stop_runs_on_stop_and_later_asks_and_tells_raise_actor_dead_error():
    ref = Calculator.start()
    actor_events = ref.proxy().events.get(timeout=WAIT)
    assert ref.stop() is True
    assert not ref.is_alive()
    assert actor_events == ["start", "stop"]  # the same list object, appended on stop
    with pytest.raises(pykka.ActorDeadError):
        ref.ask("value", timeout=WAIT)
    with pytest.raises(pykka.ActorDeadError):
        ref.tell(1)
    assert ref.stop() is False  # already dead


def test_asks_queued_behind_a_stop_fail_with_actor_dead_error(runtime):
    entered = threading.Event()
    release = threading.Event()

    class Blocker(RuntimeActor):
        def on_receive(self, message: Any) -> Any:
            if message == "block":
                entered.set()
                release.wait(WAIT)
            return message

    ref = Blocker.start_on(runtime)
    ref.tell("block")  # from a plain thread: handled on a dispatcher
    assert entered.wait(WAIT)
    stopping = ref.stop(block=False)
    pending = ref.ask("ping", block=False)
    release.set()
    assert stopping.get(timeout=WAIT) is True
    with pytest.raises(pykka.ActorDeadError):
        pending.get(timeout=WAIT)


def test_an_ask_whose_handler_raises_gets_the_error_and_the_actor_lives_on():
    ref = Calculator.start()
    try:
        with pytest.raises(ValueError, match="asked to fail"):
            ref.ask("fail", timeout=WAIT)
        assert ref.is_alive()
        assert ref.ask(1) == 1
    finally:
        ref.stop()


def test_a_told_message_whose_handler_raises_stops_the_actor_and_calls_on_failure():
    failed = threading.Event()
    captured: list[BaseException | None] = []

    class Fragile(RuntimeActor):
        def on_receive(self, message: Any) -> Any:
            raise KeyError(message)

        def on_failure(self, exc_type, exc_value, tb) -> None:
            captured.append(exc_value)
            failed.set()

    ref = Fragile.start()
    ref.tell("boom")
    assert failed.wait(WAIT)
    assert isinstance(captured[0], KeyError)
    with pytest.raises(pykka.ActorDeadError):
        ref.ask("anything", timeout=WAIT)


def test_an_actor_never_handles_two_messages_at_once():
    class Guarded(RuntimeActor):
        def __init__(self) -> None:
            super().__init__()
            self.entry = threading.Lock()
            self.overlaps = 0
            self.count = 0

        def on_receive(self, message: Any) -> Any:
            if not self.entry.acquire(blocking=False):
                self.overlaps += 1
                return None
            try:
                if message == "report":
                    return (self.count, self.overlaps)
                count = self.count
                time.sleep(0)  # yield the GIL inside the handler: invite a second thread
                self.count = count + 1
                return None
            finally:
                self.entry.release()

    ref = Guarded.start()
    threads_n, per_thread = 8, 400
    barrier = threading.Barrier(threads_n)

    def send() -> None:
        barrier.wait(WAIT)
        for i in range(per_thread):
            if i % 5 == 0:
                ref.ask("hit", timeout=WAIT)  # inline on this thread when the actor is idle
            else:
                ref.tell("hit")  # queued for a dispatcher

    try:
        threads = [threading.Thread(target=send) for _ in range(threads_n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT * 3)
        assert not any(t.is_alive() for t in threads)
        assert ref.ask("report", timeout=WAIT) == (threads_n * per_thread, 0)
    finally:
        ref.stop()


def test_actors_telling_each_other_from_runtime_threads_never_overlap(runtime):
    # Tells from dispatcher threads take the inline path (run on the sender's thread).
    total = 4000
    done = threading.Event()
    handled = [0]
    handled_lock = threading.Lock()

    class PingPong(RuntimeActor):
        def __init__(self) -> None:
            super().__init__()
            self.entry = threading.Lock()
            self.overlaps = 0
            self.peer: pykka.ActorRef[Any] | None = None

        def on_receive(self, message: Any) -> Any:
            if not self.entry.acquire(blocking=False):
                self.overlaps += 1
                return None
            try:
                if message == "overlaps":
                    return self.overlaps
                if isinstance(message, pykka.ActorRef):
                    self.peer = message
                    return None
                time.sleep(0)
                with handled_lock:
                    handled[0] += 1
                    if handled[0] >= total:
                        done.set()
                if message > 0 and self.peer is not None:
                    self.peer.tell(message - 1)
                return None
            finally:
                self.entry.release()

    a = PingPong.start_on(runtime)
    b = PingPong.start_on(runtime)
    a.ask(b)
    b.ask(a)
    for _ in range(4):  # four rallies at once between the same two actors
        a.tell(total // 4 - 1)
        b.tell(0)
    try:
        assert done.wait(WAIT)
        assert a.ask("overlaps", timeout=WAIT) == 0
        assert b.ask("overlaps", timeout=WAIT) == 0
    finally:
        a.stop()
        b.stop()


def test_actors_started_on_a_runtime_run_there_and_default_runtime_is_shared(runtime):
    ref = Calculator.start_on(runtime, 1)
    try:
        assert ref.ask(1) == 2
        assert ref.proxy().runtime.get(timeout=WAIT) is runtime
    finally:
        ref.stop()
    assert default_runtime() is default_runtime()
    other = Calculator.start()
    try:
        assert other.proxy().runtime.get(timeout=WAIT) is default_runtime()
    finally:
        other.stop()


def test_runtime_rejects_zero_threads():
    with pytest.raises(ValueError):
        ActorRuntime(dispatchers=0)
    with pytest.raises(ValueError):
        ActorRuntime(workers=0)
