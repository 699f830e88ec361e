"""Light actors: one slotted object per task, handled one message at a time, freed by refcount."""

from __future__ import annotations

import contextlib
import gc
import signal
import threading
import time
import weakref
from typing import Any

import pykka
import pytest
from helpers.recording import RecordingExecutor
from helpers.waiting import WAIT

from gobucket import Executor, RescueTimeoutError, TaskNotFoundError, TaskType
from gobucket.actors import messages as m
from gobucket.actors.light import LIGHT_SLOTS, Board, LightActor
from gobucket.actors.task import TaskActor
from gobucket.actors.timers import Timer
from gobucket.context import TaskContext

# --- the light actor on its own ---------------------------------------------------------


class Counter(LightActor):
    """Counts messages; notes any overlap of two handlers and the order per sender."""

    __slots__ = (*LIGHT_SLOTS, "active", "got", "overlaps", "pause")

    def __init__(self, board: Board, pause: float = 0.0) -> None:
        self._board = board
        self._stopped = False
        self.active = 0
        self.overlaps = 0
        self.got: list[Any] = []
        self.pause = pause

    def on_receive(self, message: Any) -> Any:
        self.active += 1
        if self.active > 1:
            self.overlaps += 1
        if self.pause:
            time.sleep(self.pause)
        self.got.append(message)
        self.active -= 1
        if message == "boom":
            raise RuntimeError("boom")
        return len(self.got)


