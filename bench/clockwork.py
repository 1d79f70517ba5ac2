"""Clockwork vs baseline vs DeepCache: speed and WorldEval quality, measured in one run.

    studio bench clockwork --json [--model embedded] [--steps 8 20] [--period 2] [--sd15]

For each step count: per-image latency at batch 1 with CFG (median of interleaved rounds:
baseline, Clockwork, DeepCache), and the world judge's ``overall`` for each variant on the
WorldEval prompt set. ``--sd15`` adds a real-size SD1.5-shaped U-Net (random weights) at
256×256, timing the U-Net denoising loop alone (cost does not depend on weight values).
Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from bench import add_threads_arg, apply_threads

SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                 down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                   "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))


def resolve_model(ref: str) -> Path:
    if ref == "embedded":
        from engines.world.paths import default_model_dir

        return default_model_dir()
    return Path(ref)


@contextmanager
def variant(pipe: Any, name: str, period: int, adaptor: Any = None) -> Iterator[None]:
    if name == "base":
        yield
    elif name in ("clockwork", "adaptor"):
        from engines.t2i.clockwork import Clockwork

        with Clockwork(pipe.unet, period, "reuse" if name == "clockwork" else "adaptor", adaptor):
            yield
    elif name == "deepcache":
        from DeepCache import DeepCacheSDHelper

        h = DeepCacheSDHelper(pipe=pipe)
        h.set_params(cache_interval=period, cache_branch_id=0)
        h.enable()
        try:
            yield
        finally:
            h.disable()
    else:
        raise ValueError(name)


def time_variants(pipe: Any, names: list[str], steps: int, period: int, rounds: int, guidance: float,
                  adaptor: Any = None) -> dict[str, float]:
    """Median seconds per image (batch 1, CFG on), variants interleaved round by round."""
    times: dict[str, list[float]] = {n: [] for n in names}
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    for r in range(rounds + 1):
        for n in names:
            with variant(pipe, n, period, adaptor):
                g = torch.Generator().manual_seed(r)
                t0 = time.perf_counter()
                pipe("a red star on a blue background", num_inference_steps=steps, guidance_scale=guidance,
                     generator=g, height=size, width=size, output_type="np")
                dt = time.perf_counter() - t0
            if r > 0:  # round 0 warms up
                times[n].append(dt)
    return {n: statistics.median(v) for n, v in times.items()}


def sd15_unet_loop(steps: int, period: int, rounds: int) -> dict[str, float]:
    from diffusers import UNet2DConditionModel

    from engines.t2i.clockwork import Clockwork

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD15_UNET).eval()
    x = torch.randn(2, 4, 32, 32)  # CFG batch at 256×256
    ehs = torch.randn(2, 77, 768)
    ts = torch.linspace(999, 0, steps).long()

    def loop() -> float:
        t0 = time.perf_counter()
        with torch.inference_mode():
            for t in ts:
                unet(x, t, encoder_hidden_states=ehs)
        return time.perf_counter() - t0

    base, cw = [], []
    loop()  # warm-up
    for _ in range(rounds):
        base.append(loop())
        with Clockwork(unet, period):
            cw.append(loop())
    b, c = statistics.median(base), statistics.median(cw)
    return {"params_m": round(sum(p.numel() for p in unet.parameters()) / 1e6, 1), "resolution": 256, "steps": steps,
            "period": period, "baseline_s": round(b, 2), "clockwork_s": round(c, 2), "speedup": round(b / c, 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="studio bench clockwork")
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--steps", type=int, nargs="+", default=[8, 20])
    ap.add_argument("--period", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n-per-prompt", type=int, default=1)
    ap.add_argument("--guidance", type=float, default=None)
    ap.add_argument("--no-eval", action="store_true")
    ap.add_argument("--sd15", action="store_true", help="also time an SD1.5-shaped U-Net at 256x256")
    ap.add_argument("--sd15-only", action="store_true", help="only the SD1.5-shaped U-Net timing")
    ap.add_argument("--sd15-steps", type=int, default=8)
    add_threads_arg(ap)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    apply_threads(args)
    with torch.no_grad():  # scoped: a global switch would break training run later in the same process
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    if args.sd15_only:
        print(json.dumps({"sd15_unet": sd15_unet_loop(steps=args.sd15_steps, period=args.period, rounds=2)}))
        return 0
    from engines.base import ModelSpec
    from engines.pipelines import load_pipeline
    from engines.t2i.engine import adaptor_path

    path = resolve_model(args.model)
    spec = ModelSpec(ref=args.model, kind="diffusers", path=path)
    pipe = load_pipeline(spec, "cpu", "float32").pipe
    adaptor = None
    ap_file = adaptor_path(spec)
    if ap_file.is_file():
        from engines.t2i.clockwork import load_adaptor

        adaptor = load_adaptor(ap_file)
    judge = None
    guidance = args.guidance
    if not args.no_eval:
        from engines.world import eval as we
        from engines.world import models as wm
        from engines.world.paths import judge_dir

        judge = wm.load_judge(judge_dir())
        guidance = guidance if guidance is not None else we.DEFAULT_GUIDANCE
    guidance = guidance if guidance is not None else 4.0
    names = ["base", "clockwork", "deepcache"] + (["adaptor"] if adaptor is not None else [])
    out: dict[str, Any] = {"model": str(path), "period": args.period, "guidance": guidance, "runs": []}
    for steps in args.steps:
        t = time_variants(pipe, names, steps, args.period, args.rounds, guidance, adaptor)
        row: dict[str, Any] = {"steps": steps, "baseline_s": round(t["base"], 4), "clockwork_s": round(t["clockwork"], 4),
                               "speedup": round(t["base"] / t["clockwork"], 3), "deepcache_s": round(t["deepcache"], 4),
                               "deepcache_speedup": round(t["base"] / t["deepcache"], 3)}
        if adaptor is not None:
            row |= {"adaptor_s": round(t["adaptor"], 4), "adaptor_speedup": round(t["base"] / t["adaptor"], 3)}
        if judge is not None:
            from engines.world.eval import evaluate_pipeline

            for n in names:
                with variant(pipe, n, args.period, adaptor):
                    r = evaluate_pipeline(pipe, judge, n_per_prompt=args.n_per_prompt, steps=steps, guidance=guidance,
                                          seed=0, time_images=0)
                key = {"base": "worldeval_base", "clockwork": "worldeval_clockwork", "deepcache": "worldeval_deepcache",
                       "adaptor": "worldeval_adaptor"}[n]
                row[key] = r["overall"]
            row["n_images"] = r["n"]
        out["runs"].append(row)
    if args.sd15:
        out["sd15_unet"] = sd15_unet_loop(steps=args.sd15_steps, period=args.period, rounds=2)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
