"""``python -m rsparse``: the same as the ``rsparse`` console script (see `rsparse.cli`)."""

import sys

from rsparse.cli import main

sys.exit(main())