def test_messages_from_many_threads_are_handled_one_at_a_time_in_each_senders_order():
    board: Board = {}
    actor = Counter(board)
    senders, each = 8, 3000
    barrier = threading.Barrier(senders)

    def send(n: int) -> None:
        barrier.wait(WAIT)
        for i in range(each):
            actor.tell((n, i))

    threads = [threading.Thread(target=send, args=(n,)) for n in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert len(actor.got) == senders * each  # none lost, none twice
    assert actor.overlaps == 0
    for n in range(senders):
        assert [i for s, i in actor.got if s == n] == list(range(each))
    assert board == {}  # nobody holds a claim once every message is handled


def test_a_busy_actor_queues_and_its_owner_handles_what_queued_before_letting_go():
    board: Board = {}
    actor = Counter(board, pause=0.05)
    first = threading.Thread(target=actor.tell, args=("first",))
    first.start()
    deadline = time.monotonic() + WAIT
    while actor not in board and time.monotonic() < deadline:
        time.sleep(0.001)
    assert actor.call("direct") == (False, None)  # busy on another thread
    answer = actor.ask("second", block=False)  # queued: the owner runs it
    first.join(WAIT)
    assert answer.get(timeout=WAIT) == 2
    assert actor.got == ["first", "second"]
    assert actor.call("third") == (True, 3)


def test_a_crashing_handler_stops_the_actor_and_later_asks_fail_dead(caplog):
    board: Board = {}
    failures: list[Any] = []

    class Fragile(Counter):
        __slots__ = ()

        def on_failure(self, exc_type, exc, tb):
            failures.append(exc)

    actor = Fragile(board)
    actor.tell("boom")
    assert len(failures) == 1 and not actor.is_alive()
    with pytest.raises(pykka.ActorDeadError):
        actor.tell("x")
    with pytest.raises(pykka.ActorDeadError):
        actor.ask("x", timeout=WAIT)
    with pytest.raises(pykka.ActorDeadError):
        actor.actor_ref().ask("x", timeout=WAIT)


def test_an_interrupt_between_two_handlers_leaves_the_actor_free_and_loses_nothing_queued():
    board: Board = {}

    class Interrupted(Counter):
        __slots__ = ()

        def _handle(self, item: Any) -> BaseException | None:
            if item == "interrupt":
                raise KeyboardInterrupt  # as if a signal arrived between two handlers
            return super()._handle(item)

    actor = Interrupted(board)
    claim = [threading.get_ident(), "interrupt", "queued"]  # two messages queued meanwhile
    board[actor] = claim
    with pytest.raises(KeyboardInterrupt):
        actor._run("first", claim)
    assert board == {}
    assert actor.got == ["first", "queued"]  # what queued behind the interrupt was passed on
    actor.tell("later")
    assert actor.got == ["first", "queued", "later"]


def test_delivery_from_inside_a_handler_on_the_same_thread_queues_instead_of_deadlocking():
    # What a signal handler does when it interrupts a thread inside a handler.
    board: Board = {}
    seen: list[Any] = []

    class Nested(LightActor):
        __slots__ = LIGHT_SLOTS

        def __init__(self) -> None:
            self._board = board
            self._stopped = False

        def on_receive(self, message: Any) -> Any:
            if message == "outer":
                assert self.held_by_current_thread()
                assert self.actor_ref().actor_inbox.held_by_current_thread()
                future = self.ask("inner", block=False)
                assert not future.done()  # queued behind the running handler
                assert self.call("direct") == (False, None)
            seen.append(message)
            return message

    actor = Nested()
    actor.tell("outer")
    assert seen == ["outer", "inner"]
    assert not actor.held_by_current_thread()


def test_a_light_actors_ref_is_a_real_pykka_ref_made_on_demand():
    board: Board = {}
    actor = Counter(board)
    ref = actor.actor_ref()
    assert isinstance(ref, pykka.ActorRef)
    assert ref.is_alive()
    ref.tell("a")
    assert ref.ask("b", timeout=WAIT) == 2
    assert ref.ask("c", block=False).get(timeout=WAIT) == 3
    ref.stop()
    assert not ref.is_alive() and not actor.is_alive()
    with pytest.raises(pykka.ActorDeadError):
        ref.tell("d")


# --- tasks ------------------------------------------------------------------------------


def test_task_ref_gives_a_pykka_ref_whose_messages_reach_the_task(make_bucket, recorder):
    bucket = make_bucket(RecordingExecutor(recorder), life_span=30.0, run_after=20.0)
    bucket.fill(TaskType.TIME_BOMB, "expire-me")
    bucket.fill(TaskType.TIME_BOMB, "stop-me")
    bucket.fill(TaskType.TIME_BOMB, "panic-me")
    ref = bucket.task_ref("expire-me")
    assert isinstance(ref, pykka.ActorRef)
    assert ref.is_alive()
    ref.tell(m.EXPIRE)
    assert recorder.wait_hook("on_task_exhausted", "expire-me")
    assert recorder.wait_for(lambda: not ref.is_alive())
    with pytest.raises(pykka.ActorDeadError):
        ref.tell(m.EXPIRE)
    bucket.task_ref("stop-me").stop()  # a pykka stop drains the task
    record, ended = bucket.task_ref("panic-me").ask(m.PANIC, timeout=WAIT)
    assert record.task_id == "panic-me"
    assert ended.get(timeout=WAIT) is True
    assert bucket.join(WAIT)
    assert recorder.ends("stop-me") == []
    assert recorder.ends("panic-me") == ["on_panic"]
    stats = bucket.stats()
    assert (stats.exhausted, stats.drained, stats.panicked) == (1, 1, 1)
    with pytest.raises(TaskNotFoundError):
        bucket.task_ref("stop-me")
    with pytest.raises(TaskNotFoundError):
        bucket.task_ref("never-filled")


def test_try_fill_answers_refusals_without_raising(make_bucket, recorder):
    bucket = make_bucket(RecordingExecutor(recorder), max_bucket=1, life_span=30.0, run_after=20.0)
    fill = bucket._prepare_fill(TaskType.TIME_BOMB, "a")
    assert bucket.actor_ref.ask(m.TryFill(*fill), timeout=WAIT) is None
    from gobucket import BucketFullError, DuplicateTaskError

    refused = bucket.actor_ref.ask(m.TryFill(*fill), timeout=WAIT)
    assert isinstance(refused, DuplicateTaskError)
    other = bucket._prepare_fill(TaskType.TIME_BOMB, "b")
    refused = bucket.actor_ref.ask(m.TryFill(*other), timeout=WAIT)
    assert isinstance(refused, BucketFullError)
    stats = bucket.stats()
    assert (stats.alive, stats.refused_full, stats.refused_duplicate) == (1, 1, 1)


class Quick(Executor):
    def on_execute(self, ctx: Any, id: str, data: Any) -> None:
        if data == "slow":
            ctx.wait_cancelled(WAIT)  # until its life span runs out

    def on_finish(self, ctx: Any, id: str, data: Any) -> None:
        pass


def _of_bucket(obj: Any, name: str) -> bool:
    """Is ``obj`` a task, a task's context or a timer of a task of bucket ``name``?"""
    if isinstance(obj, Timer):
        obj = obj.target
    if isinstance(obj, TaskActor):
        return obj.spec.name == name
    return isinstance(obj, TaskContext) and obj.bucket == name


def _task(bucket: Any, task_id: str) -> TaskActor:
    actor = bucket.task_ref(task_id).actor_inbox.actor
    assert isinstance(actor, TaskActor)
    return actor


def test_finished_tasks_are_freed_by_reference_counting_alone(make_bucket):
    bucket = make_bucket(
        Quick(), name="refcount", life_span=30.0, run_after=0.05, max_bucket=10_000
    )
    n = 400
    gc.collect()
    gc.disable()
    try:
        refs = []
        for i in range(n):
            if i % 4 == 1:  # exhausted while its on_execute runs
                bucket.fill(TaskType.IMMEDIATE, f"t{i}", "slow", life_span=0.1)
            elif i % 4 == 3:  # runs in 50 ms and finishes
                bucket.fill(TaskType.TIME_BOMB, f"t{i}", {"i": i})
            else:  # drained or rescued before it runs
                bucket.fill(TaskType.TIME_BOMB, f"t{i}", {"i": i}, run_after=20.0)
            refs.append(weakref.ref(_task(bucket, f"t{i}")))
        for i in range(0, n, 4):
            bucket.drain(f"t{i}")  # drained
        for i in range(2, n, 4):
            bucket.task_ref(f"t{i}").ask(m.PANIC, timeout=WAIT)  # rescued
        assert bucket.join(WAIT)  # the rest run and finish
        deadline = time.monotonic() + WAIT
        while any(r() is not None for r in refs) and time.monotonic() < deadline:
            time.sleep(0.01)  # the last TaskEnded may still be on its way
        alive = [r() for r in refs if r() is not None]
        assert alive == [], f"{len(alive)} task objects outlived their task without a collection"
        # Whatever else the process left in cycles meanwhile, none of it is ours.
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        ours = [o for o in gc.garbage if _of_bucket(o, "refcount")]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert ours == [], f"{len(ours)} objects of finished tasks were left in reference cycles"
    stats = bucket.stats()
    quarter = n // 4
    assert (stats.finished, stats.drained, stats.exhausted, stats.panicked) == (quarter,) * 4


def test_a_pending_time_bomb_costs_few_gc_tracked_objects(make_bucket):
    n = 5000
    bucket = make_bucket(Quick(), life_span=3600.0, run_after=1800.0, max_bucket=n + 1)
    gc.collect()
    before = len(gc.get_objects())
    for i in range(n):
        bucket.fill(TaskType.TIME_BOMB, f"t{i}")
    time.sleep(0.2)  # the timer thread takes the timers in
    gc.collect()
    per_task = (len(gc.get_objects()) - before) / n
    # The task (its own context) and its one timer.
    assert per_task <= 3.0, f"{per_task:.1f} GC-tracked objects per pending time bomb"
    assert bucket.rescue(timeout=WAIT) == n


def test_a_task_is_one_slotted_object_without_a_pykka_ref_or_lock(make_bucket):
    bucket = make_bucket(Quick(), life_span=30.0, run_after=20.0)
    bucket.fill(TaskType.TIME_BOMB, "t")
    task = _task(bucket, "t")
    assert not hasattr(task, "__dict__")
    for slot in TaskActor.__slots__:
        value = getattr(task, slot, None)
        assert not isinstance(value, pykka.ActorRef | type(threading.Lock()) | threading.Event)


# --- rescue from a signal handler -------------------------------------------------------


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs setitimer")
def test_rescue_from_a_signal_handler_that_interrupts_deliveries_never_deadlocks(
    make_bucket, recorder
):
    """SIGALRM interrupts the main thread anywhere in its deliveries to tasks; rescue runs there."""
    assert threading.current_thread() is threading.main_thread()
    bucket = make_bucket(RecordingExecutor(recorder), life_span=30.0, run_after=20.0)
    outcomes: list[Any] = []

    def handler(signum: int, frame: Any) -> None:
        started = time.monotonic()
        try:
            outcomes.append(bucket.rescue(timeout=2.0))
        except RescueTimeoutError as error:
            outcomes.append(error)  # tasks this very thread was handling: reported, not hung
        outcomes.append(time.monotonic() - started)

    previous = signal.signal(signal.SIGALRM, handler)
    try:
        filled = 0
        for _ in range(20):
            signal.setitimer(signal.ITIMER_REAL, 0.003)
            deadline = time.monotonic() + 0.05
            while time.monotonic() < deadline:
                task_id = f"t{filled}"
                bucket.fill(TaskType.TIME_BOMB, task_id)
                filled += 1
                with contextlib.suppress(pykka.ActorDeadError, TaskNotFoundError):
                    bucket.task_ref(task_id).tell(m.FIRE)  # delivered on this thread
            signal.setitimer(signal.ITIMER_REAL, 0)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert outcomes, "the signal never fired"
    assert all(spent < 2.0 + 1.0 for spent in outcomes[1::2])
    assert bucket.join(WAIT)
    for i in range(filled):
        assert len(recorder.ends(f"t{i}")) == 1, recorder.hooks(f"t{i}")
