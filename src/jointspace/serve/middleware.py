"""Pure ASGI middleware of the service: responses counted by status class, and the token on the docs."""

from __future__ import annotations

import hmac
from collections import Counter

from fastapi.responses import JSONResponse

UNAUTHORIZED = "missing or wrong bearer token"


def token_matches(header: str | None, token: str) -> bool:
    """Whether an Authorization header carries `Bearer <token>` (compared in constant time)."""
    scheme, _, given = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


class StatusCounter:
    """Pure ASGI middleware counting responses by status class (for /stats)."""

    def __init__(self, app, counts: Counter):
        self.app, self.counts = app, counts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def counting_send(message):
            if message["type"] == "http.response.start":
                self.counts[f"{message['status'] // 100}xx"] += 1
            await send(message)

        await self.app(scope, receive, counting_send)


class DocsGuard:
    """Pure ASGI middleware: with a token, the API docs and the schema need it as every route but
    /healthz and the page do (their routes are FastAPI's own, so they are guarded here)."""

    def __init__(self, app, token: str, paths: tuple[str, ...]):
        self.app, self.token, self.paths = app, token, paths

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] in self.paths:
            header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
            if not token_matches(header, self.token):
                response = JSONResponse({"detail": UNAUTHORIZED}, 401, headers={"WWW-Authenticate": "Bearer"})
                return await response(scope, receive, send)
        await self.app(scope, receive, send)
