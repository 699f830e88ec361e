"""Ask a running node what it holds: one task's state, and a node's STATUS over the wire.

Run: python examples/node_status.py

Two nodes on loopback share a secret; node A (room for 3) overflows to node B.
The script prints ``bucket.status(id)`` for a waiting time bomb, then asks node A
for its STATUS the way ``gobucket status HOST:PORT`` does (``fetch_status``):
its buckets' counts and every peer it knows. From a shell, with the node running:

    GOBUCKET_SECRET=example-cluster-secret gobucket status 127.0.0.1:PORT
    GOBUCKET_SECRET=example-cluster-secret gobucket top --once 127.0.0.1:PORT
"""

from __future__ import annotations

import logging
from typing import Any

from gobucket import (
    BucketConfig,
    FunctionExecutor,
    TaskBucket,
    TaskBucketGroup,
    TaskType,
    fetch_status,
)

SECRET = "example-cluster-secret"  # in real use: --secret-file PATH or GOBUCKET_SECRET


def main() -> None:
    logging.basicConfig(level=logging.ERROR)
    config: dict[str, Any] = {"name": "jobs", "run_after": 30.0, "life_span": 60.0}
    bucket_a = TaskBucket(BucketConfig(max_bucket=3, **config), FunctionExecutor())
    bucket_b = TaskBucket(BucketConfig(max_bucket=5, **config), FunctionExecutor())
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
    ).start()
    try:
        if not node_a.wait_for_peers(bucket="jobs", timeout=30):
            raise SystemExit("node A could not reach node B")
        for i in range(6):  # 3 stay on A, 3 go to B
            placement = node_a.fill("jobs", f"report-{i}", {"n": i}, task_type=TaskType.TIME_BOMB)
            print(f"report-{i} -> node {placement.node}")

        status = bucket_a.status("report-0")
        assert status is not None
        print(
            f"\nreport-0 on A: {status.state.value}, attempt {status.attempt}, "
            f"due in {status.due_in:.1f} s, {status.life_left:.1f} s of life left"
        )

        host, port = node_a.address
        node = fetch_status(f"{host}:{port}", secret=SECRET)
        print(f"\nSTATUS of node {node.node} ({host}:{port}), up {node.uptime:.1f} s")
        for stats in node.buckets:
            print(f"  bucket {stats.name}: {stats.alive}/{stats.max_bucket} alive")
        for peer in node.peers:
            state = "up" if peer.up else f"down ({peer.reason})"
            print(f"  peer {peer.node} at {peer.address[0]}:{peer.address[1]}: {state}")
    finally:
        node_a.stop()
        node_b.stop()
        for bucket in (bucket_a, bucket_b):
            bucket.close(grace=0)


if __name__ == "__main__":
    main()
