"""Layout (prompts read into objects, drawn region by region) with and without Clockwork:
compositional WorldEval quality and time per image, in one run.

    studio bench layout --json [--steps 20] [--n-per-prompt 2] [--seed 0]
        [--prompt-file tests/data/world_prompts_heldout2.json ...] [--clockwork off adaptor]
        [--candidates adaptor:p3:d0:w4:clockwork_adaptor_d0.safetensors reuse:p3:d1 ...]

For each Clockwork mode (``off``, ``reuse``, ``adaptor``; period, cut and adaptor file from the
embedded model's profile for this step count, as a t2i job with an empty period gets them) the
embedded model runs the compositional WorldEval with ``layout`` on (templates only: pair,
pair_full, relation and single objects read by both judges) and each prompt file, on the same
prompts and noise in every mode, and times one single-object and one two-object image at batch 1.
``--candidates`` adds settings spelled out (mode, then any of period ``pN``, cut depth ``dN``,
full warm-up steps ``wN``, adaptor file beside the model), e.g. to find gentler clocks.
``--write-profile`` (needs ``off``) stores, per mode, two quality-holding settings in the
profile entry for this step count: ``layout``, the fastest whose binding and relation accuracy
each stay within ``--tolerance`` of layout without Clockwork (t2i jobs run it on images drawn
region by region), and ``holding``, the fastest whose single objects with every attribute right
(both judges) do (``clockwork=auto`` runs it on images of one object); both on the templates and
on every prompt file, period 1 (in full) where none holds (``choose_holding``).
``--choose-from JSON`` makes that choice again from a saved run without measuring.
Quality figures come with 95 % bootstrap intervals over prompts. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench import add_threads_arg, apply_threads


def parse_candidate(spec: str) -> tuple[str, dict]:
    """"adaptor:p3:d0:w4:file.safetensors" -> ("adaptor", {"period": 3, "depth": 0, "warmup": 4,
    "adaptor": "file.safetensors"}); unnamed fields keep Clockwork's defaults."""
    import re

    mode, *rest = spec.split(":")
    if mode not in ("reuse", "adaptor"):
        raise SystemExit(f"candidate {spec!r}: the mode must be reuse or adaptor")
    setting: dict = {"period": 2, "depth": 1, "warmup": 0, "adaptor": None}
    for tok in rest:
        m = re.fullmatch(r"([pdw])(\d{1,2})", tok)
        if m:
            setting[{"p": "period", "d": "depth", "w": "warmup"}[m[1]]] = int(m[2])
        elif re.fullmatch(r"[A-Za-z0-9_.-]{1,100}\.safetensors", tok) and not tok.startswith("."):
            setting["adaptor"] = tok
        else:
            raise SystemExit(f"candidate {spec!r}: cannot read {tok!r} (pN, dN, wN or an adaptor file)")
    if setting["period"] < 1:
        raise SystemExit(f"candidate {spec!r}: the period must be ≥ 1")
    return mode, setting


def _scores(r: dict) -> dict[str, float]:
    """The figures a quality-holding clock must keep: binding and relations on the templates,
    single objects with every attribute right (per-object judge, and the primary judge) and the
    same on each prompt file scored (other wordings, other scenes)."""
    t = r["templates"]
    out = {"binding": t["attribute_binding_acc"], "relations": t["relative_position_acc"]}
    if "single_objjudge_all_correct" in t:
        # runs before 2026-12-05 kept the primary judge's reading as all_correct
        out |= {"single": t["single_objjudge_all_correct"],
                "single_primary_judge": t.get("all_correct_primary_judge", t["all_correct"])}
    # one prompt file (runs before 2026-12-05: "prompt_file") or several ("prompt_files", by path)
    files = [("file", r["prompt_file"])] if r.get("prompt_file") else []
    files += [(f"file{k + 1}" if k else "file", pf) for k, pf in enumerate((r.get("prompt_files") or {}).values())]
    for key, pf in files:
        if "single" in pf:
            out[f"{key}_single"] = pf["single"]["all_named_correct"]
        if "pair" in pf:
            out[f"{key}_binding"] = pf["pair"]["attribute_binding_acc"]
        if "relation" in pf:
            out[f"{key}_relations"] = pf["relation"]["relative_position_acc"]
    return out


