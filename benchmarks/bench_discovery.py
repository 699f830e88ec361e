"""Benchmark of LAN discovery: how fast a group notices nodes arrive and leave.

Run ``python benchmarks/bench_discovery.py`` (root: a virtual LAN of network
namespaces; otherwise loopback). ``--reps N`` sets the repetitions (default 5),
``--mode loopback`` forces the fallback, ``--no-secret`` runs the nodes without a
secret (``insecure=True``: discovered addresses join the allow list). Results go to
``benchmarks/results/bench_discovery.json`` (``--out`` to change).

One *observer* node A (cluster bucket of 1 slot, kept full) watches *subject*
nodes, each a ``gobucket.testing.node`` child process, come and go:

* ``start``: from launching a subject process until A places an overflow fill
  on it (A's ``peers`` polled until the subject is up with loads, then a fill
  of one task must land on it). Target 2 s.
* ``stop``: from writing ``{"cmd": "stop"}`` to the subject (which has run for
  1 s since it was used) until A no longer lists it as up. Target 1 s.
* ``stop_early`` (extra): the same, sent as soon as A sees the subject up
  (while it may still be announcing itself). Same target.
* ``kill``: from SIGKILL (sent 1-1.3 s after A saw the subject up, so at any
  phase of the ping cycle; likewise for the next two) until A no longer lists
  it as up. Target 3 ping intervals (ping 0.3 s: 0.9 s). The kernel closes a
  killed process's sockets, so A sees the TCP connection end; the missed pings
  are not needed here.
* ``freeze`` (extra): from SIGSTOP (the process hangs, its sockets stay open)
  until it is no longer up: only the missed pings can tell. Same target shown.
* ``cut`` (extra, namespaces only): from unplugging the subject's cable (its
  veth port on the bridge set down) until it is no longer up. Same target.

Modes: ``netns`` (a ``VirtualLan`` of 3 namespaces: A on host 0, start/stop
subjects on host 1, kill/freeze/cut subjects on host 2, all on port 7300, real
multicast) or ``loopback`` (A in this process on 127.0.0.1, subjects are child
processes on 127.0.0.1 with ``interfaces=["127.0.0.1"]``; a process is needed
to start one and to SIGKILL it). Every process and namespace is removed at the
end, even on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from _common import RESULTS_DIR, NodeProcess, make_table, wide_console, write_results

RESULTS = RESULTS_DIR / "bench_discovery.json"

PING = 0.3  # seconds between load pings, on every node
PORT = 7300  # the fixed port of namespace nodes
SECRET = "bench-secret"
POLL = 0.01  # seconds between two polls of the observer
BUDGET = 110.0  # seconds: later repetitions are skipped past this
MEASURE_TIMEOUT = 10.0  # a repetition that takes longer is a failure

SETTLE = 1.0  # seconds a subject runs after A saw it, before it is made to leave

TARGETS: dict[str, float] = {
    "start": 2.0,
    "stop": 1.0,
    "stop_early": 1.0,
    "kill": 3 * PING,
    "freeze": 3 * PING,
    "cut": 3 * PING,
}
LABELS: dict[str, str] = {
    "start": "(a) new node used for overflow",
    "stop": "(b) clean stop dropped",
    "stop_early": "extra: clean stop right after start",
    "kill": "(c) SIGKILL dropped",
    "freeze": "extra: SIGSTOP (missed pings) dropped",
    "cut": "extra: cable cut (missed pings) dropped",
    "ready": "context: process start to 'ready'",
    "discovered": "context: 'ready' to overflow placed",
}


class Observer(Protocol):
    """Node A, whichever way it runs."""

    def peers(self) -> list[dict[str, Any]]:
        """A's peer table: dicts with node, up, loads, source, address."""
        ...

    def fill_one(self, task_id: str) -> str | None:
        """Fill one task on A: ``"local"``, the node id it went to, or None if refused."""
        ...


class ProcessObserver:
    """A runs as a ``gobucket.testing.node`` process (namespace mode)."""

    def __init__(self, node: NodeProcess) -> None:
        self.node = node

    def peers(self) -> list[dict[str, Any]]:
        self.node.send(cmd="peers")
        peers: list[dict[str, Any]] = self.node.read("peers")["peers"]
        return peers

    def fill_one(self, task_id: str) -> str | None:
        self.node.send(cmd="fill", n=1, prefix=task_id, run_after=100)
        placed: dict[str, int] = self.node.read("filled", timeout=40)["placed"]
        return next(iter(placed), None)


