"""``python -m rlr_engine.cli``: the ``rlr`` command (also what torchrun and detached engines run)."""

import sys

from rlr_engine.cli import main

sys.exit(main())
