"""``python -m gobucket``: the same as the ``gobucket`` command."""

import sys

from gobucket.cli.main import main

sys.exit(main())
