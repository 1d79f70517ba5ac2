"""Accounts: users, browser sessions, API tokens, login rate limits, and who is asking.

Every service call that reads or writes owned rows asks :func:`viewer` who the caller is.
The web process sets it per request (the access layer for REST, a wrapper around every UI
event for Gradio); CLI and worker processes act as the local owner. With accounts on, a
code path that forgets to set it sees nothing (the process default is :data:`NOBODY`).

Secrets (passwords, session cookies, API tokens) are never stored or logged in clear:
passwords as argon2id hashes, cookies and tokens as sha256 of 256 random bits.
"""
from __future__ import annotations

import hashlib
import secrets
import threading
import time
import uuid
from collections import deque
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update

from storage.db import Database
from storage.models import ApiToken, AuthSession, User, utcnow
from studio.errors import StudioError


@dataclass(frozen=True)
class Viewer:
    """Who is asking. ``user_id`` None with ``is_admin`` = the local single user."""

    user_id: str | None
    username: str
    is_admin: bool
    authenticated: bool = True

    def owns(self, owner_id: str | None) -> bool:
        return self.is_admin or (self.user_id is not None and owner_id == self.user_id)


LOCAL = Viewer(None, "local", True)
NOBODY = Viewer(None, "", False, authenticated=False)

_current: ContextVar[Viewer | None] = ContextVar("studio_viewer", default=None)
_process_default: list[Viewer] = [LOCAL]


def set_process_default(v: Viewer) -> None:
    """CLI and workers keep LOCAL; a web process with accounts on sets NOBODY (fail closed)."""
    _process_default[0] = v


def viewer() -> Viewer:
    return _current.get() or _process_default[0]


class acting_as:  # noqa: N801 - used as a context manager
    """``with acting_as(v): ...`` — the services see ``v`` inside the block."""

    def __init__(self, v: Viewer) -> None:
        self.v = v

    def __enter__(self) -> Viewer:
        self._tok = _current.set(self.v)
        return self.v

    def __exit__(self, *exc: object) -> None:
        _current.reset(self._tok)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class AuthError(StudioError):
    status_code = 401


class RateLimited(StudioError):
    status_code = 429

    def __init__(self, msg: str, retry_after: int) -> None:
        super().__init__(msg)
        self.retry_after = retry_after


class LoginLimiter:
    """Sliding-window failure counter per account and per client address.

    Failures only count: a correct password after the window still works, but inside a
    locked window even a correct password is refused (so guessing cannot be confirmed)."""

    def __init__(self, max_failures: int = 5, window_s: float = 300.0, max_keys: int = 10000,
                 per_client: int = 20) -> None:
        self.max_failures = max_failures  # per account
        self.per_client = per_client  # per address: higher, since people share addresses (NAT)
        self.window_s = window_s
        self.max_keys = max_keys
        self._fails: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _prune(self, key: str, now: float) -> deque[float]:
        q = self._fails.setdefault(key, deque())
        while q and q[0] <= now - self.window_s:
            q.popleft()
        return q

    def check(self, *keys: str) -> None:
        now = time.monotonic()
        with self._lock:
            for k in keys:
                q = self._prune(k, now)
                if len(q) >= (self.per_client if k.startswith("client:") else self.max_failures):
                    wait = int(q[0] + self.window_s - now) + 1
                    raise RateLimited(f"too many failed logins; try again in {wait} s", wait)

    def fail(self, *keys: str) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._fails) > self.max_keys:  # bounded memory under a spray of client addresses
                for k in [k for k, q in self._fails.items() if not q or q[-1] <= now - self.window_s]:
                    del self._fails[k]
                while len(self._fails) > self.max_keys:
                    self._fails.pop(next(iter(self._fails)))
            for k in keys:
                self._prune(k, now).append(now)

    def reset(self, key: str) -> None:
        with self._lock:
            self._fails.pop(key, None)


USERNAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-@")


