"""The embedded world's prompt reading put to work on a pipeline: one call gives the prompts to
pass and the regional hooks to hold open (shared by the t2i engine and WorldEval, so the eval
measures exactly what users get)."""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any

from engines.world import prompt_parse as pp

GRAMMAR_FILE = "prompt_grammar.json"  # in a model folder: {"grammar": "world-v1"} = speaks the world


def speaks_world(model_dir: Any) -> bool:
    """Does this model folder declare the embedded world's vocabulary (so ``layout`` applies)?"""
    import json
    from pathlib import Path

    f = Path(model_dir) / GRAMMAR_FILE
    try:
        return f.is_file() and json.loads(f.read_text()).get("grammar") == "world-v1"
    except (OSError, ValueError, AttributeError):
        return False


def prepare(pipe: Any, prompts: list[str], seeds: list[int], height: int, width: int) -> tuple[list[str], Any,
                                                                                           list[pp.PromptPlan]]:
    """(prompts to pass the pipeline, a context manager to hold open around the call, the plans).
    Plans depend on (prompt, seed) only, so an image repeats with its seed."""
    from engines.pipelines.regional import build

    plans = [pp.plan(p, s) for p, s in zip(prompts, seeds)]
    f = pipe.vae_scale_factor
    h, w = height // f, width // f
    masks = [pp.region_masks(p.regions, h, w) if p.regions else None for p in plans]
    reg = build(pipe, [[r.caption for r in p.regions] for p in plans], masks, [p.prompt for p in plans])
    return [p.prompt for p in plans], (reg if reg is not None else nullcontext()), plans
