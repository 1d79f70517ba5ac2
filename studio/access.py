"""The single access layer every request passes: REST, Gradio (pages, API, files, uploads,
queue/SSE, websockets), /static, /docs and share pages.

It is a plain ASGI middleware wrapped around the whole app, so no route — including the
ones Gradio adds — can be reached around it. In order, for each request:

1. Host allow-list (DNS rebinding): loopback names, the configured public/allowed hosts, and
   IP literals when listening off loopback. A missing or foreign Host → 403.
2. Cross-site requests: ``Origin`` must be this server's own origin (``null`` → 403); without
   an Origin, ``Sec-Fetch-Site`` must say same-origin for anything but a top-level
   navigation. CORS preflights are answered here with 403: the Studio never grants CORS,
   and any ``Access-Control-*`` header an inner app adds is dropped.
3. Who is asking: a bearer API token or the session cookie, or the local owner when
   accounts are off (loopback only). Without one, only /healthz, /login and share pages
   answer; pages redirect to /login, everything else gets 401.
4. Per-route checks that need the caller: Gradio's ``file=`` route serves a cached asset or a
   job preview only to its owner, and never fetches URLs.
5. Body caps enforced while the body streams (413 before the app has read past the cap).
6. Security headers on every response (CSP, nosniff, frame-ancestors, referrer policy).
"""
from __future__ import annotations

import ipaddress
import json
import logging
from pathlib import Path
from typing import Any, Awaitable, Callable
from urllib.parse import quote, unquote, urlsplit

from studio.auth import LOCAL, NOBODY, Viewer, _current

log = logging.getLogger("studio.access")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

SESSION_COOKIE = "studio_session"
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
SAFE_METHODS = {"GET", "HEAD"}
PUBLIC_EXACT = {"/healthz", "/login", "/logout"}
PUBLIC_PREFIXES = ("/s/",)
UPLOAD_PATHS = {"/api/v1/assets", "/api/v1/adapters", "/gradio_api/upload"}
IMAGE_JSON_PATHS = {"/sdapi/v1/img2img", "/sdapi/v1/png-info"}

# The UI (Gradio) needs inline scripts/styles; everything else is same-origin only.
PAGE_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data: blob:; media-src 'self' data: blob:; font-src 'self' data:; "
            "connect-src 'self'; worker-src 'self' blob:; frame-src 'self'; object-src 'none'; base-uri 'self'; "
            "form-action 'self'; frame-ancestors 'none'")
FILE_CSP = "default-src 'none'; img-src 'self'; media-src 'self'; style-src 'unsafe-inline'; sandbox; frame-ancestors 'none'"