class LocalObserver:
    """A runs in this process (loopback mode)."""

    def __init__(self, cluster: str, secret: str | None) -> None:
        from gobucket import BucketConfig, Executor, TaskBucket, TaskBucketGroup

        self.bucket = TaskBucket(
            BucketConfig(life_span=600, max_bucket=1, run_after=300, name="sample"), Executor()
        )
        self.group = TaskBucketGroup(
            {"sample": self.bucket},
            port=0,
            ping_interval=PING,
            secret=secret,
            cluster=cluster,
            host="127.0.0.1",
            interfaces=["127.0.0.1"],
            discovery=True,
            insecure=secret is None,  # --no-secret measures the insecure mode
        )
        self.group.on_peer_schedule_failed = lambda *_args: None
        self.group.start()

    def peers(self) -> list[dict[str, Any]]:
        from gobucket.testing.node import peer_rows

        return peer_rows(self.group)

    def fill_one(self, task_id: str) -> str | None:
        from gobucket import TaskType

        try:
            where = self.group.fill(
                "sample", task_id, {"i": 0}, task_type=TaskType.TIME_BOMB, timeout=30
            )
        except Exception:
            return None
        return "local" if where.local else where.node

    def close(self) -> None:
        self.group.stop()
        self.bucket.close(grace=0)


def up_with_loads(peers: list[dict[str, Any]], node_id: str) -> bool:
    """Is ``node_id`` listed as up, with a load report?"""
    return any(p["node"] == node_id and p["up"] and p["loads"] for p in peers)


def still_up(peers: list[dict[str, Any]], node_id: str) -> bool:
    """Is ``node_id`` listed as up (with or without loads)?"""
    return any(p["node"] == node_id and p["up"] for p in peers)


def how_dropped(peers: list[dict[str, Any]], node_id: str) -> str:
    """``"removed"`` (gone from the table) or ``"down"`` (listed, not up)."""
    return "down" if any(p["node"] == node_id for p in peers) else "removed"


