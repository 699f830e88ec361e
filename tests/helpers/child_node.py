"""A group node in a child process on loopback: ``python -m gobucket.testing.node``."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from helpers.cluster import BUCKET, SECRET
from helpers.waiting import WAIT

REPO_ROOT = Path(__file__).resolve().parents[2]

DEFAULTS = (
    *("--host", "127.0.0.1", "--bucket", BUCKET, "--secret", SECRET, "--ping", "0.2"),
    *("--run-after", "200", "--life-span", "300", "--no-discovery"),
)
"""Static peers only; tasks it receives are long-lived time bombs (their slot stays taken)."""


def python_child(*argv: str) -> subprocess.Popen[str]:
    """``python *argv`` from the repository root (which it can import), stdio piped as text."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.Popen(
        [sys.executable, *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(REPO_ROOT),
        env=env,
    )


class ChildNode:
    """A ``gobucket.testing.node`` child on loopback; ``args`` override :data:`DEFAULTS`."""

    def __init__(self, *args: str) -> None:
        self.proc = python_child("-m", "gobucket.testing.node", *DEFAULTS, *args)
        self.lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self.stderr: list[str] = []
        self.pumps = [
            threading.Thread(target=self._pump_out, daemon=True),
            threading.Thread(target=self._pump_err, daemon=True),
        ]
        for pump in self.pumps:
            pump.start()
        try:
            ready = self._read_event("ready", 30.0)
        except AssertionError:
            self.kill()
            raise
        self.address = ("127.0.0.1", int(ready["address"][1]))

    def _pump_out(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for line in self.proc.stdout:
                self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _pump_err(self) -> None:
        assert self.proc.stderr is not None
        with self.proc.stderr:
            for line in self.proc.stderr:
                self.stderr.append(line)

    def _read_event(self, event: str, timeout: float) -> dict[str, Any]:
        """The next ``event`` line (others are skipped); fails if it does not come in time."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"the child node sent no {event!r}; stderr: {self.stderr[-20:]}"
                )
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"the child node exited; stderr: {self.stderr[-20:]}")
            with contextlib.suppress(ValueError):
                message: dict[str, Any] = json.loads(line)
                if message.get("event") == event:
                    return message

    def send(self, **command: Any) -> None:
        """Write one command line (``send(cmd="count")``)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def alive_tasks(self, timeout: float = WAIT) -> int:
        """Ask the child how many tasks its bucket holds."""
        self.send(cmd="count")
        return int(self._read_event("count", timeout)["alive"])

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signum)

    def kill(self) -> None:
        """SIGKILL (and SIGCONT first, in case it was stopped); reap it."""
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
                self.proc.kill()
            except ProcessLookupError:
                pass
        with contextlib.suppress(subprocess.TimeoutExpired):  # SIGKILL always works
            self.proc.wait(10)

    def close(self) -> None:
        """Ask it to stop (stdin EOF); kill it if it does not."""
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
                assert self.proc.stdin is not None
                self.proc.stdin.close()
                self.proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        for pump in self.pumps:
            pump.join(5)
