"""`python -m coclib.testing.simulator --port 8080 --tokens a,b`: see `cli.py`."""

from __future__ import annotations

from coclib.testing.simulator.cli import main

main()
