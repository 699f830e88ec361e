"""The one rescue collector: wait for rescued tasks within a bound, then store their records.

Every path that rescues (``rescue()``, ``close()``, the signal handlers, a
crashed BucketActor, a hand-off no peer took) ends here, so they all keep the
same promises:

* A task's record is taken the instant it is rescued, before its ``on_panic``
  runs, so a hanging ``on_panic`` never keeps the record out of the sink.
* Waiting is bounded by one deadline; what did not end by then is *pending*.
* Records are written a chunk at a time, each write bounded by the sink's own
  ``timeout``; a write that raises or does not answer hands that chunk and the
  rest to the fallback :class:`~gobucket.JsonlRescueSink`; a record that cannot
  be encoded at all never stops the others. The log says how many went where.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pykka

from gobucket.actors.messages import Answer
from gobucket.errors import SinkWriteError
from gobucket.recovery.record import RescuedTask
from gobucket.recovery.sinks import JsonlRescueSink, RescueSink

__all__ = [
    "DEFAULT_FALLBACK_PATH",
    "FALLBACK_ENV",
    "RescueReport",
    "default_fallback",
    "gather",
    "rescue_pass",
    "store",
]

logger = logging.getLogger("gobucket.recovery")

CHUNK = 1000
"""Records per sink write; each write is bounded by the sink's timeout."""

_MARGIN = 0.5

DEFAULT_SINK_TIMEOUT = 5.0
"""How long a write may take for a sink that does not say (its ``timeout`` attribute)."""

DEFAULT_FALLBACK_PATH = "gobucket-rescue-fallback.jsonl"
"""Where records go when a rescue sink fails, unless the bucket names a fallback.

Relative to the working directory when the bucket is made; ``$GOBUCKET_RESCUE_FALLBACK``
overrides it. Read it back with ``replay(JsonlRescueSink(path), bucket)``.
"""

FALLBACK_ENV = "GOBUCKET_RESCUE_FALLBACK"


def default_fallback() -> JsonlRescueSink:
    """The fallback sink a bucket uses when none is given (see :data:`DEFAULT_FALLBACK_PATH`)."""
    path = os.environ.get(FALLBACK_ENV) or DEFAULT_FALLBACK_PATH
    return JsonlRescueSink(os.path.abspath(path))


@dataclass
class RescueReport:
    """What one or more rescue passes did.

    Attributes:
        rescued: tasks that ended through ``on_panic`` in time.
        records: records taken (one per rescued task).
        pending_ids: tasks asked to end that had not ended by the deadline.
        unsafe_ids: tasks neither ended nor stored anywhere (lost if the process dies now).
        stored, fallback, lost: records written to the sink, to the fallback
            file, and to neither.
    """

    rescued: int = 0
    records: int = 0
    pending_ids: list[str] = field(default_factory=list)
    unsafe_ids: list[str] = field(default_factory=list)
    stored: int = 0
    fallback: int = 0
    lost: int = 0

    @property
    def complete(self) -> bool:
        """True when every live task ended or is stored somewhere."""
        return not self.unsafe_ids

    def merge(self, other: RescueReport) -> None:
        """Add another pass's counts to this report."""
        self.rescued += other.rescued
        self.records += other.records
        self.pending_ids.extend(other.pending_ids)
        self.unsafe_ids.extend(other.unsafe_ids)
        self.stored += other.stored
        self.fallback += other.fallback
        self.lost += other.lost


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def gather(
    answers: Sequence[Answer], deadline: float | None
) -> tuple[list[RescuedTask], int, list[tuple[str, RescuedTask | None]]]:
    """Wait (until ``deadline``) for rescued tasks to end.

    Returns the records taken, how many tasks ended, and the tasks still
    pending with their record (None for a task that was already ending on its
    own when asked).
    """
    records: list[RescuedTask] = []
    waits: list[tuple[str, RescuedTask | None, pykka.Future[Any]]] = []
    pending: list[tuple[str, RescuedTask | None]] = []
    for task_id, ref, future in answers:
        if ref.actor_inbox.held_by_current_thread():  # type: ignore[attr-defined]
            # A signal handler interrupted this very task's handler on this
            # thread; waiting for it here would deadlock. Its Panic (queued)
            # runs when the handler returns.
            logger.warning("task %r being handled when a rescue interrupted it: skipped", task_id)
            pending.append((task_id, None))
            continue
        try:
            answer = future.get(timeout=_left(deadline))
        except pykka.ActorDeadError:
            continue  # it ended before it saw the request
        except pykka.Timeout:
            pending.append((task_id, None))
            continue
        except Exception:
            logger.exception("rescuing task %r failed", task_id)
            pending.append((task_id, None))
            continue
        if answer is None:
            continue  # Shed: its work has started, it is left running
        record, ended = answer
        if record is not None:
            records.append(record)
        if ended is not None:
            waits.append((task_id, record, ended))
    rescued = 0
    for task_id, record, ended in waits:
        try:
            ended.get(timeout=_left(deadline))
        except pykka.Timeout:
            pending.append((task_id, record))
            continue
        if record is not None:
            rescued += 1
    return records, rescued, pending


