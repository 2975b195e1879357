"""The developer-portal endpoints coc.py's email/password login uses, served by the simulator.

coc.py logs in (`/api/login`), lists its keys, revokes those bound to other IPs and creates one
for its own IP, which it reads from the temporary token's `limits[1].cidrs[0]`. A created key
becomes a bearer token the simulated API accepts; a revoked one stops working. Routing coc.py's
hard-coded portal address here is `coclib.testing.portal`'s job.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
import secrets
import time
import uuid
from typing import Any

import orjson
from aiohttp import web

PORTAL_MAX_KEYS = 10


def _b64(data: bytes) -> str:
    # Standard alphabet, not URL-safe: coc.py reads the payload with base64.b64decode, which
    # silently drops '-' and '_' and would then parse garbage.
    return base64.b64encode(data).decode().rstrip("=")


def _jwt(secret: bytes, payload: dict[str, Any]) -> str:
    head = _b64(orjson.dumps({"typ": "JWT", "alg": "HS512", "kid": "28a318f7-0000-a1eb-7fa1"}))
    signing_input = f"{head}.{_b64(orjson.dumps(payload))}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha512).digest()
    return f"{signing_input}.{_b64(signature)}"


def _reply(status: int, message: str, **extra: Any) -> web.Response:
    code = 0 if status == 200 else status
    body = {"status": {"code": code, "message": message, "detail": None}} | extra
    return web.json_response(body, status=status, dumps=lambda o: orjson.dumps(o).decode())


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.read() or b"{}")
    except orjson.JSONDecodeError:
        return {}
    return body if isinstance(body, dict) else {}


class DeveloperPortal:
    """One developer account: its login, sessions and API keys.

    `api_tokens` is the simulated API's live token set: a created key is added to it, a revoked
    one removed. `email`, `password` and `ip` (the IP the portal reports; None: the caller's) may
    be changed between steps.
    """

    def __init__(self, api_tokens: set[str], email: str, password: str) -> None:
        self.api_tokens = api_tokens
        self.email, self.password = email, password
        self.ip: str | None = None
        self._secret = secrets.token_bytes(32)
        self._developer_id = str(uuid.UUID(int=random.Random(email).getrandbits(128)))
        self._sessions: set[str] = set()
        self.keys: list[dict[str, Any]] = []

    def add_routes(self, app: web.Application) -> None:
        """Serve the portal's endpoints under /api on `app`."""
        app.router.add_post("/api/login", self._login)
        app.router.add_post("/api/apikey/list", self._list_keys)
        app.router.add_post("/api/apikey/create", self._create_key)
        app.router.add_post("/api/apikey/revoke", self._revoke_key)

    def _token(self, payload: dict[str, Any]) -> str:
        claims = {
            "iss": "supercell",
            "aud": "supercell:gameapi",
            "jti": str(uuid.uuid4()),
            "iat": int(time.time()),
            "sub": f"developer/{self._developer_id}",
        }
        return _jwt(self._secret, claims | payload)

    async def _login(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        if body.get("email") != self.email or body.get("password") != self.password:
            return _reply(403, "Invalid credentials")
        session = secrets.token_urlsafe(24)
        self._sessions.add(session)
        ip = self.ip or request.remote or "127.0.0.1"
        temporary = self._token(
            {
                "exp": int(time.time()) + 3600,
                "scopes": ["clash"],
                # coc.py finds its own IP at limits[1].cidrs[0].
                "limits": [
                    {"tier": "developer/silver", "type": "throttling"},
                    {"cidrs": [f"{ip}/32"], "type": "client"},
                    {"origins": ["developer.clashofclans.com"], "type": "cors"},
                ],
            }
        )
        reply = _reply(
            200,
            "ok",
            sessionExpiresInSeconds=3600,
            developer={
                "id": self._developer_id,
                "name": "Simulated Developer",
                "game": "clash",
                "email": self.email,
                "tier": "developer/silver",
            },
            temporaryAPIToken=temporary,
            swaggerUrl="https://api.clashofclans.com/api-docs",
        )
        reply.set_cookie("session", session, httponly=True, path="/")
        return reply

    def _signed_in(self, request: web.Request) -> bool:
        return request.cookies.get("session") in self._sessions

    async def _list_keys(self, request: web.Request) -> web.Response:
        if not self._signed_in(request):
            return _reply(403, "forbidden")
        return _reply(200, "ok", sessionExpiresInSeconds=3600, keys=[dict(key) for key in self.keys])

    async def _create_key(self, request: web.Request) -> web.Response:
        if not self._signed_in(request):
            return _reply(403, "forbidden")
        if len(self.keys) >= PORTAL_MAX_KEYS:
            return _reply(400, "badRequest", description=f"Maximum of {PORTAL_MAX_KEYS} keys reached")
        body = await _json_body(request)
        cidrs, scopes = list(body.get("cidrRanges") or []), list(body.get("scopes") or ["clash"])
        token = self._token(
            {
                "scopes": scopes,
                "limits": [
                    {"tier": "developer/silver", "type": "throttling"},
                    {"cidrs": cidrs, "type": "client"},
                ],
            }
        )
        key = {
            "id": str(uuid.uuid4()),
            "developerId": self._developer_id,
            "tier": "developer/silver",
            "name": str(body.get("name", "")),
            "description": str(body.get("description", "")),
            "origins": None,
            "scopes": scopes,
            "cidrRanges": cidrs,
            "validUntil": None,
            "key": token,
        }
        self.keys.append(key)
        self.api_tokens.add(token)
        return _reply(200, "ok", sessionExpiresInSeconds=3600, key=dict(key))

    async def _revoke_key(self, request: web.Request) -> web.Response:
        if not self._signed_in(request):
            return _reply(403, "forbidden")
        wanted = (await _json_body(request)).get("id")
        for key in self.keys:
            if key["id"] == wanted:
                self.keys.remove(key)
                self.api_tokens.discard(key["key"])
                return _reply(200, "ok", sessionExpiresInSeconds=3600)
        return _reply(404, "notFound")
