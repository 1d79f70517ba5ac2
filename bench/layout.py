"""Layout (prompts read into objects, drawn region by region) with and without Clockwork:
compositional WorldEval quality and time per image, in one run.

    studio bench layout --json [--steps 20] [--n-per-prompt 2] [--seed 0]
        [--prompt-file tests/data/world_prompts_heldout2.json] [--clockwork off adaptor]

For each Clockwork mode (``off``, ``reuse``, ``adaptor``; period, cut and adaptor file from the
embedded model's profile for this step count, as a t2i job with an empty period gets them) the
embedded model runs the compositional WorldEval with ``layout`` on (templates only: pair,
pair_full, relation and single objects read by both judges) and the prompt file, on the same
prompts and noise in every mode, and times one single-object and one two-object image at batch 1.
Quality figures come with 95 % bootstrap intervals over prompts. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench import add_threads_arg, apply_threads


def _clock(clockwork, load_adaptor, mdir: Path, mode: str, setting: dict):  # noqa: ANN001, ANN202
    """unet -> a fresh Clockwork context with the profile's setting (what a t2i job would use)."""
    period = setting["period"] or 2
    adaptor = load_adaptor(mdir / (setting.get("adaptor") or "clockwork_adaptor.safetensors")) \
        if mode == "adaptor" else None
    depth = int(setting.get("depth", 1))
    return lambda unet: clockwork(unet, period, mode, adaptor, depth=depth)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="studio bench layout")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--n-per-prompt", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prompt-file", type=Path, default=Path("tests/data/world_prompts_heldout2.json"))
    ap.add_argument("--clockwork", nargs="+", choices=("off", "reuse", "adaptor"), default=["off", "adaptor"])
    ap.add_argument("--prompts", type=int, nargs=5, default=(32, 16, 48, 32, 48),
                    metavar=("SEEN", "UNSEEN", "PAIR", "PAIR_FULL", "RELATION"))
    ap.add_argument("--time-images", type=int, default=3, help="images timed per example prompt and mode")
    add_threads_arg(ap)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    apply_threads(args)

    from engines.pipelines import model_hash
    from engines.base import ModelSpec
    from engines.t2i.clockwork import Clockwork, choose_setting, load_adaptor
    from engines.world import eval as E
    from engines.world.objjudge import load_objjudge
    from engines.world.paths import default_model_dir, judge_dir

    mdir = default_model_dir()
    pipe = E.load_pipeline(mdir)
    pipe.set_progress_bar_config(disable=True)
    judge, objjudge = E.M.load_judge(judge_dir()), load_objjudge(judge_dir())
    prof = json.loads((mdir / "clockwork_profile.json").read_text())
    if prof.get("model_hash") != model_hash(ModelSpec(ref="embedded", kind="diffusers", path=mdir)):
        prof = None
    t0 = time.time()
    out: dict = {"steps": args.steps, "n_per_prompt": args.n_per_prompt, "seed": args.seed,
                 "prompt_file": str(args.prompt_file), "modes": {}}
    examples = ("a medium red outlined heart in the center on a dark green background",
                "an orange star and a cyan ring on a dark green background")
    for mode in args.clockwork:
        setting = choose_setting(prof, "DPM++ 2M", args.steps, mode) if mode != "off" else None
        wrap = _clock(Clockwork, load_adaptor, mdir, mode, setting) if setting is not None else None
        comp = E.evaluate_compositional(pipe, judge, objjudge, args.n_per_prompt, args.steps, E.DEFAULT_GUIDANCE,
                                        args.seed, paraphrase=False, singles_n=tuple(args.prompts[:2]),
                                        comp_n=tuple(args.prompts[2:]), layout=True, wrap=wrap)
        keep = {k: comp[k] for k in ("all_correct", "all_correct_ci", "two_object_acc", "two_object_ci",
                                     "attribute_binding_acc", "attribute_binding_ci", "attribute_binding_full_acc",
                                     "relative_position_acc", "relative_position_ci") if k in comp}
        keep["single_objjudge_all_correct"] = comp["single_objjudge"]["all_correct"]
        keep["single_objjudge_all_correct_ci"] = comp["single_objjudge"]["all_correct_ci"]
        res = {"setting": setting, "templates": keep}
        if args.prompt_file and args.prompt_file.is_file():
            res["prompt_file"] = E.evaluate_prompt_file(pipe, objjudge, args.prompt_file, args.n_per_prompt,
                                                        args.steps, E.DEFAULT_GUIDANCE, args.seed, layout=True,
                                                        wrap=wrap)
        res["seconds_per_image_single"] = E.seconds_per_image(pipe, [examples[0]], args.steps, E.DEFAULT_GUIDANCE,
                                                              args.seed, args.time_images, layout=True, wrap=wrap)
        res["seconds_per_image_two_objects"] = E.seconds_per_image(pipe, [examples[1]], args.steps,
                                                                   E.DEFAULT_GUIDANCE, args.seed, args.time_images,
                                                                   layout=True, wrap=wrap)
        out["modes"][mode] = res
    out["wall_seconds"] = round(time.time() - t0, 1)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
