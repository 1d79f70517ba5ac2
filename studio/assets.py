"""Asset service: files (content-addressed store) + records (assets table), composed."""
from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import or_, select

from storage.db import Database
from storage.files import AssetFileStore
from storage.models import Asset
from studio.auth import viewer
from studio.config import Settings
from studio.dto import AssetDTO
from studio.errors import NotFound, StudioError, UploadRejected
from studio.uploads import Sniffed, sniff

_CALLER = object()


def visible(stmt: Any, model: Any) -> Any:
    """Restrict a select to rows the caller owns (admins and the local owner see all)."""
    v = viewer()
    if v.is_admin:
        return stmt
    if v.user_id is None:
        return stmt.where(False)
    return stmt.where(model.owner_id == v.user_id)


def new_id() -> str:
    return uuid.uuid4().hex


def _search_text(meta: dict[str, Any], filename: str) -> str:
    parts = [filename]
    params = meta.get("params") if isinstance(meta.get("params"), dict) else {}
    for key in ("prompt", "negative_prompt", "caption", "title", "name"):
        v = meta.get(key) or params.get(key)
        if isinstance(v, str):
            parts.append(v)
    return " ".join(parts).lower()


class AssetService:
    def __init__(self, settings: Settings, db: Database, files: AssetFileStore) -> None:
        self.settings = settings
        self.db = db
        self.files = files

    # -- ingest --------------------------------------------------------------------------
    def upload(self, stream: BinaryIO, filename: str) -> AssetDTO:
        """Validate an uploaded stream and store it as the caller's; a rejected upload stores nothing."""
        if not viewer().authenticated:
            raise StudioError("not signed in")
        limit = self.settings.max_upload_bytes
        tmp_dir = self.files.tmp
        with tempfile.NamedTemporaryFile(dir=tmp_dir, prefix="up-", delete=False) as tmp:
            tmp_path = Path(tmp.name)
            total = 0
            try:
                while chunk := stream.read(1 << 20):
                    total += len(chunk)
                    if total > limit:
                        raise UploadRejected(f"upload exceeds the {limit} byte limit", 413)
                    tmp.write(chunk)
            except BaseException:
                tmp.close()
                tmp_path.unlink(missing_ok=True)
                raise
        try:
            return self.ingest_path(tmp_path, filename=Path(filename or "upload").name)
        finally:
            tmp_path.unlink(missing_ok=True)

    def ingest_path(self, path: Path, *, filename: str | None = None, kind: str | None = None,
                    mime: str | None = None, job_id: str | None = None,
                    meta: dict[str, Any] | None = None, validate: bool = True,
                    owner_id: Any = _CALLER) -> AssetDTO:
        """Store a file and record it. Validation sniffs the bytes unless the caller knows.
        The asset belongs to the caller unless ``owner_id`` is given."""
        path = Path(path)
        owner = viewer().user_id if owner_id is _CALLER else owner_id
        if not path.is_file():
            raise NotFound(f"no such file: {path}")
        filename = filename or path.name
        s = self._sniff(path, filename) if validate or kind is None else Sniffed(kind, mime or "application/octet-stream")
        if kind:
            s.kind = kind
        if mime:
            s.mime = mime
        if s.kind == "image" and s.width is None:
            s = self._image_dims(path, s)
        digest, size = self.files.put_file(path)
        m = dict(s.meta) | (meta or {})
        row = Asset(id=new_id(), sha256=digest, kind=s.kind, mime=s.mime, size=size, filename=filename[:255],
                    width=s.width, height=s.height, frames=s.frames, job_id=job_id, meta=m,
                    search_text=_search_text(m, filename), owner_id=owner)
        with self.db.session() as sess:
            sess.add(row)
        return AssetDTO.of(row)

    def record(self, sess: Any, path: Path, *, filename: str, kind: str, mime: str, job_id: str | None,
               meta: dict[str, Any], owner_id: str | None = None) -> Asset:
        """Store a file and add its row to the caller's transaction (job completion)."""
        s = Sniffed(kind, mime)
        if kind == "image":
            s = self._image_dims(path, s)
        digest, size = self.files.put_file(path)
        row = Asset(id=new_id(), sha256=digest, kind=kind, mime=mime, size=size, filename=filename[:255],
                    width=s.width, height=s.height, frames=s.frames, job_id=job_id, meta=meta,
                    search_text=_search_text(meta, filename), owner_id=owner_id)
        sess.add(row)
        return row

    def _sniff(self, path: Path, filename: str) -> Sniffed:
        return sniff(path, filename, max_image_pixels=self.settings.max_image_pixels,
                     max_archive_bytes=self.settings.max_archive_bytes)

    @staticmethod
    def _image_dims(path: Path, s: Sniffed) -> Sniffed:
        from PIL import Image

        try:
            with Image.open(path) as im:
                s.width, s.height = im.size
        except Exception:
            pass
        return s

    # -- queries -------------------------------------------------------------------------
    def get(self, asset_id: str) -> AssetDTO:
        """The asset if the caller may read it; otherwise NotFound, as if it did not exist."""
        asset_id = str(asset_id)[:64]
        with self.db.session() as sess:
            row = sess.get(Asset, asset_id)
            if row is None or not viewer().owns(row.owner_id):
                raise NotFound(f"no asset {asset_id}")
            return AssetDTO.of(row)

    def get_unchecked(self, asset_id: str) -> AssetDTO:
        """For share links and the system: no owner check (the caller has checked)."""
        with self.db.session() as sess:
            row = sess.get(Asset, str(asset_id)[:64])
            if row is None:
                raise NotFound(f"no asset {str(asset_id)[:64]}")
            return AssetDTO.of(row)

    def owner_of(self, asset_id: str) -> tuple[bool, str | None]:
        """(exists, owner id) without a visibility check — for the access layer."""
        with self.db.session() as sess:
            row = sess.get(Asset, str(asset_id)[:64])
            return (row is not None, row.owner_id if row is not None else None)

    def path(self, asset_id: str) -> Path:
        return self._file(self.get(asset_id))

    def path_unchecked(self, asset_id: str) -> Path:
        return self._file(self.get_unchecked(asset_id))

    def _file(self, a: AssetDTO) -> Path:
        asset_id = a.id
        p = self.files.path_for(a.sha256)
        if not p.exists():
            raise NotFound(f"asset {asset_id} has lost its file")
        return p

    def list(self, *, query: str = "", kind: str | None = None, limit: int = 100, offset: int = 0) -> list[AssetDTO]:
        stmt = visible(select(Asset).order_by(Asset.created_at.desc()).limit(limit).offset(offset), Asset)
        if kind:
            stmt = stmt.where(Asset.kind == kind)
        for word in query.lower().split()[:16]:
            stmt = stmt.where(or_(Asset.search_text.contains(word), Asset.id == word))
        with self.db.session() as sess:
            return [AssetDTO.of(a) for a in sess.scalars(stmt)]

    def export(self, asset_id: str, dest_dir: Path, name: str | None = None) -> Path:
        a = self.get(asset_id)
        dest_dir.mkdir(parents=True, exist_ok=True)
        dest = dest_dir / (name or a.filename or a.id)
        shutil.copyfile(self.path(asset_id), dest)
        return dest

    def sweep_orphans(self, min_age_s: float = 3600.0) -> int:
        with self.db.session() as sess:
            referenced = set(sess.scalars(select(Asset.sha256)))
        return self.files.sweep(referenced, min_age_s=min_age_s)
