"""Plumbing shared by the benchmark scripts: percentile, the child node, results, tables.

* :func:`percentile`: one definition for every figure (nearest rank).
* :class:`NodeProcess`: a ``gobucket.testing.node`` child process and its JSON-line protocol
  (the one child-node program of the tests, the examples and the benchmarks).
* :func:`write_results`: the JSON file under ``benchmarks/results/`` with the run's context.
* :func:`make_table` and :func:`wide_console`: the rich table every script prints.
* :func:`overflow_group`: a started group whose only bucket is full, overflowing to one peer.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"


# --------------------------------------------------------------------------- percentile
def percentile(values: Iterable[float], q: float) -> float:
    """The nearest-rank ``q`` quantile (``q`` in [0, 1]) of ``values``; NaN if empty.

    The smallest sample with at least a fraction ``q`` of all samples at or below it:
    the ``ceil(q * n)``-th smallest (1-based, at least the first). It is always an observed
    value, never an interpolation, so a p99 is a latency that really happened.
    """
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = math.ceil(q * len(ordered) - 1e-9)  # the epsilon absorbs 0.99 * 100 = 99.000...01
    return ordered[min(len(ordered), max(1, rank)) - 1]


# --------------------------------------------------------------------------- the child node
def node_argv(*options: str) -> list[str]:
    """The command line of a ``gobucket.testing.node`` child with ``options``."""
    return [sys.executable, "-m", "gobucket.testing.node", *options]


class NodeProcess:
    """A ``gobucket.testing.node`` child: JSON commands on stdin, events read by a thread.

    Build one with :meth:`start` (or wrap a process started elsewhere, e.g. by
    ``VirtualLan.popen``). Its stderr goes to ``log``.
    """

    def __init__(self, proc: subprocess.Popen[str], launched: float, log: Path) -> None:
        self.proc = proc
        self.launched = launched
        self.log = log
        self.node_id: str | None = None
        self.address: tuple[str, int] | None = None
        self.ready_at: float | None = None
        self._events: queue.Queue[tuple[float, dict[str, Any] | None]] = queue.Queue()
        self._reader = threading.Thread(target=self._read_lines, daemon=True)
        self._reader.start()

    @classmethod
    def start(
        cls,
        options: Sequence[str],
        log: Path,
        *,
        popen: Callable[..., subprocess.Popen[str]] = subprocess.Popen,
        env: dict[str, str] | None = None,
    ) -> NodeProcess:
        """Launch a node with ``options`` through ``popen`` (a ``VirtualLan.popen`` bound to
        a host, or :class:`subprocess.Popen`)."""
        with log.open("w") as stderr:
            launched = time.monotonic()
            proc = popen(
                node_argv(*options),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                bufsize=1,
                env=env,
            )
        return cls(proc, launched, log)

    def _read_lines(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            self._events.put((time.monotonic(), message))
        self._events.put((time.monotonic(), None))

    def _seen(self, message: dict[str, Any], at: float) -> None:
        if message.get("event") == "ready":
            self.node_id, self.ready_at = message["node"], at
            self.address = (message["address"][0], int(message["address"][1]))

    def send(self, **command: Any) -> None:
        """Write one command line."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def read(self, event: str, timeout: float = 10.0) -> dict[str, Any]:
        """The next ``event`` line (others are skipped); raises on timeout or exit."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {event!r} from the node within {timeout}s: {self.tail()}")
            try:
                at, message = self._events.get(timeout=left)
            except queue.Empty:
                continue
            if message is None:
                raise RuntimeError(f"node exited before {event!r}: {self.tail()}")
            self._seen(message, at)
            if message.get("event") == event:
                return message

    def poll_ready(self) -> bool:
        """Take a ``ready`` line if one arrived (never blocks)."""
        while self.node_id is None:
            try:
                at, message = self._events.get_nowait()
            except queue.Empty:
                return False
            if message is None:
                raise RuntimeError(f"node exited before 'ready': {self.tail()}")
            self._seen(message, at)
        return True

    def count(self, timeout: float = 20.0) -> int:
        """How many tasks the node's bucket holds."""
        self.send(cmd="count")
        return int(self.read("count", timeout)["alive"])

    def tail(self) -> str:
        """The end of the node's stderr, for error messages."""
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-800:]
        return ""

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the node to stop (``stop``, then end of input); :meth:`end` it if it lingers."""
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.send(cmd="stop")
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        self.end()

    def end(self) -> None:
        """Make sure the process is gone (SIGKILL if it is still running)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
                os.kill(self.proc.pid, signal.SIGCONT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError, ValueError):
                if stream is not None:
                    stream.close()


# --------------------------------------------------------------------------- overflow
def overflow_group(bucket: str, peer_port: int, secret: str, describe: Callable[[], str]) -> Any:
    """A started TaskBucketGroup whose ``bucket`` is full, with the peer on ``peer_port`` up.

    Every fill overflows to that peer. ``describe()`` says what went wrong (the
    child's last lines) if the peer never reports its load.
    """
    from gobucket import BucketConfig, Executor, TaskBucket, TaskBucketGroup, TaskType

    config = BucketConfig(max_bucket=1, name=bucket, life_span=7200, run_after=3600)
    full = TaskBucket(config, Executor())
    full.fill(TaskType.TIME_BOMB, "blocker")  # the local bucket is full from now on
    group = TaskBucketGroup(
        {bucket: full},
        peers=[f"127.0.0.1:{peer_port}"],
        port=0,
        host="127.0.0.1",
        secret=secret,
        node_id="parent",
        discovery=False,
    ).start()
    if not group.wait_for_peers(bucket=bucket, timeout=20.0):
        group.stop()
        full.close(grace=0)
        raise RuntimeError(f"the child node never came up as a peer; {describe()}")
    return group


# --------------------------------------------------------------------------- results
def write_results(path: Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` as JSON to ``path``, after the run's context (when, python, cpus)."""
    context = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**context, **payload}, indent=2) + "\n")
    return path


# --------------------------------------------------------------------------- tables
def wide_console(min_width: int) -> Any:
    """A rich console at least ``min_width`` columns wide (tables wrap badly otherwise)."""
    from rich.console import Console

    console = Console()
    return console if console.width >= min_width else Console(width=min_width)


def make_table(title: str, columns: Iterable[tuple[str, str]]) -> Any:
    """A rich table titled ``title`` with ``(name, justify)`` columns."""
    from rich.table import Table

    table = Table(title=title)
    for name, justify in columns:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    return table