# which figures each kind of image must keep, and which time it is chosen on
_KINDS = {"layout": (("binding", "relations"), "seconds_per_image_two_objects", "images drawn region by region",
                     "binding and relations"),
          "holding": (("single",), "seconds_per_image_single", "images of one object",
                      "single objects with every attribute right")}


def choose_holding(modes: dict, tolerance: float) -> dict:
    """{label: bench result} -> {mode: {"layout": setting, "holding": setting}}: per Clockwork
    mode and kind of image, the fastest setting (two-object time for ``layout``, single-object
    time for ``holding``) whose figures for that kind — binding and relations, or single objects
    with every attribute right (both judges) — each lie within ``tolerance`` of the ``off``
    result on the templates and on every prompt file (same prompts, same noise); period 1 (in
    full) where none does. A t2i job runs ``layout`` on regional images under an explicit mode
    and under ``clockwork=auto``, and ``holding`` on single-object images under auto."""
    off = _scores(modes["off"])
    out: dict = {}
    for mode in ("reuse", "adaptor"):
        runs = [(label, r) for label, r in modes.items() if r.get("mode") == mode]
        if not runs:
            continue
        out[mode] = {}
        for kind, (words, timed, images, what) in _KINDS.items():
            def mine(sc: dict[str, float]) -> dict[str, float]:
                return {k: v for k, v in sc.items() if k in off and any(k == w or k.endswith("_" + w) or
                                                                        k.startswith(w + "_") for w in words)}
            ok = [(r[timed], label, r) for label, r in runs
                  if all(v >= off[k] - tolerance for k, v in mine(_scores(r)).items())]  # noqa: B023
            if not ok:
                out[mode][kind] = {"period": 1, "depth": 1, "warmup": 0,
                                   "why": f"no setting kept {what} within {tolerance} of Clockwork off"}
                continue
            secs, label, r = min(ok, key=lambda x: x[0])
            out[mode][kind] = {k: r["setting"][k] for k in ("period", "depth", "warmup", "adaptor")
                               if k in r["setting"]} | {"candidate": label, **mine(_scores(r)),
                                                        "speedup": round(modes["off"][timed] / secs, 3),
                                                        "for": images}
    return out


