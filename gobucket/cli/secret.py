"""Where the commands get the cluster secret: a file, the environment, or (for scripts) a flag.

``--secret-file PATH`` reads the secret from a file (its trailing newline
dropped); without it, ``GOBUCKET_SECRET`` is used. ``--secret TEXT`` still works
but puts the secret where other users see it: in ``ps`` output and in the shell
history. No secret at all speaks to a node that has none (trusted networks).
"""

from __future__ import annotations

import argparse
import os
import sys

__all__ = [
    "ENV_VAR",
    "SecretError",
    "add_secret_options",
    "read_secret",
    "secret_or_exit",
]

ENV_VAR = "GOBUCKET_SECRET"
"""The environment variable holding the cluster secret."""

MAX_SECRET_FILE = 64 * 1024
"""A secret file larger than this is refused (it is surely not a secret)."""


class SecretError(ValueError):
    """The secret could not be had (unreadable or empty file, both flags given)."""


def add_secret_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--secret-file`` and ``--secret`` (mutually exclusive) to ``parser``."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--secret-file",
        metavar="PATH",
        default=None,
        help=f"read the cluster secret from this file (default: ${ENV_VAR}, if set)",
    )
    group.add_argument(
        "--secret",
        metavar="TEXT",
        default=None,
        help=(
            "the cluster secret itself; avoid it: other users see it in `ps` and it stays "
            f"in your shell history (use --secret-file or ${ENV_VAR})"
        ),
    )


def read_secret(args: argparse.Namespace, environ: dict[str, str] | None = None) -> bytes | None:
    """The secret the options and the environment give, or None for none.

    Order: ``--secret-file``, then ``--secret``, then ``$GOBUCKET_SECRET``.

    Raises:
        SecretError: the file cannot be read, is empty or too large, or the secret is empty.
    """
    env = os.environ if environ is None else environ
    path: str | None = getattr(args, "secret_file", None)
    text: str | None = getattr(args, "secret", None)
    if path is not None:
        try:
            with open(path, "rb") as handle:
                data = handle.read(MAX_SECRET_FILE + 1)
        except OSError as error:
            raise SecretError(
                f"cannot read --secret-file {path}: {error.strerror or error}"
            ) from None
        if len(data) > MAX_SECRET_FILE:
            raise SecretError(f"--secret-file {path} is larger than {MAX_SECRET_FILE} bytes")
        secret = data.rstrip(b"\r\n")
        if not secret:
            raise SecretError(f"--secret-file {path} is empty")
        return secret
    if text is not None:
        if not text:
            raise SecretError("--secret is empty")
        return text.encode()
    value = env.get(ENV_VAR)
    if value is None:
        return None
    if not value:
        raise SecretError(f"${ENV_VAR} is set but empty")
    return os.fsencode(value)


def secret_or_exit(args: argparse.Namespace) -> bytes | None:
    """The secret the options give; a clear message and exit status 2 if they give a bad one."""
    try:
        return read_secret(args)
    except SecretError as error:
        print(f"gobucket {args.command}: {error}", file=sys.stderr)
        raise SystemExit(2) from None
