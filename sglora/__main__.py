"""``python -m sglora``: the ``sglora`` command."""

import sys

from .cli import main

sys.exit(main())
