"""Video in and out through the ffmpeg inside the imageio-ffmpeg wheel (no system ffmpeg).

Frames stream: the reader yields one frame at a time and the writer consumes one at a time,
so memory does not grow with clip length. Every input is probed first and refused with a
one-line reason (not a video, no frames, too large, too long) before any work is done.
"""
from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

MAX_SIDE = 4096
MAX_SECONDS = 60 * 60
PROBE_TIMEOUT_S = 30


class VideoError(ValueError):
    """A file that cannot be used as a video, with the reason."""


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: float
    duration_s: float
    frames: int  # estimated from duration × fps
    has_audio: bool
    codec: str


def ffmpeg() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def probe(path: Path, max_side: int = MAX_SIDE, max_seconds: float = MAX_SECONDS) -> VideoInfo:
    """Read the container's stream info with ``ffmpeg -i`` (there is no ffprobe in the wheel)."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        raise VideoError(f"{path.name}: empty or missing file")
    try:
        r = subprocess.run([ffmpeg(), "-hide_banner", "-nostdin", "-i", str(path)], capture_output=True, text=True,
                           timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise VideoError(f"{path.name}: probing took longer than {PROBE_TIMEOUT_S}s") from None
    info = r.stderr
    video = re.search(r"Stream #\S+.*?: Video: (\w+)[^\n]*?, (\d{2,5})x(\d{2,5})[^\n]*", info)
    if video is None:
        raise VideoError(f"{path.name}: not a video (no video stream found)")
    codec, w, h = video.group(1), int(video.group(2)), int(video.group(3))
    fps_m = re.search(r"([\d.]+) fps", video.group(0)) or re.search(r"([\d.]+) tbr", video.group(0))
    fps = float(fps_m.group(1)) if fps_m else 0.0
    dur_m = re.search(r"Duration: (\d+):(\d+):([\d.]+)", info)
    duration = int(dur_m.group(1)) * 3600 + int(dur_m.group(2)) * 60 + float(dur_m.group(3)) if dur_m else 0.0
    if not (0 < w <= max_side and 0 < h <= max_side):
        raise VideoError(f"{path.name}: {w}x{h} is larger than the {max_side}px limit")
    if duration > max_seconds:
        raise VideoError(f"{path.name}: {duration:.0f}s is longer than the {max_seconds:.0f}s limit")
    if not fps or fps > 240:
        raise VideoError(f"{path.name}: unusable frame rate ({fps or 'unknown'})")
    has_audio = re.search(r"Stream #\S+.*?: Audio:", info) is not None
    return VideoInfo(w, h, fps, duration, int(round(duration * fps)), has_audio, codec)


def read_frames(path: Path, size: tuple[int, int] | None = None, stride: int = 1,
                max_frames: int | None = None) -> Iterator[np.ndarray]:
    """Yield RGB uint8 frames [H, W, 3] one at a time (resized by ffmpeg to ``size`` = (w, h)),
    every ``stride``-th frame, at most ``max_frames``. A stream that ends early (truncated
    file) just ends; a file with no decodable frame raises."""
    import imageio_ffmpeg

    out_params = ["-vf", f"scale={size[0]}:{size[1]}:flags=area"] if size else None
    gen = imageio_ffmpeg.read_frames(str(path), output_params=out_params)
    try:
        meta = next(gen)
    except (StopIteration, RuntimeError, OSError) as e:
        raise VideoError(f"{Path(path).name}: cannot decode ({str(e).splitlines()[0] if str(e) else 'no frames'})") \
            from None
    w, h = size or meta["size"]
    n_out = 0
    try:
        for i, raw in enumerate(gen):
            if i % stride:
                continue
            if len(raw) != w * h * 3:
                break  # a cut-off last frame
            yield np.frombuffer(raw, np.uint8).reshape(h, w, 3)
            n_out += 1
            if max_frames is not None and n_out >= max_frames:
                break
    except RuntimeError as e:  # ffmpeg died mid-stream: keep what was decoded, unless nothing was
        if n_out == 0:
            raise VideoError(f"{Path(path).name}: cannot decode ({str(e).splitlines()[0]})") from None
    finally:
        gen.close()
    if n_out == 0:
        raise VideoError(f"{Path(path).name}: no decodable frames")


class Writer:
    """H.264 mp4 writer fed one frame at a time; copies the audio of ``audio_from`` (if any)
    when closed. Sizes are padded by ffmpeg to even numbers (yuv420p)."""

    def __init__(self, path: Path, size: tuple[int, int], fps: float, audio_from: Path | None = None,
                 quality: int = 7) -> None:
        import imageio_ffmpeg

        self.path = Path(path)
        self.audio_from = audio_from
        self.tmp = self.path.with_suffix(".video.mp4") if audio_from else self.path
        self._gen = imageio_ffmpeg.write_frames(str(self.tmp), size, fps=fps, codec="libx264", quality=quality,
                                                macro_block_size=2, ffmpeg_log_level="error",
                                                output_params=["-movflags", "+faststart"])
        self._gen.send(None)
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        self._gen.send(np.ascontiguousarray(frame, dtype=np.uint8))
        self.frames += 1

    def close(self) -> None:
        self._gen.close()
        if self.audio_from is None:
            return
        r = subprocess.run([ffmpeg(), "-hide_banner", "-nostdin", "-y", "-i", str(self.tmp), "-i", str(self.audio_from),
                            "-map", "0:v:0", "-map", "1:a:0?", "-c", "copy", "-shortest", str(self.path)],
                           capture_output=True, text=True, timeout=600)
        if r.returncode != 0:  # the audio could not be carried over: keep the edited video
            self.tmp.replace(self.path)
        else:
            self.tmp.unlink(missing_ok=True)

    def abort(self) -> None:
        """Cancelled: stop ffmpeg and leave nothing behind."""
        try:
            self._gen.close()
        finally:
            self.tmp.unlink(missing_ok=True)
            self.path.unlink(missing_ok=True)


def info_json(info: VideoInfo) -> str:
    return json.dumps(info.__dict__)
