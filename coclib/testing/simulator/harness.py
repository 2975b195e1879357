"""Run a simulator in a thread of its own, for synchronous tests and code that runs its own loop."""

from __future__ import annotations

import asyncio
import threading

from coclib.testing.simulator.server import CocApiSimulator


class SimulatorThread:
    """Run a simulator in a daemon thread with its own event loop.

    For synchronous tests, and for tests where the code under test runs its own loop::

        with SimulatorThread(CocApiSimulator()) as sim:
            sim.base_url
    """

    def __init__(self, simulator: CocApiSimulator, host: str = "127.0.0.1", port: int = 0) -> None:
        self.simulator, self._host, self._port = simulator, host, port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def __enter__(self) -> CocApiSimulator:
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), daemon=True, name="coc-api-simulator"
        )
        self._thread.start()
        if not ready.wait(timeout=10):
            raise RuntimeError("the CoC API simulator did not start within 10 s")
        if self._error is not None:
            raise RuntimeError("the CoC API simulator failed to start") from self._error
        return self.simulator

    def __exit__(self, *exc_info: object) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    def _run(self, ready: threading.Event) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self.simulator.start(self._host, self._port))
        except BaseException as exc:  # reported to __enter__, which raises it
            self._error = exc
            ready.set()
            loop.close()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self.simulator.stop())
            loop.close()
