"""`python -m worker`: the operator's command line. See `python -m worker --help`."""

from __future__ import annotations

import sys

from worker.cli import main

sys.exit(main())
