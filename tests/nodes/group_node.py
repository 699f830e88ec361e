"""A group node for multi-process tests.

Starts one ``TaskBucketGroup`` with a bucket named ``sample`` on 127.0.0.1 (port 0) and
prints ``PORT <n>``. Then answers commands read from stdin, one per line:

* ``LEN`` -> ``LEN <alive tasks>``

and stops cleanly at EOF. Tasks it receives are long-lived time bombs (their slot stays taken).
"""

from __future__ import annotations

import argparse
import sys

from gobucket import BucketConfig, Executor, TaskBucket, TaskBucketGroup


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max", type=int, default=1000)
    parser.add_argument("--secret", default="cluster-key")
    parser.add_argument("--no-secret", action="store_true")
    parser.add_argument("--ping", type=float, default=0.2)
    parser.add_argument("--cluster", default="default")
    parser.add_argument("--peers", default="")
    args = parser.parse_args()

    bucket = TaskBucket(
        BucketConfig(max_bucket=args.max, name="sample", life_span=300.0, run_after=200.0),
        Executor(),
    )
    peers = [p for p in args.peers.split(",") if p]
    group = TaskBucketGroup(
        {"sample": bucket},
        peers=peers,
        port=0,
        ping_interval=args.ping,
        secret=None if args.no_secret else args.secret,
        cluster=args.cluster,
        host="127.0.0.1",
        discovery=False,
    )
    group.start()
    print(f"PORT {group.address[1]}", flush=True)
    try:
        for line in sys.stdin:
            command = line.strip()
            if command == "LEN":
                print(f"LEN {len(bucket)}", flush=True)
    finally:
        group.stop()
        bucket.close(grace=0)


if __name__ == "__main__":
    main()
