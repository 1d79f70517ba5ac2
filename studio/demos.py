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


PORTRAITS = {"astronaut": "astronaut"}  # name → scikit-image sample (public domain, inside its wheel)


def portrait_demos() -> list[str]:
    return [*PORTRAITS, "astronaut-clip"]


def portrait_demo_path(data_dir: Path, name: str) -> Path:
    """A sample portrait (PNG) or a short clip panning over it (mp4), made on first use under
    ``data_dir/ui-cache/portrait-demos``. Only known names are accepted."""
    import numpy as np
    from PIL import Image

    if name not in portrait_demos():
        raise StudioError(f"unknown sample portrait {name[:40]!r}")
    try:
        from skimage import data as skdata
    except ImportError:
        raise StudioError("the sample portraits come with scikit-image: pip install scikit-image") from None
    folder = Path(data_dir) / "ui-cache" / "portrait-demos"
    folder.mkdir(parents=True, exist_ok=True)
    img = np.asarray(skdata.astronaut())
    if name != "astronaut-clip":
        out = folder / f"{name}.png"
        if not out.is_file():
            Image.fromarray(getattr(skdata, PORTRAITS[name])()).save(out)
        return out
    out = folder / "astronaut-clip.mp4"
    if not out.is_file():
        from engines.video import io as vio

        tmp = folder / "astronaut-clip.part.mp4"
        w = vio.Writer(tmp, (256, 256), 12.0)
        try:
            for i in range(36):  # a slow pan and zoom: 3 s
                o = int(24 * np.sin(i / 35 * np.pi))
                w.write(np.asarray(Image.fromarray(img[o:o + 464, o // 2:o // 2 + 464]).resize((256, 256), Image.BILINEAR)))
        except BaseException:
            w.abort()
            raise
        w.close()
        tmp.replace(out)
    return out
