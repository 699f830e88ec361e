"""A child process for the recovery end-to-end tests (``tests/test_recovery_*.py``).

Modes (the first argument):

``fill``
    Holds a bucket (``--name``) with a rescue sink (``--jsonl PATH`` or ``--redis URL
    --key KEY``) and ``install_signal_handlers``; fills ``--count`` pending time bombs
    ``bomb-<i>`` and prints ``ready``. With ``--mid-load`` it then keeps filling
    ``more-<j>``, printing ``acked <j>`` after each fill returned, until it is signalled.
    Otherwise it waits for a signal. The signal handler rescues every live task into the
    sink and exits with status 128 + signal.

``replay``
    Reads the sink, replays it into a fresh bucket (``--name``, ``--max``) and prints one
    JSON line: ``{"filled": n, "present": [ids now in the bucket], "left": n_in_sink}``.

``signal-in-fill``
    Like ``fill`` (without ``--mid-load``), then fills one more task, ``in-flight``, and
    makes SIGTERM arrive at a chosen point inside that fill: right after the fill took its
    bucket's mailbox on this thread and before it ran the bucket there (a trace function
    sends the signal; its handler runs at once). A signal from outside lands there now and
    then on a busy process; this makes it land there every time. Prints ``no-trigger`` and
    exits 0 if the library's code no longer has that point.

``write-loop``
    Appends batches of ``--count`` records to ``--jsonl PATH`` forever, printing
    ``wrote <k>`` after each batch is durable (for a crash-mid-write test: SIGKILL it).
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import signal
import sys
from typing import Any

from gobucket import (
    BucketConfig,
    Executor,
    JsonlRescueSink,
    RedisRescueSink,
    RescuedTask,
    TaskBucket,
    TaskType,
    install_signal_handlers,
    replay,
)

LIFE_SPAN = 300.0
RUN_AFTER = 200.0
MAX_EXTRA = 200_000  # --mid-load stops filling here (the test signals long before)


def task_data(i: int) -> dict[str, Any]:
    """The data of task ``i`` (bytes and nesting check the sink's encoding)."""
    return {"i": i, "blob": bytes([i % 256]) * 3, "tags": ["x", i, None]}


class PanicCounter(Executor):
    """on_panic does nothing but count (the sink stores the tasks)."""

    def __init__(self) -> None:
        self.panicked = 0

    def on_panic(self, ctx: Any, id: str, data: Any) -> None:
        self.panicked += 1


def say(line: str) -> None:
    # os.write, not print: a signal handler that flushes sys.stdout must never
    # interrupt a half-done buffered write of ours.
    os.write(1, (line + "\n").encode())


def make_sink(args: argparse.Namespace) -> Any:
    if args.jsonl:
        return JsonlRescueSink(args.jsonl)
    return RedisRescueSink(args.redis, args.key)


def ready_bucket(args: argparse.Namespace, **config: Any) -> TaskBucket:
    """A bucket with the sink and the signal handlers, ``args.count`` time bombs filled;
    says ``ready``."""
    bucket = TaskBucket(
        BucketConfig(life_span=LIFE_SPAN, run_after=RUN_AFTER, name=args.name, **config),
        PanicCounter(),
        rescue_sink=make_sink(args),
    )
    install_signal_handlers(bucket)
    for i in range(args.count):
        bucket.fill(TaskType.TIME_BOMB, f"bomb-{i}", task_data(i))
    say("ready")
    return bucket


def fill(args: argparse.Namespace) -> None:
    bucket = ready_bucket(args, max_bucket=1_000_000)
    if args.mid_load:
        for j in range(MAX_EXTRA):
            bucket.fill(TaskType.TIME_BOMB, f"more-{j}", task_data(j))
            say(f"acked {j}")
        say("done")
    while True:
        signal.pause()


def signal_in_fill(args: argparse.Namespace) -> None:
    import linecache

    from gobucket.actors import runtime

    bucket = ready_bucket(args)
    target = runtime.Mailbox.call.__code__
    fired = False

    def in_call(frame: Any, event: str, arg: Any) -> Any:
        nonlocal fired
        if event == "line" and not fired:
            source = linecache.getline(target.co_filename, frame.f_lineno)
            if "_run_here(" in source:  # the run lock is ours; the actor not yet entered
                fired = True
                sys.settrace(None)
                os.kill(os.getpid(), signal.SIGTERM)
        return None if fired else in_call

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        if fired:
            return None
        return in_call if frame.f_code is target else None

    sys.settrace(tracer)
    try:
        bucket.fill(TaskType.TIME_BOMB, "in-flight", task_data(-1))
    finally:
        sys.settrace(None)
    say("no-trigger" if not fired else "survived the signal")


def replay_mode(args: argparse.Namespace) -> None:
    sink = make_sink(args)
    stored = sink.read()
    bucket = TaskBucket(
        BucketConfig(life_span=LIFE_SPAN, run_after=RUN_AFTER, max_bucket=args.max, name=args.name),
        Executor(),
    )
    try:
        filled = replay(sink, bucket)
        present = sorted(t.task_id for t in stored if t.task_id in bucket)
        say(json.dumps({"filled": filled, "present": present, "left": len(sink.read())}))
    finally:
        bucket.close(grace=0)


def write_loop(args: argparse.Namespace) -> None:
    sink = JsonlRescueSink(args.jsonl)
    k = 0
    while True:
        batch = [
            RescuedTask("loop", f"w{k}-{n}", TaskType.IMMEDIATE, task_data(n), 10.0)
            for n in range(args.count)
        ]
        sink.write(batch)
        say(f"wrote {k}")
        k += 1


def main() -> None:
    # A test that finds this child hung sends SIGUSR1 for every thread's stack.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("fill", "signal-in-fill", "replay", "write-loop"))
    parser.add_argument("--jsonl")
    parser.add_argument("--redis")
    parser.add_argument("--key", default="gobucket:rescued")
    parser.add_argument("--name", default="child")
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--max", type=int, default=100_000)
    parser.add_argument("--mid-load", action="store_true")
    args = parser.parse_args()
    if not args.jsonl and not args.redis:
        parser.error("give --jsonl PATH or --redis URL")
    modes = {
        "fill": fill,
        "signal-in-fill": signal_in_fill,
        "replay": replay_mode,
        "write-loop": write_loop,
    }
    modes[args.mode](args)


if __name__ == "__main__":
    sys.exit(main())
