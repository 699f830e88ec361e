"""Arming rescue: rescue_on_error (context manager and decorator) and install_signal_handlers
(in this process, with exit=False; the exiting default is tested in test_recovery_e2e.py)."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from helpers.cluster import close_all as shared_close_all
from helpers.recording import Recorder, RecordingExecutor
from helpers.waiting import WAIT

import gobucket
from gobucket import (
    BucketClosedError,
    BucketConfig,
    JsonlRescueSink,
    TaskBucket,
    TaskType,
    install_signal_handlers,
    rescue_on_error,
)


def close_all(buckets: list[TaskBucket]) -> None:
    """Close every bucket without waiting for its tasks."""
    shared_close_all(buckets, WAIT, grace=0)


class Armed:
    """A bucket of pending time bombs with a JSONL sink and a recorder."""

    def __init__(self, path: Any, name: str = "mail") -> None:
        self.recorder = Recorder()
        self.sink = JsonlRescueSink(path)
        self.bucket = TaskBucket(
            BucketConfig(name=name, life_span=60.0, run_after=50.0),
            RecordingExecutor(self.recorder),
            rescue_sink=self.sink,
        )

    def fill(self, n: int) -> list[str]:
        ids = [f"{self.bucket.name}-{i}" for i in range(n)]
        for task_id in ids:
            self.bucket.fill(TaskType.TIME_BOMB, task_id, {"id": task_id})
        return ids

    def stored(self) -> list[str]:
        return sorted(t.task_id for t in self.sink.read())


@pytest.fixture
def make_armed(tmp_path) -> Iterator[Callable[..., Armed]]:
    made: list[Armed] = []

    def make(name: str = "mail") -> Armed:
        armed = Armed(tmp_path / f"{name}.jsonl", name)
        made.append(armed)
        return armed

    yield make
    close_all([a.bucket for a in made])


def test_arming_helpers_are_importable_from_gobucket():
    assert gobucket.rescue_on_error is rescue_on_error
    assert gobucket.install_signal_handlers is install_signal_handlers


def test_context_manager_rescues_when_an_exception_escapes_and_re_raises_it(make_armed):
    armed = make_armed()
    error = ValueError("boom")
    with pytest.raises(ValueError) as raised, rescue_on_error(armed.bucket):
        ids = armed.fill(5)
        raise error
    assert raised.value is error
    assert armed.stored() == sorted(ids)
    assert armed.recorder.count("on_panic") == 5
    assert armed.bucket.join(WAIT)
    assert len(armed.bucket) == 0


def test_context_manager_does_nothing_without_an_exception(make_armed):
    armed = make_armed()
    with rescue_on_error(armed.bucket) as guard:
        ids = armed.fill(3)
    assert isinstance(guard, rescue_on_error)
    assert armed.stored() == []
    assert armed.recorder.count("on_panic") == 0
    assert all(task_id in armed.bucket for task_id in ids)


def test_decorator_rescues_when_an_exception_escapes_and_re_raises_it(make_armed):
    armed = make_armed()

    @rescue_on_error(armed.bucket)
    def handler(ids: list[str], *, fail: bool) -> int:
        for task_id in ids:
            armed.bucket.fill(TaskType.TIME_BOMB, task_id, task_id)
        if fail:
            raise KeyError("lost")
        return len(ids) * 2

    assert handler(["ok0", "ok1"], fail=False) == 4  # arguments and result pass through
    assert armed.stored() == []
    assert "ok0" in armed.bucket
    with pytest.raises(KeyError, match="lost"):
        handler(["x"], fail=True)
    assert armed.stored() == ["ok0", "ok1", "x"]  # every live task, not only the call's
    assert armed.recorder.count("on_panic") == 3
    # The door closed before the rescue: the bucket takes nothing more.
    assert armed.bucket.closed
    with pytest.raises(BucketClosedError):
        handler(["y"], fail=False)
    assert armed.stored() == ["ok0", "ok1", "x"]


def test_a_keyboard_interrupt_escaping_is_rescued_too(make_armed):
    armed = make_armed()
    with pytest.raises(KeyboardInterrupt), rescue_on_error(armed.bucket):
        ids = armed.fill(2)
        raise KeyboardInterrupt
    assert armed.stored() == sorted(ids)


def test_every_target_is_rescued_even_when_one_of_them_fails(make_armed):
    mail, sms = make_armed("mail"), make_armed("sms")

    class Broken:
        def rescue(self) -> int:
            raise RuntimeError("cannot rescue")

    with (
        pytest.raises(ValueError, match="original"),
        rescue_on_error(mail.bucket, Broken(), sms.bucket),
    ):
        mail_ids, sms_ids = mail.fill(2), sms.fill(3)
        raise ValueError("original")
    assert mail.stored() == sorted(mail_ids)
    assert sms.stored() == sorted(sms_ids)


def test_signal_handler_rescues_then_runs_the_previous_handler(make_armed):
    armed = make_armed()
    ran = threading.Event()
    seen_by_previous: list[list[str]] = []

    def previous(signum, frame):
        seen_by_previous.append(armed.stored())
        ran.set()

    original = signal.signal(signal.SIGUSR1, previous)
    try:
        restore = install_signal_handlers(armed.bucket, signals=(signal.SIGUSR1,), exit=False)
        assert signal.getsignal(signal.SIGUSR1) is not previous
        ids = armed.fill(4)
        os.kill(os.getpid(), signal.SIGUSR1)
        assert ran.wait(WAIT)  # handlers run on this (main) thread
        assert seen_by_previous == [sorted(ids)]  # rescued (and written) before it ran
        assert armed.recorder.count("on_panic") == 4
        restore()
        assert signal.getsignal(signal.SIGUSR1) is previous
    finally:
        signal.signal(signal.SIGUSR1, original)


def test_sigint_rescues_then_raises_keyboard_interrupt(make_armed):
    armed = make_armed()
    original = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's default
    try:
        restore = install_signal_handlers(armed.bucket, exit=False)
        try:
            ids = armed.fill(3)
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
                threading.Event().wait(WAIT)  # interrupted by the handler's KeyboardInterrupt
            assert armed.stored() == sorted(ids)
        finally:
            restore()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, original)


def test_install_signal_handlers_covers_sigterm_and_sigint_by_default(make_armed):
    armed = make_armed()
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    restore = install_signal_handlers(armed.bucket)
    try:
        for signum in (signal.SIGTERM, signal.SIGINT):
            handler = signal.getsignal(signum)
            assert callable(handler) and handler is not before[signum]
    finally:
        restore()
    assert {s: signal.getsignal(s) for s in before} == before
