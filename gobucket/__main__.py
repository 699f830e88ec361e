"""``python -m gobucket``: the same as the ``gobucket`` command."""

import sys

from gobucket.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
