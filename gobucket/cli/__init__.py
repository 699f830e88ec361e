"""The ``gobucket`` command line: ``gobucket demo`` and friends."""

from gobucket.cli.main import main

__all__ = ["main"]
