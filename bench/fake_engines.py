"""A test engine run through the real queue, worker and store (registered via
``STUDIO_EXTRA_ENGINES=test-steps=bench.fake_engines:StepEngine``). It counts steps, sleeps,
writes a preview and a PNG per image, honours cancel at each step, and can fail on purpose.

It lives in the installed ``bench`` package, not in tests/, because benches (``studio bench
queue``) run it against an installed Studio, where tests/ does not exist; tests use it too."""
from __future__ import annotations

import time
from typing import Literal

from PIL import Image
from pydantic import Field

from engines.base import Artifact, Engine, EngineContext, EngineError, EngineResult, Params, input_field


class StepParams(Params):
    steps: int = Field(5, ge=1, le=10000, description="number of steps")
    step_s: float = Field(0.05, ge=0.0, le=10.0, description="seconds per step")
    images: int = Field(1, ge=0, le=8, description="PNG files to write")
    color: Literal["red", "green", "blue"] = Field("red", description="image colour")
    fail_at: int | None = Field(None, ge=0, description="raise an EngineError at this step")
    prompt: str = Field("", description="free text stored in the image metadata")
    source: str | None = input_field("optional input image, echoed back", kinds=("image",), default=None)


COLORS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (30, 60, 220)}


class StepEngine(Engine):
    name = "test-steps"
    title = "Test steps"
    description = "Counts steps (test engine)."
    params_model = StepParams
    idempotent = True

    def run(self, params: StepParams, ctx: EngineContext) -> EngineResult:
        preview = ctx.work_dir / "preview.png"
        for i in range(params.steps):
            ctx.check_cancelled()
            if params.fail_at is not None and i == params.fail_at:
                raise EngineError(f"failed on purpose at step {i}")
            time.sleep(params.step_s)
            if i == 0:
                Image.new("RGB", (8, 8), COLORS[params.color]).save(preview)
            ctx.progress(i + 1, params.steps, f"step {i + 1}/{params.steps}", preview if i == 0 else None)
        arts = []
        for k in range(params.images):
            p = ctx.work_dir / f"image-{k}.png"
            Image.new("RGB", (16, 16), COLORS[params.color]).save(p)
            arts.append(Artifact(p, "image", "image/png", {"prompt": params.prompt, "index": k}))
        if params.source:
            src = ctx.resolve_input(params.source)
            p = ctx.work_dir / "echo.png"
            Image.open(src).convert("RGB").save(p)
            arts.append(Artifact(p, "image", "image/png", {"prompt": params.prompt, "echo": True}))
        return EngineResult(arts, {"steps": params.steps})
