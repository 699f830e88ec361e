"""A child Python program driven by a test: stdout lines collected, stderr to a file.

Shared by the end-to-end recovery and shutdown tests.
"""

from __future__ import annotations

import contextlib
import itertools
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

WAIT = 60.0  # generous: a loaded 2-core machine

C = TypeVar("C", bound="ChildProcess")


class ChildProcess:
    """A child program whose stdout lines are collected by a reader thread."""

    def __init__(self, script: Path, args: list[str], log: Path) -> None:
        self._log = open(log, "wb")  # noqa: SIM115 - closed in kill()
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, str(script), *args], stdout=subprocess.PIPE, stderr=self._log
        )
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._eof = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.signalled_at: float | None = None
        self.exit_seconds: float | None = None

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._cond:
                self.lines.append(raw.decode().rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = WAIT) -> str:
        """Wait for a stdout line matching ``predicate``; fail if the child ends first."""
        seen = 0
        with self._cond:
            deadline = time.monotonic() + timeout
            while True:
                for line in self.lines[seen:]:
                    if predicate(line):
                        return line
                seen = len(self.lines)
                if self._eof:
                    pytest.fail(f"child ended without the expected line; stderr:\n{self.stderr()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(
                        f"child did not print the expected line in {timeout}s; "
                        f"stderr:\n{self.stderr()}"
                    )
                self._cond.wait(left)

    def signal(self, signum: int) -> None:
        self.signalled_at = time.monotonic()
        self.proc.send_signal(signum)

    def finish(self, timeout: float = 30.0) -> int:
        """Wait for the child to exit; fail (after killing it) if it takes longer."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._dump_stacks()
            pytest.fail(
                f"the child did not exit within {timeout}s of the signal (hung); "
                f"stderr:\n{self.stderr()}"
            )
        finally:
            self.kill()
        if self.signalled_at is not None:
            self.exit_seconds = time.monotonic() - self.signalled_at
        return code

    def _dump_stacks(self) -> None:
        """Have a hung child write every thread's stack to its stderr (see faulthandler)."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGUSR1)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(2.0)  # faulthandler writes at once; this only gives it the CPU

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(WAIT)
        self._reader.join(WAIT)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()

    def stderr(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def spawner(make: Callable[[list[str], Path], C], logs: Path) -> Iterator[Callable[[list[str]], C]]:
    """``start(args)`` makes a child with ``make(args, stderr log)``; all are killed at the end."""
    numbers = itertools.count()
    with contextlib.ExitStack() as started:

        def start(args: list[str]) -> C:
            child = make(args, logs / f"child-{next(numbers)}.stderr")
            started.callback(child.kill)
            return child

        yield start
