"""The single access-control point every request (REST and UI) passes through.

Today it enforces the loopback rule: unless the server was started with
``--insecure-listen``, only loopback clients are served (defence in depth behind the
bind check). Authentication and read-only share links plug in here later, so they
apply to every route at once.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response


@dataclass
class Decision:
    allowed: bool
    status: int = 403
    reason: str = ""


class AccessPolicy:
    def __init__(self, allow_remote: bool = False) -> None:
        self.allow_remote = allow_remote

    def decide(self, request: Request) -> Decision:
        if request.url.path == "/healthz":
            return Decision(True)
        host = request.client.host if request.client else ""
        if self.allow_remote or _is_loopback(host):
            return Decision(True)
        return Decision(False, 403, "remote access is disabled (start with --insecure-listen)")


def _is_loopback(host: str) -> bool:
    if host in ("localhost", "testclient"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def install(app, policy: AccessPolicy) -> None:  # noqa: ANN001
    @app.middleware("http")
    async def access_control(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        d = policy.decide(request)
        if not d.allowed:
            return JSONResponse({"detail": d.reason}, status_code=d.status)
        return await call_next(request)
