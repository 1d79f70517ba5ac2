"""Share links: read-only public access to chosen assets through ``/s/<token>``.

The token (128+ bits from ``secrets``) is shown once and stored as its sha256, so a copy of
the database does not open any link. A link names its assets at creation; the share page
reaches those bytes only by position in that list, never by asset id, so nothing else of
the owner's is reachable from it. Unknown, expired and revoked tokens look the same (404).
"""
from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update

from storage.db import Database
from storage.models import Asset, ShareLink, utcnow
from studio.assets import AssetService, visible
from studio.auth import token_hash, viewer, when
from studio.dto import AssetDTO
from studio.errors import InvalidParams, NotFound, StudioError

MAX_ITEMS = 100
MAX_DAYS = 3650
SAFE_META_KEYS = ("prompt", "negative_prompt", "seed", "steps", "guidance_scale", "sampler", "width", "height",
                  "model", "engine")


@dataclass(frozen=True)
class SharedView:
    """What a share page may show: the link's title and its assets (in order)."""

    link_id: str
    title: str
    include_meta: bool
    assets: list[AssetDTO]
    expires_at: str | None

    def public_meta(self, a: AssetDTO) -> dict[str, Any]:
        """Generation settings only when the owner chose to include them; never paths or ids."""
        base = {"kind": a.kind, "mime": a.mime, "size": a.size, "width": a.width, "height": a.height}
        if not self.include_meta:
            return base
        params = a.meta.get("params") if isinstance(a.meta.get("params"), dict) else {}
        extra = {k: (a.meta.get(k) if a.meta.get(k) is not None else params.get(k)) for k in SAFE_META_KEYS}
        return base | {k: v for k, v in extra.items() if v is not None and not isinstance(v, (dict, list))}


class ShareService:
    def __init__(self, db: Database, assets: AssetService) -> None:
        self.db = db
        self.assets = assets

    def create(self, asset_ids: list[str], *, title: str = "", include_meta: bool = False,
               expires_in_days: float | None = None) -> dict[str, Any]:
        """A new link to assets the caller may read. Returns the token once (``token``)."""
        v = viewer()
        if not v.authenticated:
            raise StudioError("not signed in")
        ids = [str(a)[:64] for a in asset_ids or []]
        if not ids:
            raise InvalidParams([{"field": "asset_ids", "message": "name at least one asset"}])
        if len(ids) > MAX_ITEMS:
            raise InvalidParams([{"field": "asset_ids", "message": f"{len(ids)} assets (limit {MAX_ITEMS})"}])
        if expires_in_days is not None and not (0 < expires_in_days <= MAX_DAYS):
            raise InvalidParams([{"field": "expires_in_days", "message": f"between 0 and {MAX_DAYS} days"}])
        title = (title or "").strip()[:200]
        for aid in ids:
            self.assets.get(aid)  # NotFound for assets the caller may not read
        token = secrets.token_urlsafe(24)  # 192 bits
        expires = utcnow() + timedelta(days=expires_in_days) if expires_in_days else None
        row = ShareLink(id=uuid.uuid4().hex, token_hash=token_hash(token), owner_id=v.user_id, title=title,
                        asset_ids=ids, include_meta=bool(include_meta), expires_at=expires, views=0)
        with self.db.session() as s:
            s.add(row)
        return self._json(row) | {"token": token, "path": f"/s/{token}"}

    def list(self) -> list[dict[str, Any]]:
        with self.db.session() as s:
            rows = s.scalars(visible(select(ShareLink).order_by(ShareLink.created_at.desc()), ShareLink)).all()
            return [self._json(r) for r in rows]

    def revoke(self, link_id: str) -> dict[str, Any]:
        with self.db.session() as s:
            row = s.get(ShareLink, str(link_id)[:64])
            if row is None or not viewer().owns(row.owner_id):
                raise NotFound(f"no share link {str(link_id)[:64]}")
            if row.revoked_at is None:
                row.revoked_at = utcnow()
            return self._json(row)

    @staticmethod
    def _json(r: ShareLink) -> dict[str, Any]:
        now = utcnow()
        state = "revoked" if r.revoked_at else ("expired" if r.expires_at and r.expires_at <= now else "active")
        return {"id": r.id, "title": r.title, "assets": list(r.asset_ids), "include_meta": r.include_meta,
                "created_at": when(r.created_at), "expires_at": when(r.expires_at), "revoked_at": when(r.revoked_at),
                "views": r.views, "state": state}

    # -- public side (no viewer: the token is the permission) ------------------------------
    def open(self, token: str, *, count_view: bool = False) -> SharedView:
        """The link's view, or NotFound for unknown, expired or revoked tokens alike."""
        if not token or len(token) > 100:
            raise NotFound("no such link")
        with self.db.session() as s:
            row = s.scalar(select(ShareLink).where(ShareLink.token_hash == token_hash(token)))
            now = utcnow()
            if row is None or row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now):
                raise NotFound("no such link")
            if count_view:
                s.execute(update(ShareLink).where(ShareLink.id == row.id).values(views=ShareLink.views + 1))
            rows = {a.id: a for a in s.scalars(select(Asset).where(Asset.id.in_(row.asset_ids)))}
            # an asset whose owner changed (or that was deleted) drops out of the link
            assets = [AssetDTO.of(rows[i]) for i in row.asset_ids if i in rows and rows[i].owner_id == row.owner_id]
            return SharedView(row.id, row.title, row.include_meta, assets, when(row.expires_at))


def parse_expiry(days: Any) -> float | None:
    if days in (None, "", 0, "0", "never"):
        return None
    try:
        return float(days)
    except (TypeError, ValueError):
        raise InvalidParams([{"field": "expires_in_days", "message": "a number of days"}]) from None

