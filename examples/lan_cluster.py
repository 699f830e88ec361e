"""Build a small LAN on this machine and watch gobucket nodes find each other by mDNS.

Needs root and iproute2 (it makes network namespaces joined by a bridge, and
removes them at the end). Run: sudo python examples/lan_cluster.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from gobucket.testing import VirtualLan, netns_available


def main() -> int:
    ok, why = netns_available()
    if not ok:
        print(f"cannot build a virtual LAN here: {why}")
        return 1
    with VirtualLan(hosts=3) as lan:
        nodes = []
        for host, size in enumerate((1, 1000, 1000)):
            proc = lan.popen(
                host,
                [
                    sys.executable,
                    "-m",
                    "gobucket.testing.node",
                    "--host",
                    lan.addresses[host],
                    "--port",
                    "7300",
                    "--cluster",
                    "demo",
                    "--secret",
                    "demo-secret",
                    "--max",
                    str(size),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            ready = json.loads(proc.stdout.readline())  # type: ignore[union-attr]
            print(f"node {ready['node']} up at {lan.addresses[host]}:7300")
            nodes.append(proc)
        first = nodes[0]
        assert first.stdin is not None and first.stdout is not None
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            first.stdin.write('{"cmd": "peers"}\n')
            first.stdin.flush()
            peers = json.loads(first.stdout.readline())["peers"]
            if sum(1 for p in peers if p["up"] and p["loads"]) == 2:
                break
            time.sleep(0.2)
        for peer in peers:
            print(f"node 0 sees {peer['node']} at {peer['address']} via {peer['source']}")
        first.stdin.write('{"cmd": "fill", "n": 100, "prefix": "job", "run_after": 30}\n')
        first.stdin.flush()
        print("100 fills on node 0 (bucket of 1) went to:", json.loads(first.stdout.readline()))
        for proc in nodes:
            if proc.stdin:
                proc.stdin.write('{"cmd": "stop"}\n')
                proc.stdin.flush()
    print("namespaces removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
