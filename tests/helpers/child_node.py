"""A group node in a child process on loopback (``gobucket.testing.node``)."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from helpers.waiting import WAIT

REPO_ROOT = Path(__file__).resolve().parents[2]
NODE_SCRIPT = Path(__file__).resolve().parents[1] / "nodes" / "group_node.py"


class ChildNode:
    """A group node in a child process (``tests/nodes/group_node.py``) on loopback."""

    def __init__(self, *args: str) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])]
        )
        self.proc = subprocess.Popen(
            [sys.executable, str(NODE_SCRIPT), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=str(REPO_ROOT),
            env=env,
        )
        self.lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self.stderr: list[str] = []
        self.pumps = [
            threading.Thread(target=self._pump_out, daemon=True),
            threading.Thread(target=self._pump_err, daemon=True),
        ]
        for pump in self.pumps:
            pump.start()
        self.address = ("127.0.0.1", self._read_port())

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

    def _read_port(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise AssertionError(f"child node printed no port; stderr: {self.stderr[-20:]}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                self.kill()
                raise AssertionError(f"child node exited early; stderr: {self.stderr[-20:]}")
            if line.startswith("PORT "):
                return int(line.split()[1])

    def alive_tasks(self, timeout: float = WAIT) -> int:
        """Ask the child how many tasks its bucket holds."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("LEN\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("the child node did not answer LEN")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"the child node exited; stderr: {self.stderr[-20:]}")
            if line.startswith("LEN "):
                return int(line.split()[1])

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