def write_holding(mdir: Path, steps: int, chosen: dict, command: str) -> None:
    """Store each mode's settings as the ``layout`` and ``holding`` sub-settings of the profile
    entry for ``steps`` (the profile as it is now: another run may have written it meanwhile)."""
    prof = json.loads((mdir / "clockwork_profile.json").read_text())
    table = prof["choices"].setdefault("DPM++ 2M", {}).setdefault(str(steps), {})
    for mode, kinds in chosen.items():
        if mode in table:
            for kind, entry in kinds.items():
                table[mode][kind] = entry | {"measured_by": command}
    (mdir / "clockwork_profile.json").write_text(json.dumps(prof, indent=1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="studio bench layout")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--n-per-prompt", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prompt-file", type=Path, nargs="*", default=[Path("tests/data/world_prompts_heldout2.json")],
                    help="prompt files written elsewhere to score besides the templates (a chosen setting must "
                         "hold on each)")
    ap.add_argument("--clockwork", nargs="*", choices=("off", "reuse", "adaptor"), default=["off", "adaptor"])
    ap.add_argument("--candidates", nargs="*", default=[], metavar="MODE:pN:dN:wN:FILE",
                    help="Clockwork settings to measure besides the profile's (see the module docstring)")
    ap.add_argument("--write-profile", action="store_true",
                    help="store each mode's quality-holding settings in the model's clockwork_profile.json")
    ap.add_argument("--tolerance", type=float, default=0.05,
                    help="largest drop in any held figure (binding, relations, single objects) a setting may cost")
    ap.add_argument("--prompts", type=int, nargs=5, default=(32, 16, 48, 32, 48),
                    metavar=("SEEN", "UNSEEN", "PAIR", "PAIR_FULL", "RELATION"))
    ap.add_argument("--time-images", type=int, default=3, help="images timed per example prompt and mode")
    add_threads_arg(ap)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--choose-from", type=Path, default=None, metavar="JSON",
                    help="measure nothing: choose the quality-holding settings from this saved output of a run with "
                         "--clockwork off, under the current rule and --tolerance, and write them to the profile")
    args = ap.parse_args(argv)
    if args.choose_from is not None:
        from engines.world.paths import default_model_dir

        saved = json.loads(args.choose_from.read_text())
        if "off" not in saved.get("modes", {}):
            raise SystemExit(f"{args.choose_from}: no 'off' run to compare with")
        chosen = choose_holding(saved["modes"], args.tolerance)
        write_holding(default_model_dir(), int(saved["steps"]), chosen,
                       f"{saved.get('command', 'studio bench layout')} (chosen by --choose-from, tolerance "
                       f"{args.tolerance})")
        print(json.dumps({"steps": saved["steps"], "profile_settings": chosen}))
        return 0
    missing = [str(p) for p in args.prompt_file if not p.is_file()]
    if missing:
        raise SystemExit(f"no such prompt file: {', '.join(missing)}")
    apply_threads(args)

    from engines.pipelines import model_hash
    from engines.base import ModelSpec
    from engines.pipelines.clockwork import choose_setting
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
    out: dict = {"command": "studio bench layout " + " ".join(argv if argv is not None else sys.argv[1:]),
                 "steps": args.steps, "n_per_prompt": args.n_per_prompt, "seed": args.seed,
                 "prompt_files": [str(p) for p in args.prompt_file], "modes": {}}
    examples = ("a medium red outlined heart in the center on a dark green background",
                "an orange star and a cyan ring on a dark green background")
    runs = [(mode, mode, choose_setting(prof, "DPM++ 2M", args.steps, mode) if mode != "off" else None)
            for mode in args.clockwork] + [(spec, *parse_candidate(spec)) for spec in args.candidates]
    for label, mode, setting in runs:
        wrap = E.clock_wrap(mdir, mode, setting) if setting is not None else None
        comp = E.evaluate_compositional(pipe, judge, objjudge, args.n_per_prompt, args.steps, E.DEFAULT_GUIDANCE,
                                        args.seed, paraphrase=False, singles_n=tuple(args.prompts[:2]),
                                        comp_n=tuple(args.prompts[2:]), layout=True, wrap=wrap)
        keep = {k: comp[k] for k in ("all_correct", "all_correct_ci", "all_correct_primary_judge",
                                     "all_correct_primary_judge_ci", "two_object_acc", "two_object_ci",
                                     "attribute_binding_acc", "attribute_binding_ci", "attribute_binding_full_acc",
                                     "relative_position_acc", "relative_position_ci") if k in comp}
        keep["single_objjudge_all_correct"] = comp["single_objjudge"]["all_correct"]
        keep["single_objjudge_all_correct_ci"] = comp["single_objjudge"]["all_correct_ci"]
        res = {"mode": mode, "setting": setting, "templates": keep}
        res["prompt_files"] = {str(pf): E.evaluate_prompt_file(pipe, objjudge, pf, args.n_per_prompt, args.steps,
                                                               E.DEFAULT_GUIDANCE, args.seed, layout=True, wrap=wrap)
                               for pf in args.prompt_file}
        res["seconds_per_image_single"] = E.seconds_per_image(pipe, [examples[0]], args.steps, E.DEFAULT_GUIDANCE,
                                                              args.seed, args.time_images, layout=True, wrap=wrap)
        res["seconds_per_image_two_objects"] = E.seconds_per_image(pipe, [examples[1]], args.steps,
                                                                   E.DEFAULT_GUIDANCE, args.seed, args.time_images,
                                                                   layout=True, wrap=wrap)
        out["modes"][label] = res
    out["wall_seconds"] = round(time.time() - t0, 1)
    if args.write_profile:
        if "off" not in out["modes"] or prof is None:
            raise SystemExit("--write-profile needs --clockwork off and a profile measured for these weights")
        chosen = choose_holding(out["modes"], args.tolerance)
        write_holding(mdir, args.steps, chosen, out["command"])
        out["profile_settings"] = chosen
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
