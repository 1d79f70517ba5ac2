"""Studio overhead on text-to-image: a Studio job vs a bare diffusers call, same pipeline
object, same params, interleaved in one process.

    studio bench t2i --json [--model embedded] [--steps 20] [--rounds 8]

The Studio job path is the worker's: job row, runner, engine (scheduler set-up, seeded
CPU generators, step callback with cancel check and throttled progress writes), PNG with
metadata, content-addressed asset ingest. Queue hand-off latency is measured separately by
``studio bench queue``. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench import add_threads_arg, apply_threads


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="studio bench t2i")
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--prompt", default="a red star on a blue background")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=4.0)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--layout", choices=("auto", "off"), default="auto",
                    help="the job's layout (auto: a prompt naming several world objects is drawn region by "
                         "region, one more U-Net row per object; the raw call always takes the prompt as typed)")
    ap.add_argument("--clockwork", choices=("auto", "off", "reuse", "adaptor"), default="auto",
                    help="the job's Clockwork mode (auto, a job's default: the model profile's quality-holding "
                         "setting where it has one; period from the profile); the raw call runs without")
    add_threads_arg(ap)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    apply_threads(args)
    import torch

    from engines.pipelines import load_pipeline
    from studio.config import load
    from studio.wiring import build, build_runner

    with tempfile.TemporaryDirectory() as td:
        services = build(load(Path(td) / "data", device="cpu", dtype="float32"))
        runner = build_runner(services, role="bench")
        params = {"model": args.model, "prompt": args.prompt, "steps": args.steps,
                  "guidance_scale": args.guidance, "seed": 1, "preview_every": 0, "layout": args.layout,
                  "clockwork": args.clockwork}

        ran: dict = {}

        def studio_job() -> float:
            t0 = time.perf_counter()
            job = services.jobs.submit("t2i", params, enqueue=False)
            status = runner.execute(job.id)
            dt = time.perf_counter() - t0
            if status != "completed":
                raise SystemExit(f"bench job {status}: {services.jobs.get(job.id).error}")
            ran["meta"] = services.jobs.get(job.id).result_meta
            return dt

        studio_job()  # loads the model into the worker cache
        loaded = services.models.load(args.model, "t2i", lambda spec: load_pipeline(spec, "cpu", "float32"),
                                      runner.device, runner.dtype)
        pipe = loaded.pipe
        size = pipe.unet.config.sample_size * pipe.vae_scale_factor

        def raw() -> float:
            t0 = time.perf_counter()
            with torch.inference_mode():
                pipe(args.prompt, num_inference_steps=args.steps, guidance_scale=args.guidance,
                     generator=[torch.Generator().manual_seed(1)], height=size, width=size, output_type="pil")
            return time.perf_counter() - t0

        raw()
        r, s = [], []
        for i in range(args.rounds):
            if i % 2:
                r.append(raw())
                s.append(studio_job())
            else:
                s.append(studio_job())
                r.append(raw())
        services.close()
    raw_s, job_s = statistics.median(r), statistics.median(s)
    print(json.dumps({"model": args.model, "prompt": args.prompt, "layout": args.layout, "clockwork": args.clockwork,
                      "clockwork_ran": ran["meta"].get("clockwork"),
                      **({"clockwork_ran_regional": ran["meta"].get("clockwork_regional")}
                         if ran["meta"].get("clockwork_regional_images") else {}),
                      "steps": args.steps,
                      **({"clockwork_auto_off": ran["meta"]["clockwork_auto_off"]}
                         if "clockwork_auto_off" in ran["meta"] else {}),
                      "resolution": size, "rounds": args.rounds,
                      "raw_pipeline_s": round(raw_s, 4), "studio_job_s": round(job_s, 4),
                      "overhead_ratio": round(job_s / raw_s, 4), "images_per_s": round(1 / job_s, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
