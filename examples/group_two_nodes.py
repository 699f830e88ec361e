"""Two group nodes in one process: a small bucket on node A overflows to node B.

Run: python examples/group_two_nodes.py

Both nodes listen on loopback (port 0 picks a free port) and share a secret.
Node A has room for 3 tasks and dials node B, which has room for 5. Ten fills
go to A: 3 stay local, 5 are acknowledged by B, and the last 2 find no room
anywhere (NoPeerAvailableError, also reported to ``on_peer_schedule_failed``).
The tasks are time bombs that run 1 s later on whichever node holds them.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from gobucket import (
    BucketConfig,
    Executor,
    NoPeerAvailableError,
    TaskBucket,
    TaskBucketGroup,
    TaskContext,
    TaskType,
)

SECRET = "example-cluster-secret"  # every node of the cluster must know it; it is never sent
_print_lock = threading.Lock()  # hooks run on worker threads: keep their lines whole


def say(text: str) -> None:
    with _print_lock:
        print(text, flush=True)


class Say(Executor):
    """Prints which node ran a task."""

    def __init__(self, node: str) -> None:
        self.node = node

    def on_execute(self, ctx: TaskContext, id: str, data: Any) -> None:
        say(f"  node {self.node} ran {id} (data {data})")


def main() -> None:
    # ERROR: stop() logs a WARNING "peer ... down" for each peer it disconnects from.
    logging.basicConfig(level=logging.ERROR)
    life = {"life_span": 10.0, "run_after": 1.0, "name": "jobs"}
    bucket_a = TaskBucket(BucketConfig(max_bucket=3, **life), Say("A"))
    bucket_b = TaskBucket(BucketConfig(max_bucket=5, **life), Say("B"))

    # discovery=False: a purely static group (no mDNS traffic on the LAN).
    node_b = TaskBucketGroup(
        {"jobs": bucket_b}, port=0, host="127.0.0.1", secret=SECRET, node_id="B", discovery=False
    ).start()
    b_host, b_port = node_b.address
    node_a = TaskBucketGroup(
        {"jobs": bucket_a},
        peers=[f"{b_host}:{b_port}"],
        port=0,
        host="127.0.0.1",
        secret=SECRET,
        node_id="A",
        discovery=False,
    )

    def failed(peer: str, bucket: str, task_id: str, error: BaseException) -> None:
        # Runs on a worker thread, for every fill the group could not place.
        say(f"  on_peer_schedule_failed: {task_id} (peer {peer or '-'}): {type(error).__name__}")

    node_a.on_peer_schedule_failed = failed
    node_a.start()
    try:
        say(f"node B listens on {b_host}:{b_port}; node A on {node_a.address[1]}")
        if not node_a.wait_for_peers(bucket="jobs", timeout=30):
            raise SystemExit("node A could not reach node B")
        for peer in node_a.peers():
            say(f"A sees peer {peer.node} at {peer.address}: up={peer.up} loads={peer.loads}")

        say("filling 10 time bombs into node A:")
        for n in range(10):
            task_id = f"job::{n}"
            try:
                placement = node_a.fill("jobs", task_id, {"n": n}, task_type=TaskType.TIME_BOMB)
            except NoPeerAvailableError:
                say(f"  {task_id} -> nowhere (every bucket is full)")
                continue
            where = "local" if placement.local else f"peer at {placement.address}"
            say(f"  {task_id} -> node {placement.node} ({where})")

        say(f"alive now: A holds {len(bucket_a)}, B holds {len(bucket_b)}; running them:")
        bucket_a.join(timeout=5)
        bucket_b.join(timeout=5)
    finally:
        node_a.stop()
        node_b.stop()
        bucket_a.close(timeout=1)
        bucket_b.close(timeout=1)
    say("both nodes stopped")


if __name__ == "__main__":
    main()