# --------------------------------------------------------------------------- the bench
class Bench:
    """Launches subjects, measures, and keeps every raw figure."""

    def __init__(self, mode: str, reps: int, logs: Path, secret: str | None) -> None:
        self.mode = mode
        self.secret = secret
        self.reps = reps
        self.logs = logs
        self.cluster = f"bench-{uuid.uuid4().hex[:6]}"
        self.began = time.monotonic()
        self.lan: Any = None
        self.observer: Observer | None = None
        self.subjects: list[NodeProcess] = []
        self.samples: dict[str, list[float]] = {k: [] for k in (*TARGETS, "ready", "discovered")}
        self.failures: dict[str, list[str]] = {k: [] for k in TARGETS}
        self.how: dict[str, list[str]] = {k: [] for k in TARGETS if k != "start"}
        self.skipped: dict[str, int] = {k: 0 for k in TARGETS}
        self.notes: list[str] = []
        self._seq = 0

    # processes ----------------------------------------------------------------------
    def launch(self, host: int, size: int) -> NodeProcess:
        """Start a node on ``host`` (namespace index; ignored on loopback)."""
        self._seq += 1
        log = self.logs / f"node{self._seq}-h{host}.log"
        address = self.lan.addresses[host] if self.lan is not None else "127.0.0.1"
        options = [
            "--host",
            address,
            "--port",
            str(PORT if self.lan is not None else 0),
            "--cluster",
            self.cluster,
            "--max",
            str(size),
            "--ping",
            str(PING),
            *(["--secret", self.secret] if self.secret is not None else ["--insecure"]),
        ]
        popen = (
            functools.partial(self.lan.popen, host) if self.lan is not None else subprocess.Popen
        )
        node = NodeProcess.start(options, log, popen=popen)
        self.subjects.append(node)
        return node

    def poll_until(self, done: Callable[[list[dict[str, Any]]], bool]) -> tuple[float, list[Any]]:
        """Poll A's peers until ``done(peers)``; the time of the answer that showed it."""
        assert self.observer is not None
        deadline = time.monotonic() + MEASURE_TIMEOUT
        while time.monotonic() < deadline:
            peers = self.observer.peers()
            if done(peers):
                return time.monotonic(), peers
            time.sleep(POLL)
        raise TimeoutError(f"not within {MEASURE_TIMEOUT}s")

    def wait_up(self, node: NodeProcess) -> None:
        """Wait (untimed) until A sees ``node`` up with loads."""
        node.read("ready")
        node_id = node.node_id
        assert node_id is not None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.observer is not None
            if up_with_loads(self.observer.peers(), node_id):
                return
            time.sleep(0.05)
        raise TimeoutError(f"A never saw node {node_id} up: {node.tail()}")

    def over_budget(self) -> bool:
        return time.monotonic() - self.began > BUDGET

    # measurements ---------------------------------------------------------------------
    def measure_start(self, host: int) -> NodeProcess:
        """(a): launch a subject; time until A's overflow fill lands on it."""
        assert self.observer is not None
        node = self.launch(host, 1000)
        deadline = node.launched + MEASURE_TIMEOUT
        while time.monotonic() < deadline:
            if node.poll_ready():
                assert node.node_id is not None
                if up_with_loads(self.observer.peers(), node.node_id):
                    self._seq += 1
                    where = self.observer.fill_one(f"probe{self._seq}-")
                    if where == node.node_id:
                        placed = time.monotonic()
                        assert node.ready_at is not None
                        self.samples["start"].append(placed - node.launched)
                        self.samples["ready"].append(node.ready_at - node.launched)
                        self.samples["discovered"].append(placed - node.ready_at)
                        return node
                    if where == "local":
                        self.notes.append("A's bucket had room again; the probe refilled it")
            time.sleep(POLL)
        raise TimeoutError(f"no overflow placed on the new node: {node.tail()}")

    def measure_leave(self, kind: str, node: NodeProcess, leave: Callable[[], None]) -> None:
        """Time from ``leave()`` until A no longer lists ``node`` as up."""
        node_id = node.node_id
        assert node_id is not None
        began = time.monotonic()
        leave()
        at, peers = self.poll_until(lambda ps: not still_up(ps, node_id))
        self.samples[kind].append(at - began)
        self.how[kind].append(how_dropped(peers, node_id))

    def repeat(self, kind: str, body: Callable[[], None]) -> None:
        for index in range(self.reps):
            if self.over_budget():
                self.skipped[kind] += self.reps - index
                self.notes.append(f"{kind}: {self.reps - index} repetition(s) skipped (budget)")
                return
            try:
                body()
            except (TimeoutError, RuntimeError) as error:
                self.failures[kind].append(str(error)[:300])
            finally:
                for node in self.subjects:
                    node.end()
                self.subjects.clear()

    def run(self) -> None:
        """Every measurement, ``reps`` times each."""

        def start_stop() -> None:
            node = self.measure_start(1)
            time.sleep(SETTLE)  # a node in its steady state, not one still announcing itself
            try:
                self.measure_leave("stop", node, lambda: node.send(cmd="stop"))
            except TimeoutError as error:
                self.failures["stop"].append(str(error))
            node.proc.wait(10)

        def stop_early() -> None:
            node = self.launch(1, 1000)
            self.wait_up(node)  # stopped as soon as A sees it up
            self.measure_leave("stop_early", node, lambda: node.send(cmd="stop"))
            node.proc.wait(10)

        def leave_by(kind: str, leave: Callable[[NodeProcess], None]) -> Callable[[], None]:
            def body() -> None:
                node = self.launch(2, 1000)
                self.wait_up(node)
                time.sleep(SETTLE + random.uniform(0, PING))  # any phase of the ping cycle
                try:
                    self.measure_leave(kind, node, lambda: leave(node))
                finally:
                    node.end()
                    if kind == "cut":
                        self.cable(2, up=True)

            return body

        self.repeat("start", start_stop)  # (b) is measured on each node (a) started
        self.skipped["stop"] = self.skipped["start"]
        self.repeat("stop_early", stop_early)
        self.repeat("kill", leave_by("kill", lambda n: os.kill(n.proc.pid, signal.SIGKILL)))
        self.repeat("freeze", leave_by("freeze", lambda n: os.kill(n.proc.pid, signal.SIGSTOP)))
        if self.lan is not None:
            self.repeat("cut", leave_by("cut", lambda n: self.cable(2, up=False)))
        else:
            self.skipped["cut"] = self.reps
            self.notes.append("cut: needs namespaces (not measured on loopback)")

    def cable(self, host: int, *, up: bool) -> None:
        """Set host ``host``'s port on the bridge up or down (VirtualLan's naming)."""
        port = f"gb{self.lan.tag}o{host}"
        subprocess.run(
            ["ip", "-n", self.lan.bridge_ns, "link", "set", port, "up" if up else "down"],
            check=True,
            capture_output=True,
            timeout=10,
        )

    # the run ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def network(self) -> Iterator[None]:
        """Build the LAN (or not) and node A; tear everything down afterwards."""
        local: LocalObserver | None = None
        a_node: NodeProcess | None = None
        stack = contextlib.ExitStack()
        try:
            if self.mode == "netns":
                from gobucket.testing import VirtualLan

                self.lan = stack.enter_context(VirtualLan(hosts=3))
                a_node = self.launch(0, 1)
                self.subjects.remove(a_node)
                a_node.read("ready")
                self.observer = ProcessObserver(a_node)
            else:
                local = LocalObserver(self.cluster, self.secret)
                self.observer = local
            where = self.observer.fill_one("seed")
            if where != "local":
                raise RuntimeError(f"A's seed task went to {where!r}, not local")
            yield
        finally:
            for node in self.subjects:
                node.end()
            self.subjects.clear()
            if a_node is not None:
                with contextlib.suppress(Exception):
                    a_node.send(cmd="stop")
                    a_node.proc.wait(10)
                a_node.end()
            if local is not None:
                local.close()
            stack.close()

    def summary(self) -> list[dict[str, Any]]:
        """One row per figure: n, p50, max, target, met."""
        rows = []
        for kind in (*TARGETS, "ready", "discovered"):
            values = self.samples[kind]
            target = TARGETS.get(kind)
            failed = len(self.failures.get(kind, []))
            skipped = self.skipped.get(kind, 0)
            if target is None:
                met = None
            elif skipped == self.reps and not values:
                met = None  # not measured in this mode
            else:
                met = bool(values) and failed == 0 and max(values) <= target
            rows.append(
                {
                    "figure": kind,
                    "label": LABELS[kind],
                    "n": len(values),
                    "failed": failed,
                    "skipped": skipped,
                    "p50_s": statistics.median(values) if values else None,
                    "max_s": max(values) if values else None,
                    "target_s": target,
                    "met": met,
                    "how_dropped": self.how.get(kind),
                }
            )
        return rows


