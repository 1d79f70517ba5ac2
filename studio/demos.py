"""Demo inputs the UI offers (world clips for the Video tab), made on first use in the data dir.

The UI talks to the service layer, never to engines; this is the narrow door for demo media.
"""
from __future__ import annotations

from pathlib import Path

from studio.errors import StudioError


def video_demos() -> dict[str, str]:
    """Demo clip name → the instruction that goes with it."""
    from engines.video.world import DEMOS, demo_instruction

    return {k: demo_instruction(k) for k in DEMOS}


def video_demo_path(data_dir: Path, name: str) -> Path:
    """The demo clip file, rendered on first use under ``data_dir/ui-cache/video-demos``.
    Only known demo names are accepted: a client never names a file."""
    from engines.video.world import DEMOS, demo_clip

    if name not in DEMOS:
        raise StudioError(f"unknown demo clip {name[:40]!r}")
    return demo_clip(name, Path(data_dir) / "ui-cache" / "video-demos")
