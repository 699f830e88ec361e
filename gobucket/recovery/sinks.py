"""Rescue sinks: where rescued tasks outlive the process (a JSONL file, Redis).

A bucket made with ``rescue_sink=`` writes every task it rescues to the sink
after that task's ``on_panic`` returned; ``rescue()`` returns only once they
are written. :func:`gobucket.replay` reads them back.

Both sinks encode each record on its own: a record that cannot be encoded is
skipped (and logged), the others are still written, and ``write`` then raises
:class:`~gobucket.errors.SinkWriteError` naming the records it did not store.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Protocol

from gobucket.errors import SinkWriteError
from gobucket.recovery.record import RescuedTask

__all__ = ["JsonlRescueSink", "RedisRescueSink", "RescueSink"]

logger = logging.getLogger("gobucket.recovery")

# The client's wall clock for Redis fences; a module attribute so a test can skew it.
_wall_clock = time.time


class RescueSink(Protocol):
    """Durable storage for rescued tasks.

    A sink may also have a ``timeout`` attribute (float, seconds): how long a
    caller should wait for one :meth:`write` before it gives up on the sink
    and stores the records elsewhere. Callers use ``getattr(sink, "timeout",
    5.0)``.
    """

    def write(self, tasks: Sequence[RescuedTask]) -> None:
        """Store ``tasks``; durable when this returns.

        Raises:
            SinkWriteError: some records were not stored (``failed``); the
                others (``written``) were.
        """
        ...

    def read(self) -> list[RescuedTask]:
        """Every stored task, each with its ``key`` set."""
        ...

    def remove(self, tasks: Iterable[RescuedTask]) -> None:
        """Forget tasks (by their ``key``), once they were filled back."""
        ...


def _encode_each(
    tasks: Sequence[RescuedTask], where: str
) -> tuple[list[tuple[str, str, RescuedTask]], list[RescuedTask]]:
    """(key, JSON line, task) for every encodable task, and the tasks that were not."""
    good: list[tuple[str, str, RescuedTask]] = []
    bad: list[RescuedTask] = []
    for task in tasks:
        key = uuid.uuid4().hex
        try:
            raw = task.to_dict()
            raw["key"] = key
            good.append((key, json.dumps(raw, separators=(",", ":")), task))
        except Exception as error:  # one bad record must never stop the others
            logger.error("%s: cannot encode task %r, skipped: %s", where, task.task_id, error)
            bad.append(task)
    return good, bad


def _raise_if_failed(
    where: str,
    failed: list[RescuedTask],
    written: int,
    cause: str,
    error: BaseException | None = None,
) -> None:
    """Raise SinkWriteError for ``failed`` records, chained to the sink's own ``error``.

    ``__cause__`` set means the sink itself failed (not only some data): a caller
    should not wait on it again for the rest of its records.
    """
    if not failed:
        return
    shown = ", ".join(repr(t.task_id) for t in failed[:5])
    more = f" and {len(failed) - 5} more" if len(failed) > 5 else ""
    raise SinkWriteError(
        f"{where}: {len(failed)} record(s) not stored ({shown}{more}): {cause}; {written} stored",
        failed=failed,
        written=written,
    ) from error


class JsonlRescueSink:
    """Appends one JSON line per rescued task to a file, and fsyncs.

    A crash in the middle of a write leaves at most one torn last line, which
    :meth:`read` skips (with a warning); every line written before it survives.
    :meth:`remove` appends a tombstone line naming the removed records (cheap,
    whatever the file's size); once every record read was removed, the file is
    compacted.

    Args:
        path: the file (created with mode 0600 when missing).
        timeout: how long a caller should wait for one :meth:`write` (a file
            write cannot be interrupted; a hung disk is the caller's to detect).
    """

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 5.0) -> None:
        self.path = os.fspath(path)
        self.timeout = timeout
        self._lock = threading.Lock()
        self._live: set[str] | None = None  # keys read and not removed since

    def write(self, tasks: Sequence[RescuedTask]) -> None:
        """Append and fsync (one fsync for the whole batch).

        Raises:
            SinkWriteError: some records could not be encoded; every other one
                was written and fsynced.
            OSError: the file could not be written (nothing may be stored).
        """
        if not tasks:
            return
        good, bad = _encode_each(tasks, self.path)
        if good:
            self._append("".join(line + "\n" for _, line, _ in good).encode())
        _raise_if_failed(self.path, bad, len(good), "data not encodable")

    def _append(self, payload: bytes) -> None:
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                # A torn line from an earlier crash would swallow our first line: start clean.
                if os.fstat(fd).st_size and not self._ends_with_newline():
                    payload = b"\n" + payload
                view = memoryview(payload)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as handle:
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) == b"\n"

    def read(self) -> list[RescuedTask]:
        """Every complete record in the file (both record formats)."""
        with self._lock:
            tasks = [task for _, _, task in self._lines() if task is not None]
            self._live = {task.key for task in tasks}
            return tasks

    def _lines(self) -> list[tuple[str, str, RescuedTask | None]]:
        """(key, line, record) for every record line not removed; record None if unreadable."""
        try:
            with open(self.path, encoding="utf-8", errors="replace") as handle:
                lines = handle.read().splitlines()
        except FileNotFoundError:
            return []
        out: list[tuple[str, str, RescuedTask | None]] = []
        removed: set[str] = set()
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except ValueError:
                logger.warning("%s:%d: skipping a torn record", self.path, number)
                continue
            if not isinstance(raw, dict):
                logger.warning("%s:%d: skipping a line that is not a record", self.path, number)
                continue
            tombstone = raw.get("removed")
            if isinstance(tombstone, list):
                removed.update(str(key) for key in tombstone)
                continue
            key = str(raw.get("key", number))
            try:
                out.append((key, line, RescuedTask.from_dict(raw, key=key)))
            except (ValueError, KeyError, TypeError) as error:
                logger.warning("%s:%d: skipping an unreadable record: %s", self.path, number, error)
                out.append((key, line, None))
        if removed:
            out = [entry for entry in out if entry[0] not in removed]
        return out

    def remove(self, tasks: Iterable[RescuedTask]) -> None:
        """Forget ``tasks``: append a tombstone line naming their keys, and fsync.

        Once every record of the last :meth:`read` was removed, the file is
        compacted (atomically: temp file, fsync, rename). Lines are kept
        verbatim: a record this version cannot read (a newer format) is kept
        for a reader that can; only torn lines are dropped.
        """
        keys = sorted({t.key for t in tasks})
        if not keys:
            return
        tombstone = json.dumps({"v": 2, "removed": keys}, separators=(",", ":")) + "\n"
        self._append(tombstone.encode())
        with self._lock:
            if self._live is None:
                return
            self._live.difference_update(keys)
            if self._live:
                return
            self._live = None
            keep = [line for _, line, _ in self._lines()]
            tmp = f"{self.path}.tmp-{uuid.uuid4().hex[:6]}"
            with open(tmp, "w", encoding="utf-8") as handle:
                for line in keep:
                    handle.write(line + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)

    def __repr__(self) -> str:
        return f"JsonlRescueSink({self.path!r})"


# KEYS[1]: the hash. ARGV[1]: the fence (unix seconds). ARGV[2..]: field, value, ...
# Stores the pairs only while the server's clock is before the fence; else stores
# nothing and returns -1. A command sent to a frozen (SIGSTOPped) server runs when the
# server resumes, long after the client gave up and wrote the records elsewhere.
_FENCED_HSET = """
local now = redis.call('TIME')
if tonumber(now[1]) + tonumber(now[2]) / 1000000 >= tonumber(ARGV[1]) then
    return -1
end
for i = 2, #ARGV, 2 do
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
return (#ARGV - 1) / 2
"""

_FENCED = -1


class RedisRescueSink:
    """Stores rescued tasks in a Redis hash (redis-py), one field per task.

    ``write`` is bounded and fenced: it returns or raises within about
    ``timeout`` seconds, and nothing it reports as not stored can be stored
    later. Records go in chunks of ``chunk`` per command (a Lua script). Each
    command waits at most ``timeout / 2`` for its reply, with no retries, and
    is only sent while that wait fits in the ``timeout`` budget. It carries a
    fence — the client's wall clock when sending, plus three quarters of the
    wait — and the server stores the chunk only if its own clock (``TIME``) is
    still before the fence; otherwise it stores nothing and ``write`` raises.
    A command sent to a frozen (SIGSTOPped) or overloaded server therefore
    stores nothing when it finally runs, after the caller gave up and wrote the
    records to its fallback: no record is replayed twice.

    This assumes the clocks of client and Redis agree to within ``timeout / 8``
    (the fence's slack). With a larger skew, delivery is at least once: a late
    chunk may land here *and* in the fallback (server clock behind), or every
    write is refused and goes to the fallback (server clock ahead). A reply lost
    after the server stored its chunk has the same effect.

    Args:
        url: a Redis URL, e.g. ``redis://127.0.0.1:6379/0``.
        key: the hash holding the tasks.
        timeout: the bound on one ``write``, in seconds; ``read`` and ``remove``
            wait ``timeout / 2`` per command.
        chunk: records per command.
    """

    def __init__(
        self,
        url: str,
        key: str = "gobucket:rescued",
        *,
        timeout: float = 2.0,
        chunk: int = 1000,
    ) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, not {timeout!r}")
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, not {chunk!r}")
        self.url = url
        self.key = key
        self.timeout = timeout
        self.chunk = chunk
        # Half the budget per command: a chunk sent by mid-budget is answered or given
        # up on by the end of it.
        self._wait = timeout / 2
        # No retries at all: a retried command could land after we gave up (redis-py's
        # Redis() retries 10 times by default in recent versions).
        self._client = redis.Redis.from_url(
            url,
            socket_timeout=self._wait,
            socket_connect_timeout=self._wait,
            retry_on_timeout=False,
            retry=Retry(NoBackoff(), 0),
        )

    def write(self, tasks: Sequence[RescuedTask]) -> None:
        """HSET every task, in fenced chunks, within ``timeout``.

        Raises:
            SinkWriteError: some records were not stored — they could not be
                encoded, or Redis failed, did not answer in time, or ran the
                chunk too late (fenced); in those last cases ``__cause__`` is
                Redis's error. Records of earlier chunks are stored.
        """
        if not tasks:
            return
        good, bad = _encode_each(tasks, self._where())
        causes = ["data not encodable"] if bad else []
        failure: Exception | None = None
        budget_end = _wall_clock() + self.timeout
        written = 0
        for start in range(0, len(good), self.chunk):
            part = good[start : start + self.chunk]
            try:
                self._write_chunk(part, budget_end)
            except Exception as error:  # any failure: the rest goes back to the caller
                failure = error
                bad.extend(task for _, _, task in good[start:])
                causes.append(f"{type(error).__name__}: {error}")
                logger.error(
                    "%s: write failed after %d record(s): %r", self._where(), written, error
                )
                break
            written += len(part)
        _raise_if_failed(self._where(), bad, written, "; ".join(causes), failure)

    def _write_chunk(self, part: list[tuple[str, str, RescuedTask]], budget_end: float) -> None:
        sent_at = _wall_clock()
        if sent_at + self._wait > budget_end:
            raise TimeoutError(f"the write's {self.timeout:g}s budget is spent")
        # The server must not store past the moment we stop waiting; keep a quarter
        # of the wait for the reply's way back and for clock skew.
        fence = sent_at + self._wait * 0.75
        args: list[str] = [repr(fence)]
        for key, line, _ in part:
            args.append(key)
            args.append(line)
        # EVAL, not EVALSHA: one round trip always (no NOSCRIPT, SCRIPT LOAD, retry
        # after a server restart), so one wait bounds the chunk; the script is small.
        stored = self._client.eval(_FENCED_HSET, 1, self.key, *args)
        if stored == _FENCED:
            raise TimeoutError(
                "Redis ran the write after its fence (frozen or overloaded server, or "
                "its clock is ahead of ours); nothing stored"
            )

    def read(self) -> list[RescuedTask]:
        """Every stored task (both record formats)."""
        raw: dict[bytes, bytes] = self._client.hgetall(self.key)  # type: ignore[assignment]
        tasks = []
        for field, value in raw.items():
            try:
                tasks.append(RescuedTask.from_dict(json.loads(value), key=field.decode()))
            except (ValueError, KeyError, TypeError) as error:
                logger.warning("%s[%s]: skipping an unreadable record: %s", self.key, field, error)
        return tasks

    def remove(self, tasks: Iterable[RescuedTask]) -> None:
        """HDEL the tasks' fields."""
        fields = [t.key for t in tasks]
        for start in range(0, len(fields), self.chunk):
            self._client.hdel(self.key, *fields[start : start + self.chunk])

    def close(self) -> None:
        """Close the Redis connection pool."""
        self._client.close()

    def _where(self) -> str:
        return f"redis {self.key!r}"

    def __repr__(self) -> str:
        return f"RedisRescueSink({self.url!r}, {self.key!r}, timeout={self.timeout!r})"
