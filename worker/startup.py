"""How a worker process starts: its imports made with the garbage collector off, then frozen.

A worker process (a Lambda container, `python -m worker`) starts by importing some 60,000
objects (aiohttp, psycopg, redis, coc.py and the worker) that live as long as it does.
Collecting while they pile up frees nothing and costs about 70 ms of CPU per start, an eighth
of the import; and every full collection afterwards would scan them all again (about 30 ms
each). So the collector is off while they are made, and `gc.freeze()` then leaves them out of
every later collection: a collection during a drain scans only what the drain made.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def start_up() -> Iterator[None]:
    """Import the process's code inside this block."""
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()
