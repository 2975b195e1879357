"""`python -m worker`: the operator's command line. See `python -m worker --help`."""

from __future__ import annotations

import sys

from worker.startup import start_up

with start_up():
    from worker.cli import main

sys.exit(main())
