"""Where the shipped embedded-world weights live (inside the package, so a fresh clone has them),
and where training writes by default (outside the package)."""
from __future__ import annotations

import os
from pathlib import Path

WEIGHTS = Path(__file__).resolve().parent / "weights"


def default_model_dir() -> Path:
    """The Studio's default text-to-image model: a StableDiffusionPipeline directory."""
    return WEIGHTS / "sd"


def judge_dir() -> Path:
    """WorldEval's judge CNN (judge.safetensors + judge.json with its measured accuracy)."""
    return WEIGHTS / "judge"


def train_dir() -> Path:
    """Default training output dir: ``$STUDIO_DATA_DIR/world-train`` (``~/.studio/world-train``).
    Training writes only there unless asked to install (``--install``)."""
    return Path(os.environ.get("STUDIO_DATA_DIR") or Path.home() / ".studio").expanduser() / "world-train"


def docs_img_dir() -> Path:
    """Where ``--install`` puts the loss curves shown in docs/embedded-world.md."""
    return Path(__file__).resolve().parents[2] / "docs" / "img"


def ip2p_model_dir() -> Path:
    """The embedded InstructPix2Pix model (a StableDiffusionInstructPix2PixPipeline directory),
    the ``video-edit`` engine's ``embedded`` model; trained by ``engines.video.train_ip2p``."""
    return WEIGHTS / "ip2p"