def store(
    records: Sequence[RescuedTask],
    sink: RescueSink | None,
    fallback: JsonlRescueSink | None,
    name: str,
) -> tuple[int, int, list[RescuedTask]]:
    """Write ``records`` to ``sink``, falling back to ``fallback``.

    Returns ``(stored in sink, stored in fallback, records stored nowhere)``.
    """
    if sink is None or not records:
        return 0, 0, []
    timeout = float(getattr(sink, "timeout", DEFAULT_SINK_TIMEOUT))
    stored = 0
    failed: list[RescuedTask] = []
    problem = ""
    for start in range(0, len(records), CHUNK):
        chunk = list(records[start : start + CHUNK])
        if problem:  # the sink failed on an earlier chunk: do not wait on it again
            failed.extend(chunk)
            continue
        error = _write_bounded(sink, chunk, timeout)
        if error is None:
            stored += len(chunk)
        elif isinstance(error, SinkWriteError):
            stored += error.written
            failed.extend(error.failed)
            if error.__cause__ is not None:  # the sink itself failed, not only some records
                problem = repr(error.__cause__)
        else:
            problem = repr(error)
            failed.extend(chunk)
    in_fallback = 0
    lost: list[RescuedTask] = []
    if failed:
        in_fallback, lost = _to_fallback(failed, fallback, name)
        logger.warning(
            "[%s] rescue sink %r could not store %d record(s)%s: %d written to the fallback %r, "
            "%d lost",
            name,
            sink,
            len(failed),
            f" ({problem})" if problem else "",
            in_fallback,
            fallback,
            len(lost),
        )
    return stored, in_fallback, lost


def _write_bounded(sink: RescueSink, chunk: list[RescuedTask], timeout: float) -> Exception | None:
    """Run ``sink.write(chunk)`` on a helper thread; give up on it after ``timeout``."""
    outcome: list[Exception | None] = []
    done = threading.Event()

    def write() -> None:
        try:
            sink.write(chunk)
            outcome.append(None)
        except Exception as error:
            outcome.append(error)
        finally:
            done.set()

    thread = threading.Thread(target=write, name="gobucket-sink-write", daemon=True)
    thread.start()
    # A sink bounds its own writes by ``timeout``; the margin lets it answer
    # exactly what it stored instead of us guessing "nothing".
    if not done.wait(timeout + _MARGIN):
        return TimeoutError(f"no answer within {timeout:g}s")
    return outcome[0]


def _to_fallback(
    records: list[RescuedTask], fallback: JsonlRescueSink | None, name: str
) -> tuple[int, list[RescuedTask]]:
    if fallback is None:
        return 0, records
    try:
        fallback.write(records)
    except SinkWriteError as error:
        for record in error.failed:
            logger.error("[%s] task %r cannot be stored anywhere: lost", name, record.task_id)
        return error.written, list(error.failed)
    except Exception:
        logger.exception("[%s] the fallback %r failed too", name, fallback)
        return 0, records
    return len(records), []


def rescue_pass(
    answers: Sequence[Answer],
    deadline: float | None,
    sink: RescueSink | None,
    fallback: JsonlRescueSink | None,
    name: str,
) -> RescueReport:
    """Gather the answers of one rescue request, then store every record taken."""
    records, rescued, pending = gather(answers, deadline)
    stored, in_fallback, lost = store(records, sink, fallback, name)
    lost_ids = {record.task_id for record in lost}
    if sink is None:
        unsafe = [task_id for task_id, _ in pending]  # on_panic is the only way out
    else:
        unsafe = [task_id for task_id, record in pending if record is None]
        unsafe += [task_id for task_id in lost_ids if task_id not in unsafe]
    return RescueReport(
        rescued=rescued,
        records=len(records),
        pending_ids=[task_id for task_id, _ in pending],
        unsafe_ids=unsafe,
        stored=stored,
        fallback=in_fallback,
        lost=len(lost),
    )
