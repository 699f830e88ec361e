"""Entry point of the ``gobucket`` command."""

from __future__ import annotations

import argparse
import logging
import sys

from gobucket import __version__
from gobucket.cli.remote import REMOTE_COMMANDS, add_remote_commands, run_remote
from gobucket.cli.secret import add_secret_options, secret_or_exit

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``gobucket`` command."""
    parser = argparse.ArgumentParser(
        prog="gobucket", description="In-memory background jobs as actors."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log each task's life")
    parser.add_argument(
        "--version", action="version", version=f"gobucket {__version__}", help="print the version"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run a standalone bucket you can watch (no network)")
    demo.add_argument(
        "--speed", type=_speed, default=1.0, help="time scale: 2 runs twice as fast (default 1)"
    )
    demo.add_argument("--plain", action="store_true", help="no live display, plain lines")
    peers = sub.add_parser("peers", help="browse the LAN (mDNS) for gobucket nodes")
    peers.add_argument("--cluster", default=None, help="only this cluster (default: all)")
    peers.add_argument("--watch", action="store_true", help="refresh live until Ctrl-C")
    add_secret_options(peers)
    peers.add_argument("--timeout", type=float, default=2.0, help="seconds to browse")
    peers.add_argument(
        "--interface", action="append", default=None, help="IPv4 address to browse on"
    )
    add_remote_commands(sub)
    return parser


def _speed(text: str) -> float:
    """``demo --speed``: a number the demo can run at, or a usage error (not a traceback)."""
    # why: a subcommand's module (and what it imports) loads only when it runs
    from gobucket.cli.demo import check_speed

    try:
        speed = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    try:
        return check_speed(speed)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def main(argv: list[str] | None = None) -> int:
    """Run the ``gobucket`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.command == "demo":
        # why: a subcommand's module (and what it imports) loads only when it runs
        from gobucket.cli.demo import run_demo

        return run_demo(speed=args.speed, plain=args.plain)
    if args.command == "peers":
        # why: a subcommand's module (and what it imports) loads only when it runs
        from gobucket.cli.peers import run_peers

        secret = secret_or_exit(args)
        return run_peers(args.cluster, args.watch, secret, args.timeout, args.interface)
    if args.command in REMOTE_COMMANDS:
        return run_remote(args)
    return 2  # pragma: no cover - argparse enforces a command


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
