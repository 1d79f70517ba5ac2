"""Check WorldEval's two judges against a person's reading of the same single-object images.

    python -m bench.judge_audit --out DIR [--clockwork off|auto] [--labels FILE]

Generates the eval's 48 single-object template prompts × 2 images (seed 0, 20 steps, layout
auto, as ``studio eval world``), writes ``DIR/grid*.png`` (16 numbered images each, 4× nearest
upscale), ``DIR/prompts.txt`` (number: prompt) and ``DIR/verdicts.json`` (each judge's reading).
Look at the grids *without* the verdicts and write a labels file: ``{"wrong": {"N": "why"},
"borderline": {"N": "why"}}`` (every image not named reads as right). With ``--labels`` it
prints one JSON object: the person's all-correct rate (strict: borderline counts as wrong;
lenient: as right), each judge's rate, and how often each judge agrees with the person.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def generate(out: Path, clockwork: str) -> list[dict]:
    from PIL import Image, ImageDraw

    from engines.world import eval as E
    from engines.world import generator as g
    from engines.world import models as M
    from engines.world.objjudge import load_objjudge, read_scenes
    from engines.world.paths import default_model_dir, judge_dir

    mdir = default_model_dir()
    pipe = E.load_pipeline(mdir)
    pipe.set_progress_bar_config(disable=True)
    mode, setting, regional = E.auto_clock(mdir, 20) if clockwork == "auto" else ("off", None, None)
    wrap = E.clock_wrap(mdir, mode, setting, regional) if setting is not None else None
    singles = [(g.canonical_caption(sc), sc.labels()) for sc, _ in E.single_scenes(32, 16)]
    texts = [p for p, _ in singles for _ in range(2)]
    labels = [lab for _, lab in singles for _ in range(2)]
    x = E._images(pipe, texts, 20, E.DEFAULT_GUIDANCE, 0, 16, E._OFFSETS["single"], True, wrap)  # (96, 3, 64, 64)
    preds = M.judge_predict(M.load_judge(judge_dir()), x)
    reads = read_scenes(load_objjudge(judge_dir()), x)
    keys = ("shape", "color", "size", "style", "position")
    rows = []
    for i, ((bg, dets), lab) in enumerate(zip(reads, labels)):
        best = max(dets, key=lambda d: sum(d.get(k) == lab[k] for k in keys), default=None)  # noqa: B023
        oj = {k: (best.get(k) if best else None) for k in keys} | {"background": bg}
        pj = {k: preds[k][i] for k in E.SCORED}
        rows.append({"i": i, "prompt": texts[i], "labels": lab, "primary": pj, "objjudge": oj,
                     "primary_ok": all(pj[k] == lab[k] for k in E.SCORED),
                     "objjudge_ok": all(oj[k] == lab[k] for k in E.SCORED)})
    out.mkdir(parents=True, exist_ok=True)
    (out / "verdicts.json").write_text(json.dumps({"clockwork": mode, "setting": setting, "rows": rows}, indent=1))
    (out / "prompts.txt").write_text("".join(f"#{r['i']}: {r['prompt']}\n" for r in rows))
    arr = (x.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)  # (96, 64, 64, 3)
    for gi in range(0, len(arr), 16):
        can = Image.new("RGB", (4 * 260, 4 * 280), "white")
        d = ImageDraw.Draw(can)
        for k, im in enumerate(arr[gi:gi + 16]):
            x0, y0 = (k % 4) * 260, (k // 4) * 280
            can.paste(Image.fromarray(im).resize((256, 256), Image.NEAREST), (x0 + 2, y0 + 22))
            d.text((x0 + 4, y0 + 4), f"#{gi + k}", fill="black")
        can.save(out / f"grid{gi // 16}.png")
    return rows


def compare(rows: list[dict], labels: dict) -> dict:
    """The person's reading against each judge's, per image."""
    wrong = {int(k) for k in labels.get("wrong", {})}
    border = {int(k) for k in labels.get("borderline", {})}
    n = len(rows)
    strict = [r["i"] not in wrong | border for r in rows]
    lenient = [r["i"] not in wrong for r in rows]
    out = {"n": n, "person_all_correct_strict": round(sum(strict) / n, 4),
           "person_all_correct_lenient": round(sum(lenient) / n, 4)}
    for j in ("primary", "objjudge"):
        ok = [r[f"{j}_ok"] for r in rows]
        out[f"{j}_all_correct"] = round(sum(ok) / n, 4)
        # agreement on the images the person is sure of (borderline ones left out)
        sure = [(o, p) for o, p, r in zip(ok, lenient, rows) if r["i"] not in border]
        out[f"{j}_agrees_with_person"] = round(sum(o == p for o, p in sure) / len(sure), 4)
        out[f"{j}_fails_person_calls_right"] = sorted(r["i"] for o, r in zip(ok, rows)
                                                      if not o and r["i"] not in wrong | border)
        out[f"{j}_passes_person_calls_wrong"] = sorted(r["i"] for o, r in zip(ok, rows) if o and r["i"] in wrong)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.judge_audit")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--clockwork", choices=("off", "auto"), default="off")
    ap.add_argument("--labels", type=Path, default=None, help="a person's labels (see the module docstring)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    vpath = args.out / "verdicts.json"
    rows = json.loads(vpath.read_text())["rows"] if vpath.is_file() else generate(args.out, args.clockwork)
    if args.labels is None:
        print(json.dumps({"out": str(args.out), "images": len(rows)}))
        return 0
    print(json.dumps(compare(rows, json.loads(args.labels.read_text()))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
