"""Small helpers shared by tabs: asset files with real extensions for Gradio, formatting."""
from __future__ import annotations

import mimetypes
import os
from pathlib import Path

from studio.dto import AssetDTO
from studio.wiring import Services

EXT = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "image/gif": ".gif",
       "video/mp4": ".mp4", "application/x-ply": ".ply", "application/zip": ".zip", "application/json": ".json"}


def asset_file(services: Services, a: AssetDTO) -> str:
    """A path Gradio can serve: a hard link to the stored bytes, named with an extension."""
    cache = services.settings.data_dir / "ui-cache"
    cache.mkdir(exist_ok=True)
    ext = Path(a.filename).suffix or EXT.get(a.mime) or mimetypes.guess_extension(a.mime) or ""
    dest = cache / f"{a.id}{ext}"
    if not dest.exists():
        src = services.assets.path(a.id)
        try:
            os.link(src, dest)
        except OSError:
            import shutil

            shutil.copyfile(src, dest)
    return str(dest)


def fmt_job_line(j) -> str:  # noqa: ANN001
    pct = f"{j.progress * 100:.0f}%"
    err = f" — {j.error['type']}: {j.error['message']}" if j.error else ""
    return f"**{j.status}** {pct} · `{j.id[:8]}` {j.engine} · {j.message}{err}"
