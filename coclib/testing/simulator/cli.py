"""`python -m coclib.testing.simulator`: serve a simulated API until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import signal

from coclib.testing.simulator.server import CocApiSimulator


def _latency(text: str) -> tuple[float, float]:
    low, _, high = text.partition(",")
    bounds = (float(low), float(high or low))
    if not 0 <= bounds[0] <= bounds[1]:
        raise argparse.ArgumentTypeError("latency must be LOW,HIGH with 0 <= LOW <= HIGH")
    return bounds


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m coclib.testing.simulator",
        description="Serve a simulated Clash of Clans API until killed.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    parser.add_argument(
        "--latency",
        type=_latency,
        default=(0.0, 0.0),
        help="seconds, LOW,HIGH (uniform per request) or one value",
    )
    parser.add_argument("--tokens", default="test-token", help="comma-separated bearer tokens")
    parser.add_argument(
        "--rate-limit",
        type=float,
        default=None,
        help="calls per second per token before 429 requestThrottled",
    )
    parser.add_argument("--email", default="dev@example.com")
    parser.add_argument("--password", default="portal-password")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--player-bytes",
        type=int,
        default=0,
        help="grow player bodies to about this many bytes (more achievements, as real players have)",
    )
    return parser


async def _serve(simulator: CocApiSimulator, host: str, port: int) -> None:
    await simulator.start(host, port)
    # One parseable line, so a parent process can learn the port when it asked for port 0.
    print(
        f"CoC API simulator listening: base_url={simulator.base_url} portal_url={simulator.portal_url}",
        flush=True,
    )
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopped.set)
    try:
        await stopped.wait()
    finally:
        await simulator.stop()
        print(f"CoC API simulator stopped: {simulator.summary()}", flush=True)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: serve until SIGINT or SIGTERM."""
    args = _parser().parse_args(argv)
    tokens = [token for token in args.tokens.split(",") if token]
    simulator = CocApiSimulator(
        tokens=tokens,
        email=args.email,
        password=args.password,
        latency=args.latency,
        rate_limit=args.rate_limit,
        seed=args.seed,
        player_bytes=args.player_bytes,
    )
    asyncio.run(_serve(simulator, args.host, args.port))
