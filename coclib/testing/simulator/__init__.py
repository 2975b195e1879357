"""A Clash of Clans API simulator: the project's only test double for the CoC API.

An aiohttp.web server that answers the endpoints the refresh worker uses the way the real API
does: status codes, error bodies, `Cache-Control`, bearer tokens, latency, per-token rate limits,
plus the developer-portal endpoints coc.py's email/password login uses (see
`coclib.testing.portal` for routing coc.py there). Tests flip the public switches between steps;
every API call is logged.

Run it alone with ``python -m coclib.testing.simulator --port 8080 --tokens a,b``.

Modules, by job:
    bodies            the deterministic 200 bodies (players, clans, current wars)
    answers           error bodies, forced statuses, and the bad 200 bodies (`BadBody`)
    developer_portal  login and API keys for coc.py's email/password login
    server            `CocApiSimulator`: routing, fault switches, the call log, start/stop
    calls             `Call` and the rate measures over arrival (or grant) times
    harness           `SimulatorThread`: a simulator in a thread of its own
    cli               the command line
"""

from __future__ import annotations

from coclib.testing.simulator.answers import CACHE_CONTROL, BadBody
from coclib.testing.simulator.bodies import simulated_body
from coclib.testing.simulator.calls import Call, max_calls_in_window, tightest_span
from coclib.testing.simulator.harness import SimulatorThread
from coclib.testing.simulator.server import CocApiSimulator

__all__ = [
    "CACHE_CONTROL",
    "BadBody",
    "Call",
    "CocApiSimulator",
    "SimulatorThread",
    "max_calls_in_window",
    "simulated_body",
    "tightest_span",
]