class AuthService:
    """Users, sessions and tokens in the database; a short in-memory cache keeps per-request
    cost low, and revocation through this process clears it at once."""

    SESSION_DAYS = 14
    CACHE_S = 5.0

    def __init__(self, db: Database) -> None:
        from argon2 import PasswordHasher

        self.db = db
        self.hasher = PasswordHasher()
        self._dummy = self.hasher.hash(secrets.token_hex(16))  # equal work for unknown users
        self.limiter = LoginLimiter()
        self._cache: dict[str, tuple[float, Viewer | None]] = {}
        self._cache_lock = threading.Lock()

    # -- users ---------------------------------------------------------------------------
    def has_users(self) -> bool:
        with self.db.session() as s:
            return s.scalar(select(User.id).limit(1)) is not None

    def add_user(self, username: str, password: str | None = None, *, admin: bool = False) -> tuple[dict[str, Any], str]:
        """Create a user; returns (user, password). A missing password is generated (shown once)."""
        username = username.strip()
        if not (1 <= len(username) <= 64) or not set(username) <= USERNAME_CHARS:
            raise StudioError("username: 1-64 characters of letters, digits and . _ - @")
        password = password or secrets.token_urlsafe(15)
        if len(password) < 8 or len(password) > 1024:
            raise StudioError("password: 8-1024 characters")
        with self.db.session() as s:
            if s.scalar(select(User).where(User.username == username)) is not None:
                raise StudioError(f"user {username!r} exists", )
            u = User(id=uuid.uuid4().hex, username=username, password_hash=self.hasher.hash(password),
                     is_admin=admin, disabled=False)
            s.add(u)
        return self._user_json(u), password

    def ensure_admin(self) -> str | None:
        """First start with accounts on: make ``admin`` with a random password, returned once."""
        if self.has_users():
            return None
        _, pw = self.add_user("admin", admin=True)
        return pw

    def set_password(self, username: str, password: str) -> None:
        if len(password) < 8 or len(password) > 1024:
            raise StudioError("password: 8-1024 characters")
        with self.db.session() as s:
            u = s.scalar(select(User).where(User.username == username))
            if u is None:
                raise StudioError(f"no user {username!r}")
            u.password_hash = self.hasher.hash(password)
            s.execute(update(AuthSession).where(AuthSession.user_id == u.id).values(revoked=True))
        self._clear_cache()

    def list_users(self) -> list[dict[str, Any]]:
        with self.db.session() as s:
            return [self._user_json(u) for u in s.scalars(select(User).order_by(User.created_at))]

    @staticmethod
    def _user_json(u: User) -> dict[str, Any]:
        return {"id": u.id, "username": u.username, "is_admin": u.is_admin, "disabled": u.disabled}

    def user_id(self, username: str) -> str:
        with self.db.session() as s:
            u = s.scalar(select(User).where(User.username == username))
            if u is None:
                raise StudioError(f"no user {username!r}")
            return u.id

    # -- login ---------------------------------------------------------------------------
    def login(self, username: str, password: str, client: str) -> tuple[str, Viewer]:
        """Check a password under the rate limit; returns (session cookie value, viewer)."""
        from argon2.exceptions import InvalidHashError, VerificationError

        username = (username or "")[:64]
        keys = (f"user:{username.lower()}", f"client:{client}")
        self.limiter.check(*keys)
        with self.db.session() as s:
            u = s.scalar(select(User).where(User.username == username))
            h = u.password_hash if u is not None else self._dummy
        try:
            ok = self.hasher.verify(h, (password or "")[:1024]) and u is not None and not u.disabled
        except (VerificationError, InvalidHashError):
            ok = False
        if not ok:
            self.limiter.fail(*keys)
            raise AuthError("wrong username or password")
        assert u is not None
        self.limiter.reset(keys[0])
        token = secrets.token_urlsafe(32)
        with self.db.session() as s:
            s.add(AuthSession(id=uuid.uuid4().hex, token_hash=token_hash(token), user_id=u.id,
                              expires_at=utcnow() + timedelta(days=self.SESSION_DAYS), revoked=False,
                              client=client[:200]))
        return token, Viewer(u.id, u.username, u.is_admin)

    def logout(self, session_token: str) -> None:
        with self.db.session() as s:
            s.execute(update(AuthSession).where(AuthSession.token_hash == token_hash(session_token))
                      .values(revoked=True))
        self._clear_cache()

    def revoke_sessions(self, username: str) -> int:
        uid = self.user_id(username)
        with self.db.session() as s:
            n = s.execute(update(AuthSession).where(AuthSession.user_id == uid, AuthSession.revoked.is_(False))
                          .values(revoked=True)).rowcount
        self._clear_cache()
        return n

    def sessions(self, user_id: str) -> list[dict[str, Any]]:
        with self.db.session() as s:
            rows = s.scalars(select(AuthSession).where(AuthSession.user_id == user_id, AuthSession.revoked.is_(False))
                             .order_by(AuthSession.created_at.desc())).all()
            return [{"id": r.id, "client": r.client, "created_at": r.created_at.isoformat() + "Z",
                     "expires_at": r.expires_at.isoformat() + "Z"} for r in rows]

    # -- API tokens ----------------------------------------------------------------------
    def create_token(self, user_id: str, name: str = "") -> tuple[str, str]:
        """Returns (token id, token); the token itself is never stored or shown again."""
        token = "st_" + secrets.token_urlsafe(32)
        tid = uuid.uuid4().hex
        with self.db.session() as s:
            if s.get(User, user_id) is None:
                raise StudioError("no such user")
            s.add(ApiToken(id=tid, token_hash=token_hash(token), user_id=user_id, name=name[:120], revoked=False))
        return tid, token

    def list_tokens(self, user_id: str) -> list[dict[str, Any]]:
        with self.db.session() as s:
            rows = s.scalars(select(ApiToken).where(ApiToken.user_id == user_id, ApiToken.revoked.is_(False))
                             .order_by(ApiToken.created_at)).all()
            return [{"id": r.id, "name": r.name, "created_at": r.created_at.isoformat() + "Z",
                     "last_used_at": r.last_used_at.isoformat() + "Z" if r.last_used_at else None} for r in rows]

    def revoke_token(self, user_id: str | None, token_id: str) -> bool:
        with self.db.session() as s:
            stmt = update(ApiToken).where(ApiToken.id == token_id)
            if user_id is not None:
                stmt = stmt.where(ApiToken.user_id == user_id)
            n = s.execute(stmt.values(revoked=True)).rowcount
        self._clear_cache()
        return bool(n)

    # -- per request ---------------------------------------------------------------------
    def from_session(self, cookie: str) -> Viewer | None:
        return self._cached("s:" + cookie, lambda: self._lookup_session(cookie))

    def from_token(self, token: str) -> Viewer | None:
        return self._cached("t:" + token, lambda: self._lookup_token(token))

    def _cached(self, key: str, load: Any) -> Viewer | None:
        h = token_hash(key)
        now = time.monotonic()
        with self._cache_lock:
            hit = self._cache.get(h)
            if hit is not None and hit[0] > now:
                return hit[1]
        v = load()
        with self._cache_lock:
            if len(self._cache) > 10000:
                self._cache.clear()
            self._cache[h] = (now + self.CACHE_S, v)
        return v

    def _clear_cache(self) -> None:
        with self._cache_lock:
            self._cache.clear()

    def _lookup_session(self, cookie: str) -> Viewer | None:
        if not cookie or len(cookie) > 200:
            return None
        with self.db.session() as s:
            row = s.scalar(select(AuthSession).where(AuthSession.token_hash == token_hash(cookie)))
            if row is None or row.revoked or row.expires_at < utcnow():
                return None
            u = s.get(User, row.user_id)
            if u is None or u.disabled:
                return None
            return Viewer(u.id, u.username, u.is_admin)

    def _lookup_token(self, token: str) -> Viewer | None:
        if not token.startswith("st_") or len(token) > 200:
            return None
        with self.db.session() as s:
            row = s.scalar(select(ApiToken).where(ApiToken.token_hash == token_hash(token)))
            if row is None or row.revoked:
                return None
            u = s.get(User, row.user_id)
            if u is None or u.disabled:
                return None
            if row.last_used_at is None or row.last_used_at < utcnow() - timedelta(minutes=5):
                row.last_used_at = utcnow()
            return Viewer(u.id, u.username, u.is_admin)


def when(dt: datetime | None) -> str | None:
    return dt.isoformat() + "Z" if dt else None
