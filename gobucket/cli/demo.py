"""``gobucket demo``: a standalone bucket doing work a person can watch."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from gobucket import BucketConfig, Executor, TaskBucket, TaskContext, TaskType

__all__ = ["MAX_SPEED", "MIN_SPEED", "DemoExecutor", "check_speed", "run_demo"]

MIN_SPEED = 0.1
"""Slowest ``--speed``: ten times slower than real time (about a minute and a half)."""
MAX_SPEED = 10.0
"""Fastest ``--speed``: beyond it the demo's timings are too short to watch, or to keep."""


def check_speed(speed: float) -> float:
    """``speed`` if the demo can run at it, else :class:`ValueError` (also for NaN, inf).

    Every duration of the demo is divided by it: 2 runs twice as fast.
    """
    if not MIN_SPEED <= speed <= MAX_SPEED:  # NaN compares false: refused too
        raise ValueError(
            f"must be a number from {MIN_SPEED:g} to {MAX_SPEED:g} "
            f"(2 runs twice as fast), not {speed!r}"
        )
    return speed


@dataclass
class _Record:
    kind: str
    outcome: str = "waiting"
    detail: str = ""
    started: float | None = None


@dataclass
class DemoExecutor(Executor):
    """Pretends to send mail, build reports and charge cards; records every outcome."""

    speed: float = 1.0
    records: dict[str, _Record] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _set(self, id: str, outcome: str, detail: str = "") -> None:
        with self.lock:
            record = self.records[id]
            record.outcome = outcome
            if detail:
                record.detail = detail

    def on_execute(self, ctx: TaskContext, id: str, data: Any) -> None:
        with self.lock:
            self.records[id].started = time.monotonic()
        self._set(id, "running")
        work = float(data.get("work", 0.5)) / self.speed
        if ctx.wait_cancelled(work):
            return  # exhausted or rescued meanwhile: stop early, the result is dropped
        if data.get("fail"):
            raise RuntimeError(data["fail"])

    def on_finish(self, ctx: TaskContext, id: str, data: Any) -> None:
        self._set(id, "finished", f"done in {ctx.attempt} attempt(s)")

    def on_execute_error(self, ctx: TaskContext, id: str, data: Any, error: BaseException) -> None:
        self._set(id, "failed", str(error))

    def on_task_exhausted(self, ctx: TaskContext, id: str, data: Any) -> None:
        self._set(id, "exhausted", "life span ran out while working")

    def on_panic(self, ctx: TaskContext, id: str, data: Any) -> None:
        self._set(id, "rescued", f"saved with {ctx.remaining():.1f}s of life left")


_COLOURS = {
    "finished": "green",
    "failed": "red",
    "exhausted": "yellow",
    "drained": "cyan",
    "rescued": "magenta",
    "running": "blue",
    "waiting": "white",
}


def _progress(bucket: TaskBucket, executor: DemoExecutor, phase: str) -> Text:
    with executor.lock:
        outcomes = [r.outcome for r in executor.records.values()]
    counts = {k: outcomes.count(k) for k in _COLOURS}
    line = Text(f"{phase:<34}", style="bold")
    line.append(f" alive {len(bucket):>2} ")
    for name, colour in _COLOURS.items():
        line.append(f" {name} {counts[name]}", style=colour)
    return line


def _table(executor: DemoExecutor) -> Table:
    table = Table(title="gobucket demo: how every task ended")
    table.add_column("task id")
    table.add_column("type")
    table.add_column("outcome")
    table.add_column("detail")
    with executor.lock:
        for task_id, record in executor.records.items():
            colour = _COLOURS.get(record.outcome, "white")
            table.add_row(task_id, record.kind, Text(record.outcome, style=colour), record.detail)
    return table


@dataclass(frozen=True)
class _Step:
    """One task the demo fills, and how it is expected to end."""

    task_id: str
    task_type: TaskType
    data: dict[str, Any]
    expected: str
    overrides: dict[str, float] = field(default_factory=dict)


def _plan(s: float) -> list[_Step]:
    """The tasks of the demo; ``s`` scales every duration (``1 / speed``)."""
    return [
        *[
            _Step(f"email::{i}", TaskType.IMMEDIATE, {"work": 0.3 + 0.2 * i}, "finished")
            for i in range(1, 6)
        ],
        *[
            _Step(
                f"reminder::{i}",
                TaskType.TIME_BOMB,
                {"work": 0.4},
                "finished",
                {"run_after": (0.8 + 0.6 * i) * s},
            )
            for i in range(1, 4)
        ],
        _Step(
            "reminder::cancelled",
            TaskType.TIME_BOMB,
            {"work": 0.4},
            "drained",
            {"run_after": 2.5 * s},
        ),
        _Step(
            "report::huge", TaskType.IMMEDIATE, {"work": 30}, "exhausted", {"life_span": 2.0 * s}
        ),
        _Step(
            "payment::declined",
            TaskType.IMMEDIATE,
            {"work": 0.6, "fail": "card declined"},
            "failed",
        ),
        _Step(
            "backup::nightly",
            TaskType.TIME_BOMB,
            {"work": 1},
            "rescued",
            {"run_after": 60 * s, "life_span": 120 * s},
        ),
    ]


def run_demo(speed: float = 1.0, plain: bool = False) -> int:
    """Run the demo; returns 0 when every task ended the way the script expected.

    Raises:
        ValueError: ``speed`` is outside ``MIN_SPEED..MAX_SPEED`` (see :func:`check_speed`).
    """
    check_speed(speed)
    console = Console()
    executor = DemoExecutor(speed=speed)
    s = 1.0 / speed
    config = BucketConfig(life_span=6 * s, max_bucket=64, run_after=1.5 * s, name="demo")
    plan = _plan(s)
    expected = {step.task_id: step.expected for step in plan}
    bucket = TaskBucket(config, executor)
    stop = threading.Event()

    def script(set_phase: Any) -> None:
        set_phase(f"filling {len(plan)} tasks")
        for step in plan:
            with executor.lock:
                executor.records[step.task_id] = _Record(step.task_type.value)
            bucket.fill(step.task_type, step.task_id, step.data, **step.overrides)
        time.sleep(0.7 * s)
        set_phase("draining reminder::cancelled")
        bucket.drain("reminder::cancelled")
        executor._set("reminder::cancelled", "drained", "drained before it ran: no hook")
        set_phase("letting the work run")
        deadline = time.monotonic() + 8 * s
        while time.monotonic() < deadline and len(bucket) > 1:
            time.sleep(0.1)
        set_phase("process going down: rescue()")
        rescued = bucket.rescue()
        set_phase(f"rescued {rescued} task(s); all done")
        stop.set()

    phase = ["starting"]

    def set_phase(text: str) -> None:
        phase[0] = text
        if plain:
            console.print(_progress(bucket, executor, text))

    worker = threading.Thread(target=script, args=(set_phase,), daemon=True)
    worker.start()
    if plain:
        stop.wait()
    else:
        with Live(
            _progress(bucket, executor, phase[0]), console=console, refresh_per_second=12
        ) as live:
            while not stop.wait(0.08):
                live.update(_progress(bucket, executor, phase[0]))
            live.update(_progress(bucket, executor, phase[0]))
    worker.join()
    bucket.close()
    console.print(_table(executor))
    with executor.lock:
        wrong = {k: r.outcome for k, r in executor.records.items() if r.outcome != expected[k]}
    if wrong:
        console.print(f"[red]unexpected outcomes: {wrong}[/red]")
        return 1
    console.print("[green]every task ended exactly once, the way it should[/green]")
    return 0
