"""``python -m liplax.cli``: the ``liplax`` command."""

import sys

from liplax.cli import main

sys.exit(main())
