"""Rescue sinks: where rescued tasks outlive the process (a JSONL file, Redis).

A bucket made with ``rescue_sink=`` writes every task it rescues to the sink
after that task's ``on_panic`` returned; ``rescue()`` returns only once they
are written. :func:`gobucket.replay` reads them back.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from gobucket.recovery.record import RescuedTask

__all__ = ["JsonlRescueSink", "RedisRescueSink", "RescueSink"]

logger = logging.getLogger("gobucket.recovery")


class RescueSink(Protocol):
    """Durable storage for rescued tasks."""

    def write(self, tasks: Sequence[RescuedTask]) -> None:
        """Store ``tasks``; durable when this returns."""
        ...

    def read(self) -> list[RescuedTask]:
        """Every stored task, each with its ``key`` set."""
        ...

    def remove(self, tasks: Iterable[RescuedTask]) -> None:
        """Forget tasks (by their ``key``), once they were filled back."""
        ...


class JsonlRescueSink:
    """Appends one JSON line per rescued task to a file, and fsyncs.

    A crash in the middle of a write leaves at most one torn last line, which
    :meth:`read` skips (with a warning); every line written before it survives.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._lock = threading.Lock()

    def write(self, tasks: Sequence[RescuedTask]) -> None:
        """Append and fsync (one fsync for the whole batch)."""
        if not tasks:
            return
        lines = []
        for task in tasks:
            raw = task.to_dict()
            raw["key"] = uuid.uuid4().hex
            lines.append(json.dumps(raw, separators=(",", ":")) + "\n")
        payload = "".join(lines).encode()
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
        """Every complete record in the file."""
        with self._lock:
            return self._read()

    def _read(self) -> list[RescuedTask]:
        try:
            with open(self.path, encoding="utf-8", errors="replace") as handle:
                lines = handle.read().splitlines()
        except FileNotFoundError:
            return []
        tasks = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                raw: dict[str, Any] = json.loads(line)
                tasks.append(RescuedTask.from_dict(raw, key=str(raw.get("key", number))))
            except (ValueError, KeyError, TypeError):
                logger.warning("%s:%d: skipping a torn or invalid record", self.path, number)
        return tasks

    def remove(self, tasks: Iterable[RescuedTask]) -> None:
        """Rewrite the file without ``tasks`` (atomically: temp file, fsync, rename)."""
        keys = {t.key for t in tasks}
        if not keys:
            return
        with self._lock:
            keep = [t for t in self._read() if t.key not in keys]
            tmp = f"{self.path}.tmp-{uuid.uuid4().hex[:6]}"
            with open(tmp, "w", encoding="utf-8") as handle:
                for task in keep:
                    raw = task.to_dict()
                    raw["key"] = task.key
                    handle.write(json.dumps(raw, separators=(",", ":")) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)

    def __repr__(self) -> str:
        return f"JsonlRescueSink({self.path!r})"


class RedisRescueSink:
    """Stores rescued tasks in a Redis hash (redis-py), one field per task.

    Args:
        url: a Redis URL, e.g. ``redis://127.0.0.1:6379/0``.
        key: the hash holding the tasks.
    """

    def __init__(self, url: str, key: str = "gobucket:rescued") -> None:
        import redis

        self.url = url
        self.key = key
        self._client = redis.Redis.from_url(url)

    def write(self, tasks: Sequence[RescuedTask]) -> None:
        """HSET every task in one round trip."""
        if not tasks:
            return
        mapping: dict[str | bytes, str | bytes] = {
            uuid.uuid4().hex: json.dumps(t.to_dict()) for t in tasks
        }
        self._client.hset(self.key, mapping=mapping)  # type: ignore[arg-type]

    def read(self) -> list[RescuedTask]:
        """Every stored task."""
        raw: dict[bytes, bytes] = self._client.hgetall(self.key)  # type: ignore[assignment]
        tasks = []
        for field, value in raw.items():
            try:
                tasks.append(RescuedTask.from_dict(json.loads(value), key=field.decode()))
            except (ValueError, KeyError, TypeError):
                logger.warning("%s[%s]: skipping an invalid record", self.key, field)
        return tasks

    def remove(self, tasks: Iterable[RescuedTask]) -> None:
        """HDEL the tasks' fields."""
        fields = [t.key for t in tasks]
        if fields:
            self._client.hdel(self.key, *fields)

    def close(self) -> None:
        """Close the Redis connection pool."""
        self._client.close()

    def __repr__(self) -> str:
        return f"RedisRescueSink({self.url!r}, {self.key!r})"