def render(
    mode: str, why: str, rows: list[dict[str, Any]], bench: Bench, took: float, out: Path
) -> None:
    """Print the rich table and the notes."""
    console = wide_console(100)
    table = make_table(
        f"gobucket LAN discovery — mode {mode}, ping {PING}s, {bench.reps} reps, "
        + ("with a secret" if bench.secret else "no secret"),
        [
            ("figure", "left"),
            ("n", "right"),
            ("p50", "right"),
            ("max", "right"),
            ("target", "right"),
            ("met", "center"),
            ("how dropped", "left"),
        ],
    )

    def ms(value: float | None) -> str:
        return "—" if value is None else f"{value * 1000:.0f} ms"

    for row in rows:
        if row["met"] is None:
            met = "[dim]n/a[/dim]" if row["target_s"] is not None else ""
        else:
            met = "[green]met[/green]" if row["met"] else "[red]not met[/red]"
        n = str(row["n"])
        if row["failed"]:
            n += f" ({row['failed']} failed)"
        how = row["how_dropped"] or []
        shown = ", ".join(f"{h} x{how.count(h)}" for h in sorted(set(how)))
        table.add_row(
            row["label"],
            n,
            ms(row["p50_s"]),
            ms(row["max_s"]),
            "—" if row["target_s"] is None else f"≤ {row['target_s'] * 1000:.0f} ms",
            met,
            shown,
        )
    console.print(table)
    if mode == "loopback":
        console.print(f"[yellow]loopback mode[/yellow] (no namespaces: {why})")
    for kind, errors in bench.failures.items():
        for error in errors:
            console.print(f"[red]{kind} failed:[/red] {error}")
    for note in sorted(set(bench.notes)):
        console.print(f"note: {note}")
    console.print(f"whole run: {took:.1f} s; results in {out}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="repetitions of each figure")
    parser.add_argument("--mode", choices=("auto", "netns", "loopback"), default="auto")
    parser.add_argument(
        "--no-secret", action="store_true", help="run the nodes without a secret (allow list)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON")
    args = parser.parse_args()
    if args.reps < 1:
        parser.error("--reps must be >= 1")

    from gobucket.testing import netns_available

    available, why = netns_available()
    if args.mode == "netns" and not available:
        print(f"cannot build network namespaces: {why}", file=sys.stderr)
        return 2
    mode = "netns" if args.mode == "netns" or (args.mode == "auto" and available) else "loopback"
    if mode == "loopback" and available:
        why = "loopback mode was asked for"

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # run the clean-up below

    signal.signal(signal.SIGTERM, on_term)
    logging.getLogger("gobucket").setLevel(logging.ERROR)  # node A's peer-down warnings
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gb-bench-discovery-") as logs:
        bench = Bench(mode, args.reps, Path(logs), None if args.no_secret else SECRET)
        with bench.network():
            bench.run()
    took = time.monotonic() - began
    rows = bench.summary()
    payload = {
        "mode": mode,
        "mode_reason": why if mode == "loopback" else "VirtualLan of 3 network namespaces",
        "secret": not args.no_secret,
        "ping_interval_s": PING,
        "poll_interval_s": POLL,
        "reps": args.reps,
        "run_seconds": round(took, 2),
        "rows": rows,
        "samples_s": bench.samples,
        "failures": bench.failures,
        "notes": sorted(set(bench.notes)),
    }
    write_results(args.out, payload)
    render(mode, why, rows, bench, took, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
