"""Where the shipped embedded-world weights live (inside the package, so a fresh clone has them)."""
from __future__ import annotations

from pathlib import Path

WEIGHTS = Path(__file__).resolve().parent / "weights"


def default_model_dir() -> Path:
    """The Studio's default text-to-image model: a StableDiffusionPipeline directory."""
    return WEIGHTS / "sd"


def judge_dir() -> Path:
    """WorldEval's judge CNN (judge.safetensors + judge.json with its measured accuracy)."""
    return WEIGHTS / "judge"


def scratch_dir() -> Path:
    """Default git-ignored training scratch dir: <repo>/.cache/world-train."""
    return Path(__file__).resolve().parents[2] / ".cache" / "world-train"
