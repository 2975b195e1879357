"""Send coc.py's developer-portal calls to the API simulator.

Why this exists: coc.py's email/password login (`HTTPClient.initialise_keys`) logs in to the
developer portal and lists, revokes and creates API keys at the hard-coded address
`https://developer.clashofclans.com/api/...`, in a fresh `aiohttp.ClientSession()`. Unlike the
API's `base_url`, that address cannot be configured, so without help a test of the
email/password path would reach the real portal (unreachable here, and not ours to use).

How: while `route_portal_to(url)` is active, `coc.http.aiohttp` is a stand-in module. Every
attribute is the real aiohttp's except `ClientSession`, which makes a real session wrapped so
that a URL starting with the portal address is rewritten to `url`; other URLs (the API session's
requests to `base_url`) pass unchanged. coc.py's own files are not modified.

The wrapped session's cookie jar also accepts cookies from IP-address hosts. aiohttp's default
jar drops them, so the portal's session cookie from `http://127.0.0.1:PORT` would never be sent
back and every key call would be refused.

Keep the context active for as long as the client may log in again: coc.py re-runs the portal
login when the API answers `accessDenied.invalidIp`. The patch is process-wide while active.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator
from typing import Any

import aiohttp
from coc import http as coc_http

PORTAL_ADDRESS = "https://developer.clashofclans.com"


class _RewritingSession:
    """A real `aiohttp.ClientSession` whose portal URLs go to the simulator instead."""

    def __init__(self, target: str, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("cookie_jar", aiohttp.CookieJar(unsafe=True))
        self._session = aiohttp.ClientSession(*args, **kwargs)
        self._target = target.rstrip("/")

    def _url(self, url: Any) -> Any:
        text = str(url)
        if text.startswith(PORTAL_ADDRESS):
            return self._target + text[len(PORTAL_ADDRESS) :]
        return url

    def request(self, method: str, url: Any, **kwargs: Any) -> Any:
        return self._session.request(method, self._url(url), **kwargs)

    def get(self, url: Any, **kwargs: Any) -> Any:
        return self._session.get(self._url(url), **kwargs)

    def post(self, url: Any, **kwargs: Any) -> Any:
        return self._session.post(self._url(url), **kwargs)

    async def __aenter__(self) -> _RewritingSession:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._session.close()

    def __getattr__(self, name: str) -> Any:
        # close(), closed, cookie_jar, ...: the real session's.
        return getattr(self._session, name)


class _AiohttpStandIn(types.ModuleType):
    """aiohttp as coc.http sees it while routing is active."""

    def __init__(self, target: str) -> None:
        super().__init__("aiohttp")
        self._target = target

    def __getattr__(self, name: str) -> Any:
        return getattr(aiohttp, name)

    def ClientSession(self, *args: Any, **kwargs: Any) -> _RewritingSession:
        return _RewritingSession(self._target, *args, **kwargs)


@contextlib.contextmanager
def route_portal_to(portal_url: str) -> Iterator[None]:
    """Within this block, coc.py's developer-portal calls go to `portal_url`.

    `portal_url` is the simulator's `portal_url` (``http://127.0.0.1:PORT``)::

        with route_portal_to(sim.portal_url):
            await client.login(sim.email, sim.password)
    """
    original = coc_http.aiohttp
    coc_http.aiohttp = _AiohttpStandIn(portal_url)  # type: ignore[assignment]
    try:
        yield
    finally:
        coc_http.aiohttp = original
