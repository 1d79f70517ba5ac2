"""Small helpers shared by tabs: asset files with real extensions for Gradio, formatting."""
from __future__ import annotations

import mimetypes
import os
from pathlib import Path
from typing import Any

from studio.dto import AssetDTO
from studio.wiring import Services

EXT = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "image/gif": ".gif",
       "video/mp4": ".mp4", "application/x-ply": ".ply", "application/zip": ".zip", "application/json": ".json"}


def asset_file(services: Services, a: AssetDTO) -> str:
    """A path Gradio can serve: a hard link to the stored bytes at ``ui-cache/<asset id>/<name>``,
    named for people (engine, seed, prompt) rather than by id, with a real extension."""
    cache = services.settings.data_dir / "ui-cache" / a.id
    cache.mkdir(parents=True, exist_ok=True)
    ext = Path(a.filename).suffix or EXT.get(a.mime) or mimetypes.guess_extension(a.mime) or ""
    dest = cache / f"{download_name(a)}{ext}"
    if not dest.exists():
        src = services.assets.path(a.id)
        try:
            os.link(src, dest)
        except OSError:
            import shutil

            shutil.copyfile(src, dest)
    return str(dest)


def download_name(a: AssetDTO) -> str:
    """'t2i-1234-a-red-star-on-navy' for generated files, the uploaded name otherwise."""
    import re

    prompt = str(a.meta.get("prompt") or "")
    engine = str(a.meta.get("engine") or "")
    seed = a.meta.get("seed")
    if engine and (prompt or seed is not None):
        slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:48]
        parts = [engine, str(seed) if seed is not None else "", slug, str(a.meta.get("index", ""))]
        return "-".join(p for p in parts if p) or a.id
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(a.filename).stem)[:80]
    return stem or a.id


def fmt_job_line(j) -> str:  # noqa: ANN001
    pct = f"{j.progress * 100:.0f}%"
    err = f" — {j.error['type']}: {j.error['message']}" if j.error else ""
    return f"**{j.status}** {pct} · `{j.id[:8]}` {j.engine} · {j.message}{err}"


def job_outputs(services: Services, job_id: str | None) -> tuple[Any, ...]:
    """(status markdown, progress %, preview path, gallery items, files) for one job."""
    if not job_id:
        return "No job yet.", 0, None, [], []
    j = services.jobs.get(job_id)
    preview = services.jobs.preview_path(job_id)
    images = [(asset_file(services, a), a.meta.get("prompt") or a.filename) for a in j.assets if a.kind == "image"]
    files = [asset_file(services, a) for a in j.assets]
    return (fmt_job_line(j), round(j.progress * 100, 1),
            str(preview) if preview and preview.is_file() and j.status == "running" else None,
            images, files)


def cancel_job(services: Services, job_id: str | None) -> str:
    """Cancel from a button: a status line either way, never an exception."""
    from studio.errors import StudioError

    if not job_id:
        return "No job to cancel."
    try:
        return fmt_job_line(services.jobs.cancel(job_id))
    except StudioError as e:
        return str(e)


def uploader(services: Services):  # noqa: ANN201
    """A function turning a Gradio temp-file path into a validated asset id."""
    def upload(path: str) -> str:
        with open(path, "rb") as f:
            return services.assets.upload(f, Path(path).name).id
    return upload


def progress_bar(pct: float) -> str:
    """A read-only progress bar (a slider looked editable)."""
    p = max(0.0, min(100.0, float(pct or 0)))
    return (f"<div role='progressbar' aria-valuenow='{p:.0f}' aria-valuemin='0' aria-valuemax='100' "
            f"style='height:8px;border-radius:4px;background:#8883'><div style='height:8px;border-radius:4px;"
            f"width:{p:.1f}%;background:#f97316'></div></div>")
