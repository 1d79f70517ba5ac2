"""Routes around the app that are not engine work: login/logout, accounts and API tokens,
share links (REST + the public read-only share page), and the offline API docs.

The login page and share pages are plain HTML written here (no Gradio, no scripts except
the splat viewer's own), so they work under a strict CSP and reach nothing else.
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Form, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, Field

from studio.access import SESSION_COOKIE
from studio.auth import RateLimited, viewer
from studio.errors import NotFound, StudioError
from studio.wiring import Services

STATIC = Path(__file__).resolve().parents[1] / "ui" / "static"
VIEWER_FILES = {"viewer.html": "text/html; charset=utf-8", "viewer.js": "text/javascript; charset=utf-8",
                "sort-worker.js": "text/javascript; charset=utf-8"}

STYLE = """body{font:15px system-ui,sans-serif;background:#f6f6f7;color:#222;margin:0}
main{max-width:960px;margin:40px auto;padding:0 16px}.card{background:#fff;border-radius:10px;padding:24px;
box-shadow:0 1px 3px #0002}input{font:inherit;padding:8px;width:100%;box-sizing:border-box;margin:4px 0 12px}
button{font:inherit;padding:8px 18px;border:0;border-radius:6px;background:#f97316;color:#fff;cursor:pointer}
.err{color:#b00020}img,video{max-width:100%;height:auto;image-rendering:auto;border-radius:6px;background:#000}
img.px{image-rendering:pixelated}figure{margin:0 0 24px}dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px}
iframe{width:100%;height:540px;border:0;border-radius:6px}small{color:#666}"""


def page(title: str, body: str) -> HTMLResponse:
    return HTMLResponse(f"<!doctype html><html lang=en><head><meta charset=utf-8>"
                        f"<meta name=viewport content='width=device-width,initial-scale=1'>"
                        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>"
                        f"<body><main>{body}</main></body></html>",
                        headers={"Cache-Control": "no-store"})


def safe_next(target: str) -> str:
    """Only same-site relative paths (no //host, no scheme) — no open redirect after login."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target or "\n" in target or "\r" in target:
        return "/"
    return target


def client_key(request: Request, services: Services) -> str:
    """The client address for rate limits; X-Forwarded-For only from a trusted proxy."""
    direct = request.client.host if request.client else "?"
    s = services.settings
    if s.public_urls and direct in s.trusted_proxies:
        xff = request.headers.get("x-forwarded-for", "")
        if xff:
            return xff.split(",")[-1].strip()[:64] or direct
    return direct


class TokenIn(BaseModel):
    name: str = Field("", max_length=120)


class ShareIn(BaseModel):
    asset_ids: list[str] = Field(min_length=1, max_length=100)
    title: str = Field("", max_length=200)
    include_meta: bool = False
    expires_in_days: float | None = Field(None, gt=0, le=3650)


def add_routes(app: FastAPI, services: Services) -> None:
    auth, shares, settings = services.auth, services.shares, services.settings

    # -- login / logout --------------------------------------------------------------------
    def login_form(next_: str, error: str = "", status: int = 200) -> HTMLResponse:
        err = f"<p class=err>{html.escape(error)}</p>" if error else ""
        r = page("Sign in · Studio", f"""<div class=card style="max-width:360px;margin:auto">
<h2>Studio</h2>{err}<form method=post action="/login">
<input type=hidden name=next value="{html.escape(safe_next(next_))}">
<label>Username<input name=username autocomplete=username required autofocus></label>
<label>Password<input name=password type=password autocomplete=current-password required></label>
<button type=submit>Sign in</button></form></div>""")
        r.status_code = status
        return r

    @app.get("/login", include_in_schema=False)
    def login_page(next: str = "/") -> Response:  # noqa: A002
        if not settings.auth_enabled:
            return RedirectResponse(safe_next(next), 303)
        return login_form(next)

    @app.post("/login", include_in_schema=False)
    def login(request: Request, username: str = Form("", max_length=200), password: str = Form("", max_length=2048),
              next: str = Form("/", max_length=2000)) -> Response:  # noqa: A002
        if not settings.auth_enabled:
            return RedirectResponse(safe_next(next), 303)
        try:
            token, _v = auth.login(username, password, client_key(request, services))
        except RateLimited as e:
            r = login_form(next, str(e), 429)
            r.headers["Retry-After"] = str(e.retry_after)
            return r
        except StudioError:
            return login_form(next, "Wrong username or password.", 401)
        r = RedirectResponse(safe_next(next), 303)
        r.set_cookie(SESSION_COOKIE, token, max_age=auth.SESSION_DAYS * 86400, httponly=True, samesite="strict",
                     secure=settings.secure_cookies, path="/")
        return r

    @app.get("/logout", include_in_schema=False)
    def logout_page() -> Response:
        """Signing out changes state, so it takes a POST (a link elsewhere cannot sign you out)."""
        return RedirectResponse("/login" if settings.auth_enabled else "/", 303)

    @app.post("/logout", include_in_schema=False)
    def logout(request: Request) -> Response:
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            auth.logout(cookie)
        r = RedirectResponse("/login", 303)
        r.delete_cookie(SESSION_COOKIE, path="/")
        return r

    # -- accounts --------------------------------------------------------------------------
    @app.get("/api/v1/me")
    def me() -> dict[str, Any]:
        v = viewer()
        return {"username": v.username, "is_admin": v.is_admin, "accounts": settings.auth_enabled}

    def need_user() -> str:
        v = viewer()
        if v.user_id is None:
            raise HTTPException(400, "accounts are off: API tokens are not needed on a loopback-only Studio")
        return v.user_id

    @app.get("/api/v1/tokens")
    def tokens() -> list[dict[str, Any]]:
        return auth.list_tokens(need_user())

    @app.post("/api/v1/tokens", status_code=201)
    def new_token(body: TokenIn) -> dict[str, Any]:
        tid, token = auth.create_token(need_user(), body.name)
        return {"id": tid, "name": body.name, "token": token,
                "note": "shown once: use it as 'Authorization: Bearer <token>'"}

    @app.post("/api/v1/tokens/{token_id}/revoke")
    def revoke_token(token_id: str) -> dict[str, Any]:
        v = viewer()
        if not auth.revoke_token(None if v.is_admin else need_user(), token_id[:64]):
            raise HTTPException(404, "no such token")
        return {"id": token_id[:64], "revoked": True}

    # -- share links (owner side) -----------------------------------------------------------
    @app.get("/api/v1/shares")
    def list_shares() -> list[dict[str, Any]]:
        return shares.list()

    @app.post("/api/v1/shares", status_code=201)
    def create_share(body: ShareIn, request: Request) -> dict[str, Any]:
        link = shares.create(body.asset_ids, title=body.title, include_meta=body.include_meta,
                             expires_in_days=body.expires_in_days)
        link["url"] = public_base(request, services) + link["path"]
        return link

    @app.post("/api/v1/shares/{link_id}/revoke")
    def revoke_share(link_id: str) -> dict[str, Any]:
        return shares.revoke(link_id)

    # -- share links (public side) ----------------------------------------------------------
    def opened(token: str, count: bool = False) -> Any:
        try:
            return shares.open(token, count_view=count)
        except NotFound:
            raise HTTPException(404, "This link does not exist, has expired or was revoked.") from None

    @app.get("/s/{token}", include_in_schema=False)
    def share_page(token: str) -> HTMLResponse:
        try:
            view = shares.open(token, count_view=True)
        except NotFound:
            r = page("Link not available", "<div class=card><h2>Link not available</h2>"
                     "<p>This link does not exist, has expired or was revoked.</p></div>")
            r.status_code = 404
            return r
        base = f"/s/{quote(token)}"
        parts = [f"<h2>{html.escape(view.title or 'Shared from Studio')}</h2>"]
        for i, a in enumerate(view.assets):
            src = f"{base}/f/{i}"
            if a.kind == "image":
                cls = " class=px" if (a.width or 0) <= 256 else ""
                media = f"<img{cls} src='{src}' alt='shared image {i + 1}' width={a.width or ''}>"
            elif a.kind == "video":
                media = f"<video src='{src}' controls playsinline preload=metadata></video>"
            elif a.kind == "splat":
                media = f"<iframe src='{base}/viewer.html?url={quote(src, safe='')}&amp;fps=1' title='splat viewer'></iframe>"
            else:
                media = f"<p>{html.escape(a.kind)} file, {a.size:,} bytes</p>"
            meta = view.public_meta(a)
            dl = "".join(f"<dt>{html.escape(str(k))}</dt><dd>{html.escape(str(v))}</dd>"
                         for k, v in meta.items() if v is not None and k not in ("kind", "mime"))
            parts.append(f"<figure class=card>{media}<dl>{dl}</dl>"
                         f"<p><a href='{src}?download=1'>Download</a></p></figure>")
        if not view.assets:
            parts.append("<p>Nothing is shared here any more.</p>")
        if view.expires_at:
            parts.append(f"<small>This link expires {html.escape(view.expires_at)}.</small>")
        return page(view.title or "Shared from Studio", "".join(parts))

    @app.get("/s/{token}/f/{index}", include_in_schema=False)
    def share_file(token: str, index: int, download: int = 0) -> FileResponse:
        view = opened(token)
        if not 0 <= index < len(view.assets):
            raise HTTPException(404, "no such item")
        a = view.assets[index]
        ext = Path(a.filename).suffix[:10]
        return FileResponse(services.assets.path_unchecked(a.id), media_type=a.mime,
                            filename=f"shared-{index + 1}{ext}",
                            content_disposition_type="attachment" if download else "inline",
                            headers={"Cache-Control": "private, no-store"})

    @app.get("/s/{token}/{name}", include_in_schema=False)
    def share_viewer(token: str, name: str) -> FileResponse:
        opened(token)
        if name not in VIEWER_FILES:
            raise HTTPException(404, "not found")
        return FileResponse(STATIC / "splat" / name, media_type=VIEWER_FILES[name],
                            headers={"Cache-Control": "no-store"})

    # -- API docs, served from the installed swagger-ui files (no CDN) -----------------------
    try:
        import swagger_ui_bundle

        swagger_dir = Path(swagger_ui_bundle.swagger_ui_path)
    except ImportError:  # pragma: no cover - a dependency; docs degrade to the raw schema
        swagger_dir = None

    @app.get("/docs", include_in_schema=False)
    def docs() -> Response:
        if swagger_dir is None:
            return RedirectResponse("/openapi.json")
        from fastapi.openapi.docs import get_swagger_ui_html

        return get_swagger_ui_html(openapi_url="/openapi.json", title="Studio API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/docs-assets/favicon-32x32.png")

    @app.get("/docs-assets/{name}", include_in_schema=False)
    def docs_asset(name: str) -> FileResponse:
        allowed = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css",
                   "favicon-32x32.png": "image/png"}
        if swagger_dir is None or name not in allowed:
            raise HTTPException(404, "not found")
        return FileResponse(swagger_dir / name, media_type=allowed[name])


def public_base(request: Request, services: Services) -> str:
    """The address others should use: the first --public-url, else the one the owner used."""
    if services.settings.public_urls:
        return services.settings.public_urls[0].rstrip("/")
    host = request.headers.get("host", f"127.0.0.1:{services.settings.port}")
    return f"{request.url.scheme}://{host}"