def is_loopback_host(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_host(value: str) -> tuple[str, str]:
    """'Example.com:7860' -> ('example.com', '7860'); '[::1]:80' -> ('::1', '80')."""
    value = value.strip().lower()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        return host, rest.lstrip(":")
    if value.count(":") == 1:
        host, _, port = value.partition(":")
        return host, port
    return value, ""


class Headers:
    def __init__(self, scope: Scope) -> None:
        self.raw: list[tuple[bytes, bytes]] = scope.get("headers") or []
        self._d: dict[str, str] = {}
        for k, v in self.raw:
            key = k.decode("latin-1").lower()
            if key not in self._d:  # first wins; duplicates of security headers are suspicious anyway
                self._d[key] = v.decode("latin-1")
        self.host_count = sum(1 for k, _ in self.raw if k.lower() == b"host")

    def get(self, key: str, default: str = "") -> str:
        return self._d.get(key, default)

    def cookie(self, name: str) -> str:
        for part in self.get("cookie").split(";"):
            k, _, v = part.strip().partition("=")
            if k == name:
                return v
        return ""


class AccessLayer:
    """ASGI middleware; see the module docstring for what it checks and in which order."""

    def __init__(self, app: Any, services: Any) -> None:
        self.app = app
        self.services = services
        s = services.settings
        self.settings = s
        self.auth_on = s.auth_enabled
        self.allowed_names = set(LOOPBACK_NAMES)
        self.public_origins: set[str] = set()
        for u in s.public_urls:
            self.allow_public_url(u)
        self.allowed_names |= {h.lower() for h in s.allowed_hosts}
        self.any_ip_literal = not is_loopback_host(s.host)
        if s.host not in ("0.0.0.0", "::"):
            self.allowed_names.add(s.host.lower())
        self.ui_cache = (s.data_dir / "ui-cache").resolve()
        self.previews = s.previews_dir.resolve()

    def allow_public_url(self, url: str) -> None:
        """Serve requests addressed to ``url`` (a --public-url, or the share tunnel's address)."""
        parts = urlsplit(url)
        if parts.hostname:
            self.allowed_names.add(parts.hostname.lower())
            self.public_origins.add(f"{parts.scheme.lower()}://{parts.netloc.lower()}")

    # -- entry -----------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        h = Headers(scope)
        path = scope.get("path", "")
        method = scope.get("method", "GET") if scope["type"] == "http" else "WEBSOCKET"

        refusal = self.check_host(h) or self.check_cross_site(h, method, path)
        if not refusal and not self.auth_on:  # defence in depth behind the loopback bind
            client = (scope.get("client") or ("", 0))[0]
            if not is_loopback_host(client):
                refusal = "remote clients are refused while accounts are off (loopback-only Studio)"
        if refusal:
            await self.refuse(scope, receive, send, 403, refusal)
            return
        if method == "OPTIONS":  # never CORS: a preflight that got here is same-origin and pointless
            await self.respond(send, 204, b"", [(b"allow", b"GET, HEAD, POST")])
            return

        v = self.identify(h, scope)
        public = path in PUBLIC_EXACT or path.startswith(PUBLIC_PREFIXES)
        if v is None and not public:
            if method in SAFE_METHODS and "text/html" in h.get("accept") and not path.startswith(("/api/", "/gradio_api/")):
                target = "/login?next=" + quote(path + ("?" + scope["query_string"].decode("latin-1")
                                                        if scope.get("query_string") else ""), safe="")
                await self.respond(send, 303, b"", [(b"location", target.encode())])
            else:
                await self.refuse(scope, receive, send, 401, "sign in required (session cookie or Bearer API token)",
                                  [(b"www-authenticate", b'Bearer realm="studio"')])
            return
        viewer = v or NOBODY
        if path.startswith("/gradio_api/file=") or path.startswith("/file="):
            why = self.check_gradio_file(path, viewer)
            if why:
                await self.refuse(scope, receive, send, 403 if why != "missing" else 404,
                                  "file not allowed" if why != "missing" else "not found")
                return

        scope.setdefault("state", {})["studio_viewer"] = viewer
        if scope["type"] == "websocket":
            tok = _current.set(viewer)
            try:
                await self.app(scope, receive, send)
            finally:
                _current.reset(tok)
            return

        cap = self.body_cap(path, h)
        clen = h.get("content-length")
        if clen:
            try:
                n = int(clen)
            except ValueError:
                await self.respond_json(send, 400, "bad Content-Length")
                return
            if n > cap:
                await self.respond_json(send, 413, f"request body of {n} bytes exceeds the {cap} byte limit")
                return
        state = {"seen": 0, "over": False, "started": False}

        async def capped_receive() -> dict[str, Any]:
            if state["over"]:
                return {"type": "http.disconnect"}
            msg = await receive()
            if msg["type"] == "http.request":
                state["seen"] += len(msg.get("body", b""))
                if state["seen"] > cap:
                    state["over"] = True
                    if not state["started"]:
                        state["started"] = True
                        await self.respond_json(send, 413, f"request body exceeds the {cap} byte limit")
                    return {"type": "http.disconnect"}
            return msg

        async def guarded_send(msg: dict[str, Any]) -> None:
            if state["over"]:
                return  # we already answered 413; the app's reply to a cut body is dropped
            if msg["type"] == "http.response.start":
                state["started"] = True
                msg = dict(msg)
                msg["headers"] = self.response_headers(path, msg.get("headers") or [])
            await send(msg)

        tok = _current.set(viewer)
        try:
            await self.app(scope, capped_receive, guarded_send)
        except Exception:
            if not state["over"]:
                raise
        finally:
            _current.reset(tok)

    # -- checks ----------------------------------------------------------------------------
    def host_allowed(self, host: str) -> bool:
        if not host:
            return False
        if host in self.allowed_names:
            return True
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        # An IP literal cannot be rebound by DNS; accept it when others are meant to reach us.
        return ip.is_loopback or self.any_ip_literal

    def check_host(self, h: Headers) -> str:
        if h.host_count != 1:
            return "exactly one Host header is required"
        host, _ = split_host(h.get("host"))
        if not self.host_allowed(host):
            return f"host {host[:80]!r} is not served here (DNS rebinding protection; see --public-url)"
        return ""

    def check_cross_site(self, h: Headers, method: str, path: str) -> str:
        origin = h.get("origin")
        share_read = path.startswith("/s/") and method in SAFE_METHODS
        if origin:
            if origin.strip().lower() == "null":
                return "requests from an opaque origin (Origin: null) are refused"
            if not self.same_origin(origin, h.get("host")):
                if share_read and method in SAFE_METHODS:
                    return ""
                return f"cross-origin request from {origin[:100]} refused"
        site = h.get("sec-fetch-site").lower()
        if site in ("", "same-origin", "none"):
            return ""
        if share_read:
            return ""
        if method in SAFE_METHODS and h.get("sec-fetch-mode").lower() == "navigate":
            return ""  # following a link to the Studio is fine; it only shows a page (or the login)
        return f"{site} request refused"

    def same_origin(self, origin: str, host_header: str) -> bool:
        o = origin.strip().lower().rstrip("/")
        if o in self.public_origins:
            return True
        parts = urlsplit(o)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return False
        o_host, o_port = parts.hostname, str(parts.port or ("443" if parts.scheme == "https" else "80"))
        h_host, h_port = split_host(host_header)
        h_port = h_port or ("443" if parts.scheme == "https" else "80")
        return o_host == h_host and o_port == h_port and self.host_allowed(o_host)

    def identify(self, h: Headers, scope: Scope) -> Viewer | None:
        if not self.auth_on:
            return LOCAL
        authz = h.get("authorization")
        if authz[:7].lower() == "bearer ":
            return self.services.auth.from_token(authz[7:].strip())
        cookie = h.cookie(SESSION_COOKIE)
        if cookie:
            return self.services.auth.from_session(cookie)
        return None

    def check_gradio_file(self, path: str, v: Viewer) -> str:
        """Gradio serves files by absolute path; ours (asset links, previews) only to their owner."""
        raw = unquote(path.split("file=", 1)[1])
        if "://" in raw or raw.startswith("//"):
            return "url"  # no fetching other servers through us
        try:
            p = Path(raw).resolve()
        except (OSError, ValueError):
            return "bad"
        if v.is_admin:
            return ""
        if self.ui_cache in p.parents:  # ui-cache/<asset id>/<name>
            asset_id = p.relative_to(self.ui_cache).parts[0].split(".")[0]
            exists, owner = self.services.assets.owner_of(asset_id)
            return "" if exists and v.user_id is not None and owner == v.user_id else "missing"
        if self.previews in p.parents:
            from studio.errors import NotFound

            tok = _current.set(v)
            try:
                self.services.jobs.preview_path(p.stem)
            except NotFound:
                return "missing"
            finally:
                _current.reset(tok)
        return ""

    def body_cap(self, path: str, h: Headers) -> int:
        if path in UPLOAD_PATHS and h.get("content-type").lower().startswith("multipart/form-data"):
            return self.settings.max_upload_bytes + (1 << 20)
        if path == "/login":
            return 16 * 1024
        if path in IMAGE_JSON_PATHS:  # A1111 clients send images as base64 inside JSON
            return self.settings.max_upload_bytes * 4 // 3 + (1 << 20)
        return self.settings.max_json_bytes

    # -- responses -------------------------------------------------------------------------
    def response_headers(self, path: str, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        out = [(k, v) for k, v in headers
               if not k.lower().startswith(b"access-control-") and k.lower() not in (
                   b"x-frame-options", b"x-content-type-options", b"referrer-policy")]
        names = {k.lower() for k, _ in out}
        # the splat viewer is embedded by the Splat tab and by share pages (same origin only)
        framable = path.startswith(("/static/splat/", "/static/relight/")) or (path.startswith("/s/") and path.endswith("/viewer.html"))
        ctype = next((v for k, v in out if k.lower() == b"content-type"), b"").lower()
        if b"content-security-policy" not in names:
            is_file = path.startswith(("/api/v1/assets/", "/gradio_api/file=", "/file=")) or \
                (path.startswith("/s/") and "/f/" in path)
            csp = FILE_CSP if is_file or not ctype.startswith(b"text/html") else PAGE_CSP
            if framable:
                csp = csp.replace("frame-ancestors 'none'", "frame-ancestors 'self'")
            out.append((b"content-security-policy", csp.encode()))
        out += [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"SAMEORIGIN" if framable else b"DENY"),
                (b"referrer-policy", b"same-origin"), (b"cross-origin-resource-policy", b"same-origin")]
        return out

    async def respond(self, send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None,
                      ctype: bytes = b"text/plain; charset=utf-8") -> None:
        hs = [(b"content-type", ctype), (b"content-length", str(len(body)).encode())] + (headers or [])
        await send({"type": "http.response.start", "status": status, "headers": self.response_headers("", hs)})
        await send({"type": "http.response.body", "body": body})

    async def respond_json(self, send: Send, status: int, detail: str,
                           headers: list[tuple[bytes, bytes]] | None = None) -> None:
        await self.respond(send, status, json.dumps({"detail": detail}).encode(), headers, b"application/json")

    async def refuse(self, scope: Scope, receive: Receive, send: Send, status: int, detail: str,
                     headers: list[tuple[bytes, bytes]] | None = None) -> None:
        if scope["type"] == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008, "reason": detail[:120]})
            return
        await self.respond_json(send, status, detail, headers)


