"""The commands that ask a running node: ``gobucket status`` and ``gobucket top``.

Their options (the node's ``HOST:PORT``, ``--cluster``, ``--timeout`` and the
secret options of :mod:`gobucket.cli.secret`) and their dispatch; the work is in
:mod:`gobucket.cli.status` and :mod:`gobucket.cli.top` (see ``docs/operations.md``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from gobucket.cli.secret import add_secret_options, secret_or_exit

__all__ = ["REMOTE_COMMANDS", "add_remote_commands", "run_remote"]

REMOTE_COMMANDS = ("status", "top")
"""The subcommands this module adds and runs."""


def add_remote_commands(sub: Any) -> None:
    """``gobucket status`` and ``gobucket top``: ask a running node (see docs/operations.md)."""
    status = sub.add_parser("status", help="ask a running node for its buckets and peers")
    top = sub.add_parser("top", help="watch the whole cluster a node knows, live")
    for command in (status, top):
        command.add_argument("address", metavar="HOST:PORT", help="the node to ask")
        command.add_argument(
            "--cluster", default="default", help="the cluster name (default: default)"
        )
        command.add_argument(
            "--timeout", type=float, default=3.0, help="seconds to wait for a node (default 3)"
        )
        add_secret_options(command)
    status.add_argument("--json", action="store_true", help="print one JSON object, not tables")
    top.add_argument("--once", action="store_true", help="print one frame and exit")


def run_remote(args: argparse.Namespace) -> int:
    """Run ``status`` or ``top`` from parsed arguments; the exit status (2: bad arguments)."""
    if not args.timeout > 0:  # NaN too
        print(f"gobucket {args.command}: --timeout must be > 0", file=sys.stderr)
        return 2
    # why: a subcommand's module (and what it imports) loads only when it runs
    from gobucket.discovery.base import parse_address

    try:
        parse_address(args.address)
    except ValueError as error:
        print(f"gobucket {args.command}: {error}", file=sys.stderr)
        return 2
    secret = secret_or_exit(args)
    if args.command == "status":
        # why: a subcommand's module (and what it imports) loads only when it runs
        from gobucket.cli.status import run_status

        return run_status(args.address, secret, args.cluster, args.timeout, as_json=args.json)
    # why: a subcommand's module (and what it imports) loads only when it runs
    from gobucket.cli.top import run_top

    return run_top(args.address, secret, args.cluster, args.timeout, once=args.once)
