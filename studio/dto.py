"""Plain data the UI, API and CLI see — never ORM objects."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() + "Z" if t else None


@dataclass(frozen=True)
class AssetDTO:
    id: str
    sha256: str
    kind: str
    mime: str
    size: int
    filename: str
    width: int | None
    height: int | None
    frames: int | None
    job_id: str | None
    meta: dict[str, Any]
    created_at: str | None

    @property
    def url(self) -> str:
        return f"/api/v1/assets/{self.id}"

    @classmethod
    def of(cls, a: Any) -> "AssetDTO":
        return cls(a.id, a.sha256, a.kind, a.mime, a.size, a.filename, a.width, a.height, a.frames,
                   a.job_id, dict(a.meta or {}), _iso(a.created_at))

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"url": self.url}


@dataclass(frozen=True)
class JobDTO:
    id: str
    engine: str
    params: dict[str, Any]
    status: str
    priority: int
    progress: float
    message: str
    error: dict[str, str | None] | None
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    retried_from: str | None
    worker_id: str | None
    has_preview: bool
    assets: list[AssetDTO] = field(default_factory=list)
    result_meta: dict[str, Any] = field(default_factory=dict)
    owner_id: str | None = None

    @classmethod
    def of(cls, j: Any, assets: list[AssetDTO] | None = None) -> "JobDTO":
        err = None
        if j.error_type or j.error_message:
            err = {"type": j.error_type, "message": j.error_message, "traceback": j.error_traceback}
        return cls(j.id, j.engine, dict(j.params or {}), j.status, j.priority, j.progress, j.message or "",
                   err, _iso(j.created_at), _iso(j.started_at), _iso(j.finished_at), j.retried_from,
                   j.worker_id, bool(j.preview_path), assets or [], dict(j.result_meta or {}), j.owner_id)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["assets"] = [{"id": a.id, "url": a.url, "mime": a.mime, "kind": a.kind} for a in self.assets]
        return d