def install(app: Any, services: Any) -> AccessLayer:
    """Wrap ``app`` (FastAPI with Gradio mounted); returns the ASGI callable to serve."""
    return AccessLayer(app, services)


def route_table(app: Any) -> list[tuple[str, str]]:
    """(method, path) of every route of ``app`` and its mounted/included apps (Gradio's too):
    what the access layer must guard; the security test and bench walk it."""
    from starlette.routing import Mount, Route, WebSocketRoute

    out: list[tuple[str, str]] = []

    def walk(routes: list[Any], prefix: str) -> None:
        for r in routes:
            if hasattr(r, "original_router"):  # fastapi's include_router (Gradio's API routes)
                walk(r.original_router.routes, prefix + (getattr(r.include_context, "prefix", "") or ""))
            elif isinstance(r, Mount):
                sub = getattr(r, "routes", None) or getattr(getattr(r, "app", None), "routes", None)
                if sub:
                    walk(sub, prefix + r.path)
                else:
                    out.append(("GET", prefix + r.path + "/x"))
            elif isinstance(r, WebSocketRoute):
                out.append(("WEBSOCKET", prefix + r.path))
            elif isinstance(r, Route):
                for m in sorted((r.methods or {"GET"}) - {"HEAD"}):
                    out.append((m, prefix + r.path))
    walk(app.routes, "")
    return out


def fill_path(path: str) -> str:
    """A concrete URL for a route pattern (every parameter 'x')."""
    import re

    return re.sub(r"\{[^}:]+(:[^}]+)?\}", "x", path).replace("//", "/")
