"""Prometheus metrics of a group: serve /metrics, run some tasks, print one scrape, exit.

Needs the metrics extra: pip install 'gobucket[metrics]'

Run: python examples/metrics.py [--port 9108] [--serve SECONDS]

With ``--serve 30`` the endpoint stays up 30 s after the scrape, so that you can
point ``curl http://127.0.0.1:9108/metrics`` or a Prometheus server at it.
"""

from __future__ import annotations

import argparse
import logging
import random
import time
import urllib.request
from typing import Any

from gobucket import BucketConfig, Executor, TaskBucket, TaskBucketGroup, TaskContext, TaskType


class Mailer(Executor):
    """Sends (pretends to) mail; one in five sends fails."""

    def on_execute(self, ctx: TaskContext, id: str, data: Any) -> None:
        time.sleep(random.uniform(0.001, 0.02))
        if data["fail"]:
            raise ConnectionError("smtp server said no")

    def on_finish(self, ctx: TaskContext, id: str, data: Any) -> None:
        pass

    def on_execute_error(self, ctx: TaskContext, id: str, data: Any, error: BaseException) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="metrics port (0: a free one)")
    parser.add_argument("--serve", type=float, default=0.0, help="seconds to stay up after")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)

    config = BucketConfig(name="mail", max_bucket=64, life_span=10.0, run_after=0.2)
    bucket = TaskBucket(config, Mailer())
    group = TaskBucketGroup(
        {"mail": bucket}, port=0, host="127.0.0.1", discovery=False, metrics_port=args.port
    )
    with group:
        assert group.metrics_address is not None
        url = f"http://127.0.0.1:{group.metrics_address[1]}/metrics"
        for i in range(40):
            group.fill("mail", f"mail-{i}", {"fail": i % 5 == 0})
        for i in range(10):
            group.fill("mail", f"reminder-{i}", {"fail": False}, task_type=TaskType.TIME_BOMB)
        bucket.join(timeout=10)
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        print(f"# scraped {url}")
        for line in text.splitlines():
            if line.startswith("gobucket_") and "_bucket{" not in line:
                print(line)  # the histograms' buckets are left out for brevity
        if args.serve > 0:
            print(f"serving {url} for {args.serve:.0f} s")
            time.sleep(args.serve)
    bucket.close()


if __name__ == "__main__":
    main()
