"""WorldEval: generate from fixed prompt sets and let the judges read the images.

Single objects (the original eval): 48 prompts in the canonical wording; a third use (shape,
colour) pairs held out of training (``generator.HELDOUT``), reported again under ``"unseen"``.
``all_correct`` (shape, colour, background, position and style all right) is read by the
per-object judge; the primary-object judge (``models.Judge``) gives the per-attribute
``*_acc``, ``overall`` and ``all_correct_primary_judge`` (it misreads generated stripes and dots:
see ``_objjudge_single``).

Compositional (GenEval's hard categories, ``compositional_set``), read by the per-object judge
(``objjudge.ObjJudge``, every object of the image per 3×3 cell): ``two_object_acc`` (both named
shapes present), ``attribute_binding_acc`` (each shape with its own colour),
``attribute_binding_full_acc`` (shape, colour, size and style of both) and
``relative_position_acc`` (both objects found and "left of"/"right of"/"above"/"below" holding
between their cells). Each headline figure has a 95 % bootstrap interval over prompts. The
``"paraphrase"`` block repeats everything for the same scenes and noise in wording the caption
templates never produce, with the paired gap and the words the tokenizer does not know.

``python -m engines.world.eval [--model DIR] [--n-per-prompt N] [--steps S] [--guidance G]
[--single-only] [--no-paraphrase] [--recon]`` prints one JSON object (``studio eval world --json``
calls ``main``).

Also home of the measurements training uses as gates (``judge_accuracy``, ``recon_gate``,
``quick_eval``): training imports them from here; this module imports nothing from training.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engines.world import generator as g
from engines.world import models as M
from engines.world.data import to_tensor
from engines.world.objjudge import Detection, load_objjudge, read_scenes
from engines.world.paths import default_model_dir, judge_dir

SCORED = ("shape", "color", "background", "position", "style")
DEFAULT_GUIDANCE = 4.0


def single_scenes(n_seen: int = 32, n_unseen: int = 16, seed: int = 777) -> list[tuple[g.Scene, bool]]:
    """The fixed single-object scenes behind ``prompt_set`` (scene, unseen)."""
    out = []
    for split, n, unseen in (("train", n_seen, False), ("heldout", n_unseen, True)):
        rng = np.random.default_rng([seed, int(unseen)])
        for _ in range(n):
            out.append((g.sample_scene(rng, split, 0.0), unseen))
    return out


def prompt_set(n_seen: int = 32, n_unseen: int = 16, seed: int = 777) -> list[tuple[str, dict[str, str], bool]]:
    """Fixed (prompt, labels, unseen) triples. Seen scenes come from the training split, unseen
    ones use only held-out (shape, colour) pairs; all attribute values otherwise vary."""
    return [(g.canonical_caption(sc), sc.labels(), unseen) for sc, unseen in single_scenes(n_seen, n_unseen, seed)]


def _score(preds: dict[str, list[str]], labels: list[dict[str, str]], mask: list[bool]) -> dict[str, float]:
    idx = [i for i, m in enumerate(mask) if m]
    res: dict[str, float] = {}
    if not idx:
        return res
    for a in SCORED + ("size",):
        res[f"{a}_acc"] = round(float(np.mean([preds[a][i] == labels[i][a] for i in idx])), 4)
    res["overall"] = round(float(np.mean([res[f"{a}_acc"] for a in SCORED])), 4)
    res["all_correct"] = round(float(np.mean([all(preds[a][i] == labels[i][a] for a in SCORED) for i in idx])), 4)
    res["n"] = len(idx)
    return res


def _images(pipe, prompts: list[str], steps: int, guidance: float, seed: int, batch: int,  # noqa: ANN001
            offset: int = 0, layout: bool = False, wrap=None) -> torch.Tensor:  # noqa: ANN001
    """(N, 3, 64, 64) in [0, 1]. One generator per prompt index keeps results batch-independent;
    ``offset`` gives another prompt set its own noise (the same offset = the same noise).
    ``layout``: read each prompt into objects and draw them region by region, as the t2i engine
    does for the embedded model (``engines.world.compose``). ``wrap(unet, regional)``: a context
    manager to hold open around each pipeline call (Clockwork: ``clock_wrap``), told whether the
    call draws an image region by region."""
    outs = []
    for i in range(0, len(prompts), batch):
        chunk = prompts[i:i + batch]
        seeds = [seed * 100003 + offset + i + k for k in range(len(chunk))]
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        ctx: object = contextlib.nullcontext()
        regional = False
        if layout:
            from engines.world.compose import prepare

            chunk, ctx, plans = prepare(pipe, chunk, seeds, g.SIZE, g.SIZE)
            regional = any(len(p.regions) >= 2 for p in plans)  # one clock per call: regional wins
        with ctx, (wrap(pipe.unet, regional) if wrap is not None else contextlib.nullcontext()):  # type: ignore[attr-defined]
            im = pipe(chunk, num_inference_steps=steps, guidance_scale=guidance, generator=gens,
                      output_type="np", height=g.SIZE, width=g.SIZE).images  # (B, 64, 64, 3) float
        outs.append(torch.from_numpy(np.asarray(im)).permute(0, 3, 1, 2).float())
    return torch.cat(outs).clamp(0, 1)


def evaluate_pipeline(pipe, judge, n_per_prompt: int = 1, steps: int = 20, guidance: float = DEFAULT_GUIDANCE,  # noqa: ANN001
                      seed: int = 0, batch: int = 16, prompts=None, time_images: int = 3,  # noqa: ANN001
                      save_grid: Path | None = None, wrap=None, objjudge=None) -> dict:  # noqa: ANN001
    """Score a loaded pipeline. ``seconds_per_image`` is timed separately at batch 1 (CFG on).
    With ``objjudge`` the headline ``all_correct`` is the per-object judge's (as in
    ``evaluate_compositional``); without, the primary judge's (training's own quick gate)."""
    ps = prompts or prompt_set()
    texts = [p for p, _, _ in ps for _ in range(n_per_prompt)]
    labels = [lab for _, lab, _ in ps for _ in range(n_per_prompt)]
    unseen = [u for _, _, u in ps for _ in range(n_per_prompt)]
    pipe.set_progress_bar_config(disable=True)
    t = time.time()
    x = _images(pipe, texts, steps, guidance, seed, batch, wrap=wrap)
    batched_s = (time.time() - t) / len(texts)
    preds = M.judge_predict(judge, x)
    res = _score(preds, labels, [True] * len(texts))
    res["unseen"] = _score(preds, labels, unseen)
    res["seen"] = _score(preds, labels, [not u for u in unseen])
    if objjudge is not None:
        res["single_objjudge"], oj_ok = _objjudge_single(objjudge, x, labels, n_per_prompt)
        _headline_all_correct(res, oj_ok, unseen)
    if time_images:
        res["seconds_per_image"] = seconds_per_image(pipe, texts, steps, guidance, seed, time_images, wrap=wrap)
    res["seconds_per_image_batched"] = round(batched_s, 3)
    res.update(steps=steps, guidance=guidance, n_per_prompt=n_per_prompt, prompts=len(ps), seed=seed,
               resolution=g.SIZE, scored_object="primary (single-object prompts)")
    if save_grid is not None:
        _grid(x, save_grid)
    return res


def seconds_per_image(pipe, texts: list[str], steps: int, guidance: float, seed: int,  # noqa: ANN001
                      n: int = 3, layout: bool = False, wrap=None) -> float:  # noqa: ANN001
    """Batch 1, CFG on, after one warm-up image."""
    _images(pipe, texts[:1], steps, guidance, seed, 1, layout=layout, wrap=wrap)  # warm-up
    t = time.time()
    _images(pipe, (texts * n)[:n], steps, guidance, seed, 1, layout=layout, wrap=wrap)
    return round((time.time() - t) / n, 3)


def _grid(x: torch.Tensor, path: Path, cols: int = 8) -> None:
    from PIL import Image

    n = (len(x) // cols) * cols or len(x)
    a = (x[:n].permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    rows = [np.concatenate(list(a[r:r + cols]), 1) for r in range(0, n, cols)]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, 0)).resize((cols * 128, len(rows) * 128), Image.NEAREST).save(path)


# ---------------------------------------------------------------- compositional WorldEval

@dataclass(frozen=True)
class Case:
    """One compositional prompt: ``named`` holds, per named object, the attributes scored for it."""

    category: str  # "pair" | "pair_full" | "relation"
    prompt: str
    paraphrase: str  # the same request in wording the training templates never produce
    named: tuple[dict[str, str], ...]
    background: str
    relation: str | None = None


# category -> noise offset for _images (template and paraphrase share it: paired comparison)
_OFFSETS = {"single": 0, "pair": 10_000, "pair_full": 20_000, "relation": 30_000}


def _two_objects(rng: np.random.Generator) -> g.Scene:
    """A training-split two-object scene whose objects differ in shape and in colour (so a
    swapped binding is visible)."""
    while True:
        sc = g.sample_scene(rng, "train", 1.0)
        a, b = sc.objects
        if a.shape != b.shape and a.color != b.color:
            return sc


def _fitting(make, fits, tries: int = 50) -> str:  # noqa: ANN001
    """Redraw a paraphrase (``make()`` draws from a seeded rng) until ``fits`` it, so the
    paraphrase gap measures wording, not truncation; the last draw if none fits."""
    p = make()
    for _ in range(tries):
        if fits is None or fits(p):
            break
        p = make()
    return p


def compositional_set(n_pair: int = 48, n_full: int = 32, n_rel: int = 48, seed: int = 778,
                      fits=None) -> list[Case]:  # noqa: ANN001
    """The fixed GenEval-style prompt set.

    - ``pair``: "a red square and a blue circle on a white background" — two_object (both shapes
      present) and attribute_binding (each shape with its own colour);
    - ``pair_full``: also size and style named ("a small red striped square and ...") —
      attribute_binding_full (shape, colour, size, style of both);
    - ``relation``: "a red square to the left of a blue circle ..." (left of / right of / above /
      below in turn) — relative_position (both found, relation holds between their cells).

    ``fits(text) -> bool`` (e.g. "at most the tokenizer's length"): paraphrases are redrawn
    until they fit (words the tokenizer lacks are spelled in byte pieces, ~1 token a letter)."""
    cases = []
    sc_keys, full_keys = ("shape", "color"), ("shape", "color", "size", "style")
    for cat, n in (("pair", n_pair), ("pair_full", n_full), ("relation", n_rel)):
        for i in range(n):
            rng = np.random.default_rng([seed, ("pair", "pair_full", "relation").index(cat), i])
            sc = _two_objects(rng)
            prng = np.random.default_rng([seed, 99, ("pair", "pair_full", "relation").index(cat), i])
            a, b = sc.objects
            if cat == "pair":
                cases.append(Case(cat, g.pair_caption(sc, size=False, style=False),
                                  _fitting(lambda: g.paraphrase_caption(sc, prng, size=False, style=False,
                                                                        position=False), fits),
                                  tuple({k: o.labels()[k] for k in sc_keys} for o in (a, b)), sc.background))
            elif cat == "pair_full":
                cases.append(Case(cat, g.pair_caption(sc),
                                  _fitting(lambda: g.paraphrase_caption(sc, prng, position=False), fits),
                                  tuple({k: o.labels()[k] for k in full_keys} for o in (a, b)), sc.background))
            else:
                rel = list(g.RELATIONS)[i % len(g.RELATIONS)]
                cases.append(Case(cat, g.relation_caption(a, rel, b, sc.background),
                                  _fitting(lambda: g.paraphrase_relation(a, rel, b, sc.background, prng), fits),
                                  tuple({k: o.labels()[k] for k in sc_keys} for o in (a, b)), sc.background, rel))
    return cases


def _matches(det: Detection, want: dict[str, str]) -> bool:
    return all(det.get(k) == v for k, v in want.items())


def pair_found(dets: list[Detection], a: dict[str, str], b: dict[str, str], relation: str | None = None) -> bool:
    """Is there a pair of *distinct* detected objects, one matching ``a`` and one ``b`` (and, if
    given, "a <relation> b" between their cells)? Detections are cells, so an object a few
    pixels off its cell centre still counts; extra objects are not penalised (as GenEval)."""
    for i, j in itertools.permutations(range(len(dets)), 2):
        if _matches(dets[i], a) and _matches(dets[j], b) and (
                relation is None or g.relation_holds(relation, dets[i].position, dets[j].position)):
            return True
    return False


def score_case(case: Case, dets: list[Detection]) -> dict[str, bool]:
    """Per-image successes of one compositional case (keys depend on the category)."""
    a, b = case.named
    if case.category == "pair":
        sh = ({"shape": a["shape"]}, {"shape": b["shape"]})
        return {"two_object": pair_found(dets, *sh), "attribute_binding": pair_found(dets, a, b),
                "colour_swapped": pair_found(dets, {**sh[0], "color": b["color"]}, {**sh[1], "color": a["color"]})}
    if case.category == "pair_full":
        out = {"attribute_binding_full": pair_found(dets, a, b)}
        for k in ("color", "size", "style"):
            out[f"binding_{k}"] = pair_found(dets, {"shape": a["shape"], k: a[k]}, {"shape": b["shape"], k: b[k]})
        return out
    both = pair_found(dets, a, b)
    return {"relative_position": both and pair_found(dets, a, b, case.relation), "relation_objects_found": both}


def _ci(per_prompt: np.ndarray, n_boot: int = 2000, seed: int = 0) -> list[float]:
    """95 % percentile bootstrap interval of the mean over prompts. per_prompt: (P,) or (P, 2)
    for a paired difference (column 0 minus column 1)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(per_prompt), (n_boot, len(per_prompt)))  # (n_boot, P)
    v = per_prompt[idx]
    m = v.mean(1) if v.ndim == 2 else (v[..., 0] - v[..., 1]).mean(1)
    return [round(float(np.percentile(m, 2.5)), 4), round(float(np.percentile(m, 97.5)), 4)]


def _per_prompt(success: list[bool], n_per_prompt: int) -> np.ndarray:
    """(P,) mean success per prompt from per-image successes ordered prompt-major."""
    return np.asarray(success, np.float64).reshape(-1, n_per_prompt).mean(1)


def unknown_words(tok, prompts: list[str]) -> dict:  # noqa: ANN001
    """Words the tokenizer has no whole-word token for (they are spelled in byte pieces, which
    the text encoder never saw in training; e.g. "colored" even contains the piece "red") and
    prompts longer than ``model_max_length`` (truncated). Reported, never fatal."""
    vocab = tok.get_vocab()
    counts: dict[str, int] = {}
    n_with = n_trunc = 0
    for p in prompts:
        words = re.findall(r"[a-z]+", p.lower())
        unk = [w for w in words if w + "</w>" not in vocab]
        for w in unk:
            counts[w] = counts.get(w, 0) + 1
        n_with += bool(unk)
        n_trunc += len(tok(p, verbose=False).input_ids) > tok.model_max_length
    return {"unknown_words": dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))),
            "prompts_with_unknown_words": n_with, "truncated_prompts": n_trunc, "prompts": len(prompts)}


_HEADLINE = ("all_correct", "all_correct_primary_judge", "two_object_acc", "attribute_binding_acc",
             "attribute_binding_full_acc", "relative_position_acc")


def _objjudge_single(objjudge, x: torch.Tensor, labels: list[dict[str, str]],  # noqa: ANN001
                     n_per_prompt: int) -> tuple[dict, list[bool]]:
    """The per-object judge's reading of single-object images x (N, 3, 64, 64): per-attribute
    accuracy of the detection that best matches the request, and per image whether shape, colour,
    background, position and style are all right. This is the headline ``all_correct``: the
    primary judge misreads generated stripes and dots (a by-eye audit of 96 images,
    docs/embedded-world.md, found ~28 of its 37 failures wrong; ``bench/judge_audit.py``)."""
    reads = read_scenes(objjudge, x)
    keys = ("shape", "color", "size", "style", "position")
    best = [max(dets, key=lambda d: sum(d.get(k) == lab[k] for k in keys), default=None)
            for (_, dets), lab in zip(reads, labels)]
    hit = {k: [b is not None and b.get(k) == lab[k] for b, lab in zip(best, labels)] for k in keys}
    hit["background"] = [bg == lab["background"] for (bg, _), lab in zip(reads, labels)]
    oj_ok = [all(hit[k][i] for k in SCORED) for i in range(len(labels))]
    sj = {f"{k}_acc": round(float(np.mean(v)), 4) for k, v in hit.items()}
    sj["all_correct"] = round(float(np.mean(oj_ok)), 4)
    sj["all_correct_ci"] = _ci(_per_prompt(oj_ok, n_per_prompt))
    sj["all_correct_with_size"] = round(float(np.mean([o and hit["size"][i] for i, o in enumerate(oj_ok)])), 4)
    return sj, oj_ok


def _headline_all_correct(res: dict, oj_ok: list[bool], unseen: list[bool]) -> None:
    """In a result whose single-object blocks come from ``_score`` (the primary judge), make
    ``all_correct`` the per-object judge's and keep the primary judge's as
    ``all_correct_primary_judge`` (the whole set, and its seen / unseen parts)."""
    for block, mask in ((res, [True] * len(oj_ok)), (res.get("unseen"), unseen),
                        (res.get("seen"), [not u for u in unseen])):
        if not block or "all_correct" not in block:
            continue
        block["all_correct_primary_judge"] = block.pop("all_correct")
        block["all_correct"] = round(float(np.mean([o for o, m in zip(oj_ok, mask) if m])), 4)


def _compositional_block(pipe, judge, objjudge, singles, cases, wording: str, n_per_prompt: int,  # noqa: ANN001
                         steps: int, guidance: float, seed: int, batch: int,
                         layout: bool = False, wrap=None) -> tuple[dict, dict[str, np.ndarray]]:  # noqa: ANN001
    """Generate and score every category in one wording ("template" or "paraphrase"). Returns the
    metrics and, per headline key, the per-prompt success rates (for intervals and paired gaps)."""
    res: dict = {}
    per: dict[str, np.ndarray] = {}
    texts = [(p if wording == "template" else para) for p, para, _, _ in singles]
    labels = [lab for _, _, lab, _ in singles]
    rep = [t for t in texts for _ in range(n_per_prompt)]
    lab_rep = [lab for lab in labels for _ in range(n_per_prompt)]
    x = _images(pipe, rep, steps, guidance, seed, batch, _OFFSETS["single"], layout, wrap)
    preds = M.judge_predict(judge, x)
    res.update(_score(preds, lab_rep, [True] * len(rep)))
    unseen = [u for _, _, _, u in singles for _ in range(n_per_prompt)]
    res["unseen"] = _score(preds, lab_rep, unseen)
    res["seen"] = _score(preds, lab_rep, [not u for u in unseen])
    ok = [all(preds[a][i] == lab_rep[i][a] for a in SCORED) for i in range(len(rep))]
    per["all_correct_primary_judge"] = _per_prompt(ok, n_per_prompt)
    sj, oj_ok = _objjudge_single(objjudge, x, lab_rep, n_per_prompt)
    _headline_all_correct(res, oj_ok, unseen)
    res["single_objjudge"] = sj
    per["all_correct"] = _per_prompt(oj_ok, n_per_prompt)
    res["single_judges_agree"] = round(float(np.mean([a == b for a, b in zip(oj_ok, ok)])), 4)
    detail: dict[str, dict] = {}
    for cat in ("pair", "pair_full", "relation"):
        cs = [c for c in cases if c.category == cat]
        if not cs:
            continue
        rep = [(c.prompt if wording == "template" else c.paraphrase) for c in cs for _ in range(n_per_prompt)]
        x = _images(pipe, rep, steps, guidance, seed, batch, _OFFSETS[cat], layout, wrap)
        reads = read_scenes(objjudge, x)
        scores = [score_case(c, dets) for c, (_, dets) in zip([c for c in cs for _ in range(n_per_prompt)], reads)]
        d = {k: round(float(np.mean([s[k] for s in scores])), 4) for k in scores[0]}
        d["mean_objects_detected"] = round(float(np.mean([len(dets) for _, dets in reads])), 3)
        d["background_acc"] = round(float(np.mean([bg == c.background for c, (bg, _) in
                                                   zip([c for c in cs for _ in range(n_per_prompt)], reads)])), 4)
        d["n"] = len(rep)
        if cat == "relation":
            rel_rep = [c.relation for c in cs for _ in range(n_per_prompt)]
            d["by_relation"] = {r: round(float(np.mean([s["relative_position"] for s, rr in zip(scores, rel_rep)
                                                        if rr == r])), 4) for r in g.RELATIONS}
        detail[cat] = d
        for k in scores[0]:
            key = f"{k}_acc"
            if key in _HEADLINE:
                res[key] = d[k]
                per[key] = _per_prompt([s[k] for s in scores], n_per_prompt)
    res["categories"] = detail
    for k in _HEADLINE:
        if k in per:
            res[k.replace("_acc", "") + "_ci" if k.endswith("_acc") else k + "_ci"] = _ci(per[k])
    return res, per


def evaluate_compositional(pipe, judge, objjudge, n_per_prompt: int = 2, steps: int = 20,  # noqa: ANN001
                           guidance: float = DEFAULT_GUIDANCE, seed: int = 0, batch: int = 16,
                           paraphrase: bool = True, singles_n: tuple[int, int] = (32, 16),
                           comp_n: tuple[int, int, int] = (48, 32, 48), layout: bool = False,
                           wrap=None) -> dict:  # noqa: ANN001
    """The compositional WorldEval: single objects (both judges; see ``_objjudge_single``),
    two objects, attribute binding and relative position (the per-object judge), each with a
    95 % bootstrap interval over prompts; with ``paraphrase`` the same scenes again in other
    words (same noise per image, so ``gap`` = template − paraphrase is a paired difference)."""
    pipe.set_progress_bar_config(disable=True)
    tok = pipe.tokenizer

    def fits(text: str) -> bool:
        return len(tok(text, verbose=False).input_ids) <= tok.model_max_length

    singles = []
    for i, (sc, u) in enumerate(single_scenes(*singles_n)):
        prng = np.random.default_rng([777, 99, i])
        para = _fitting(lambda: g.paraphrase_caption(sc, prng), fits)  # noqa: B023 - called right here
        singles.append((g.canonical_caption(sc), para, sc.labels(), u))
    cases = compositional_set(*comp_n, fits=fits)
    res, per = _compositional_block(pipe, judge, objjudge, singles, cases, "template", n_per_prompt, steps,
                                    guidance, seed, batch, layout, wrap)
    res["tokenizer"] = unknown_words(pipe.tokenizer, [s[0] for s in singles] + [c.prompt for c in cases])
    if paraphrase:
        para, per_p = _compositional_block(pipe, judge, objjudge, singles, cases, "paraphrase", n_per_prompt,
                                           steps, guidance, seed, batch, layout, wrap)
        para["tokenizer"] = unknown_words(pipe.tokenizer, [s[1] for s in singles] + [c.paraphrase for c in cases])
        para["gap"] = {k: round(float(per[k].mean() - per_p[k].mean()), 4) for k in per}
        para["gap_ci"] = {k: _ci(np.stack([per[k], per_p[k]], 1)) for k in per}
        para["examples"] = [singles[0][1]] + [next((c.paraphrase for c in cases if c.category == cat), None)
                                              for cat in ("pair", "pair_full", "relation")]
        res["paraphrase"] = para
    res["examples"] = [singles[0][0]] + [next((c.prompt for c in cases if c.category == cat), None)
                                         for cat in ("pair", "pair_full", "relation")]
    res.update(steps=steps, guidance=guidance, n_per_prompt=n_per_prompt, seed=seed, resolution=g.SIZE,
               prompts={"single": len(singles), **{c: sum(x.category == c for x in cases)
                                                   for c in ("pair", "pair_full", "relation")}})
    return res


def _template_wording(it: dict, cat: str) -> str:
    """The request of a prompt-file item in the caption templates' wording (what the model was
    trained on), naming only the attributes the item names."""
    from engines.world.prompt_parse import ObjSpec, caption

    objs = [ObjSpec(**{k: o.get(k) for k in ("shape", "color", "size", "style", "position")}) for o in it["objects"]]
    bg = f" on a {it['background']} background" if it.get("background") else ""
    if cat == "single":
        return caption(objs[0], it.get("background"))
    if cat == "pair":
        return " and ".join(caption(o, None) for o in objs) + bg
    return f"{caption(objs[0], None)} {g.RELATION_PHRASES[it['relation']]} {caption(objs[1], None)}{bg}"


def _file_successes(it: dict, cat: str, bg: str, dets: list[Detection]) -> dict[str, bool]:
    objs = [{k: v for k, v in o.items() if v is not None} for o in it["objects"]]
    out: dict[str, bool] = {}
    if cat == "single":
        out["all_named_correct"] = it.get("background") in (None, bg) and any(_matches(d, objs[0]) for d in dets)
        for k, v in objs[0].items():
            out[f"{k}_acc"] = any(d.get(k) == v and (k == "shape" or d.get("shape") == objs[0]["shape"]) for d in dets)
        return out
    sc = [{k: o[k] for k in ("shape", "color")} for o in objs]
    if cat == "pair":
        out["two_object_acc"] = pair_found(dets, {"shape": sc[0]["shape"]}, {"shape": sc[1]["shape"]})
        out["attribute_binding_acc"] = pair_found(dets, *sc)
        out["attribute_binding_named_acc"] = pair_found(dets, *[{k: v for k, v in o.items() if k != "position"}
                                                                 for o in objs])
    else:
        out["relative_position_acc"] = pair_found(dets, *sc, it["relation"])
        out["relation_objects_found"] = pair_found(dets, *sc)
    return out


def evaluate_prompt_file(pipe, objjudge, path: Path, n_per_prompt: int = 2, steps: int = 20,  # noqa: ANN001
                         guidance: float = DEFAULT_GUIDANCE, seed: int = 0, batch: int = 16,
                         layout: bool = False, wrap=None) -> dict:  # noqa: ANN001
    """Score prompts written elsewhere (``tests/data/world_prompts_heldout*.json``: wording
    independent of the caption templates and of the paraphrase generator) with the per-object
    judge, and the same requests in the templates' wording from the same noise: ``gap`` =
    template − file wording, a paired difference with its bootstrap interval ("prompts in other
    words must work as well as the templates"). JSON: {"single"|"pair"|"relation": [{"prompt",
    "objects": [{attr: value}], "background", "relation"?}]}; only named attributes are scored.

    - single ``all_named_correct``: some detected object has every named attribute (and the
      background, if named, is right); per attribute ``<attr>_acc``;
    - pair ``two_object_acc`` (both shapes), ``attribute_binding_acc`` (shape + colour of each),
      ``attribute_binding_named_acc`` (every named attribute of each);
    - relation ``relative_position_acc`` (both objects by shape + colour, and the relation)."""
    data = json.loads(Path(path).read_text())
    out: dict = {"file": str(path), "layout": layout}
    offsets = {"single": 40_000, "pair": 50_000, "relation": 60_000}
    heads = {"single": "all_named_correct", "pair": "attribute_binding_acc", "relation": "relative_position_acc"}
    for cat in ("single", "pair", "relation"):
        items = data.get(cat) or []
        if not items:
            continue
        rep = [it for it in items for _ in range(n_per_prompt)]
        runs = {}
        for wording, texts in (("file", [it["prompt"] for it in rep]),
                               ("template", [_template_wording(it, cat) for it in rep])):
            x = _images(pipe, texts, steps, guidance, seed, batch, offsets[cat], layout, wrap)
            runs[wording] = [_file_successes(it, cat, bg, dets) for it, (bg, dets) in zip(rep, read_scenes(objjudge, x))]
        block: dict = {}
        for k in sorted({k for s in runs["file"] for k in s}):
            idx = [i for i, s in enumerate(runs["file"]) if k in s]
            v = [runs["file"][i][k] for i in idx]
            block[k] = round(float(np.mean(v)), 4)
            if len(idx) == len(rep):
                per_f = _per_prompt(v, n_per_prompt)
                per_t = _per_prompt([runs["template"][i][k] for i in idx], n_per_prompt)
                block[k + "_ci"] = _ci(per_f)
                if k == heads[cat]:
                    block["template_" + k] = round(float(per_t.mean()), 4)
                    block["gap"] = round(float(per_t.mean() - per_f.mean()), 4)
                    block["gap_ci"] = _ci(np.stack([per_t, per_f], 1))
        block["n"] = len(rep)
        out[cat] = block
    return out


def quick_eval(pipe, judge_path: Path | None = None, prompts=None) -> dict:  # noqa: ANN001
    """The cheap version used during training to pick the best checkpoint (no timing).
    ``judge_path``: a judge dir (default: the shipped judge); ``prompts``: default ``prompt_set()``."""
    judge = M.load_judge(judge_path or judge_dir())
    return evaluate_pipeline(pipe, judge, n_per_prompt=1, steps=20, guidance=DEFAULT_GUIDANCE, seed=1,
                             batch=48, time_images=0, prompts=prompts)


# ---------------------------------------------------------------- judge and autoencoder gates

@torch.no_grad()
def judge_accuracy(model: M.Judge, n: int, seed: int, transform=None) -> dict[str, float]:  # noqa: ANN001
    """Per-attribute accuracy on ``n`` fresh single-object images (split "all")."""
    ss = list(g.samples(seed, n, "all"))
    x = to_tensor(np.stack([s.image for s in ss]))
    if transform is not None:
        x = transform(x)
    pred = M.judge_predict(model, x)
    return {h: round(float(np.mean([p == s.labels[h] for p, s in zip(pred[h], ss)])), 4) for h in M.Judge.HEADS}


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    return 10 * math.log10(1.0 / max(mse, 1e-10))


@torch.no_grad()
def reconstruct(vae, x: torch.Tensor, batch: int = 128) -> torch.Tensor:  # noqa: ANN001
    """(N, 3, 64, 64) in [0, 1] -> reconstructions via the posterior mean."""
    outs = []
    for i in range(0, len(x), batch):
        z = vae.encode(x[i:i + batch] * 2 - 1).latent_dist.mean
        outs.append(((vae.decode(z).sample + 1) / 2).clamp(0, 1))
    return torch.cat(outs)


def recon_gate(vae, n: int = 1000, seed: int = 4242, judge_path: Path | None = None) -> dict:  # noqa: ANN001
    """Judge accuracy on VAE reconstructions of fresh real images; passes if every scored
    attribute is read at ≥ 0.95. ``judge_path``: a judge dir (default: the shipped judge)."""
    judge = M.load_judge(judge_path or judge_dir())
    acc = judge_accuracy(judge, n, seed, transform=lambda x: reconstruct(vae, x))
    ss = list(g.samples(seed, min(n, 512), "all"))
    x = to_tensor(np.stack([s.image for s in ss]))
    p = psnr(reconstruct(vae, x), x)
    # The gate (issue 3) is the judge reading every scored attribute at ≥ 95 %; the 30 dB PSNR
    # target is reported beside it (size is not a scored attribute).
    return {"accuracy": acc, "psnr_db": round(p, 2), "psnr_target_met": p >= 30.0, "n": n,
            "passed": bool(all(v >= 0.95 for k, v in acc.items() if k != "size"))}


def clock_wrap(mdir: Path, mode: str, setting: dict, regional: dict | None = None):  # noqa: ANN201
    """(unet, regional) -> a fresh Clockwork context for a profile setting (``choose_setting``'s
    form) as a t2i job runs it — ``regional`` (if given) for calls that draw an image region by
    region; the ``wrap`` of ``_images``."""
    from engines.pipelines.clockwork import Clockwork, load_adaptor

    adaptors: dict[str, object] = {}

    def make(unet, is_regional: bool = False):  # noqa: ANN001, ANN202
        s = regional if (is_regional and regional is not None) else setting
        adaptor = None
        if mode == "adaptor":
            name = s.get("adaptor") or "clockwork_adaptor.safetensors"
            if name not in adaptors:
                adaptors[name] = load_adaptor(mdir / name)
            adaptor = adaptors[name]
        return Clockwork(unet, s["period"] or 2, mode, adaptor, depth=int(s.get("depth", 1)),
                         warmup=int(s.get("warmup", 0)))
    return make


def auto_clock(mdir: Path, steps: int, sampler: str = "DPM++ 2M") -> tuple[str, dict | None, dict | None]:
    """What a t2i job with ``clockwork=auto`` (the default) runs on this model without adapters:
    (mode, setting for images of one object, setting for images drawn region by region) from the
    model's measured profile (regional: period 1, in full, where the profile has none), or
    ("off", None, None)."""
    from engines.base import ModelSpec
    from engines.pipelines import model_hash
    from engines.pipelines.clockwork import auto_setting

    try:
        prof = json.loads((mdir / "clockwork_profile.json").read_text())
    except (OSError, ValueError):
        return "off", None, None
    if not isinstance(prof, dict) or prof.get("model_hash") != model_hash(ModelSpec(ref="eval", kind="diffusers",
                                                                                    path=mdir)):
        return "off", None, None
    return auto_setting(prof, sampler, steps,
                        lambda name: (mdir / (name or "clockwork_adaptor.safetensors")).is_file()) or ("off", None, None)


def load_pipeline(model_dir: Path | None = None, device: str = "cpu"):  # noqa: ANN201
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(model_dir or default_model_dir()), local_files_only=True,
                                                   safety_checker=None, requires_safety_checker=False)
    return pipe.to(device)


def run_eval(model_dir: Path | None = None, n_per_prompt: int = 2, steps: int = 20,
             guidance: float = DEFAULT_GUIDANCE, seed: int = 0, device: str = "cpu", compositional: bool = True,
             paraphrase: bool = True, singles_n: tuple[int, int] = (32, 16),
             comp_n: tuple[int, int, int] = (48, 32, 48), layout: bool = False,
             prompt_file: Path | None = None, clockwork: str = "off") -> dict:
    """WorldEval on a StableDiffusionPipeline dir (default: the shipped embedded model).
    48 single-object prompts (16 unseen combinations) × ``n_per_prompt`` images at 64×64; with
    ``compositional`` also the two-object / binding / relation prompts (``compositional_set``)
    and, with ``paraphrase``, all of them again in other words. ``clockwork="auto"`` runs every
    image under the model's measured quality-holding Clockwork setting, as a t2i job does by
    default (``"off"``: every step in full); the times are then reported both ways."""
    t = time.time()
    mdir = Path(model_dir or default_model_dir())
    mode, setting, regional = auto_clock(mdir, steps) if clockwork == "auto" else ("off", None, None)
    wrap = clock_wrap(mdir, mode, setting, regional) if setting is not None else None
    pipe = load_pipeline(model_dir, device)
    judge = M.load_judge(judge_dir(), device)
    if compositional:
        objjudge = load_objjudge(judge_dir(), device)
        res = evaluate_compositional(pipe, judge, objjudge, n_per_prompt, steps, guidance, seed,
                                     paraphrase=paraphrase, singles_n=singles_n, comp_n=comp_n, layout=layout,
                                     wrap=wrap)
        timed = [("", res["examples"][0])] + ([("_two_objects", res["examples"][1])] if layout else [])
        for suffix, text in timed:  # two regions: one more U-Net row per step
            res[f"seconds_per_image{suffix}"] = seconds_per_image(pipe, [text], steps, guidance, seed,
                                                                  layout=layout, wrap=wrap)
            if wrap is not None:
                res[f"seconds_per_image{suffix}_clockwork_off"] = seconds_per_image(pipe, [text], steps, guidance,
                                                                                    seed, layout=layout)
        if prompt_file is not None:
            res["prompt_file"] = evaluate_prompt_file(pipe, objjudge, prompt_file, n_per_prompt, steps, guidance,
                                                      seed, layout=layout, wrap=wrap)
        res["scored_object"] = ("single: all_correct by the per-object judge (objjudge; the primary judge's as "
                                "all_correct_primary_judge, per-attribute *_acc and overall); compositional: "
                                "per-object judge")
    else:
        res = evaluate_pipeline(pipe, judge, n_per_prompt, steps, guidance, seed,
                                prompts=prompt_set(*singles_n), wrap=wrap,
                                objjudge=load_objjudge(judge_dir(), device))
    res["clockwork"] = {"requested": clockwork, "mode": mode, "single": setting, "regional": regional}
    res["model_dir"] = str(model_dir or default_model_dir())
    res["layout"] = "auto" if layout else "off"
    res["wall_seconds"] = round(time.time() - t, 1)
    return res


def recon_eval(vae_dir: Path | None = None, n: int = 1000, seed: int = 4242) -> dict:
    """The autoencoder gate: judge accuracy on VAE reconstructions of fresh real images (all
    attributes must be ≥ 0.95) and reconstruction PSNR. Default VAE: the shipped model's."""
    from diffusers import AutoencoderKL

    path = Path(vae_dir) if vae_dir else default_model_dir() / "vae"
    vae = AutoencoderKL.from_pretrained(str(path), local_files_only=True).eval()
    res = recon_gate(vae, n=n, seed=seed)
    res["vae_dir"] = str(path)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engines.world.eval", description="WorldEval: prints one JSON object")
    ap.add_argument("--model", type=Path, default=None, help="StableDiffusionPipeline dir (default: shipped)")
    ap.add_argument("--n-per-prompt", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", action="store_true", help="accepted for CLI symmetry; output is always JSON")
    ap.add_argument("--recon", action="store_true", help="also run the VAE reconstruction gate")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (1 is fastest for this tiny model at batch 1: ~0.5 s/image)")
    ap.add_argument("--single-only", action="store_true",
                    help="only the 48 single-object prompts (the pre-compositional eval, ~1 min)")
    ap.add_argument("--no-paraphrase", action="store_true", help="skip the paraphrased prompt set")
    ap.add_argument("--prompts", type=int, nargs=5, default=(32, 16, 48, 32, 48),
                    metavar=("SEEN", "UNSEEN", "PAIR", "PAIR_FULL", "RELATION"),
                    help="prompt counts per set (default 32 16 48 32 48)")
    ap.add_argument("--layout", choices=("auto", "off"), default="auto",
                    help="auto (what the t2i engine does for the embedded model): read each prompt into objects "
                         "and draw them region by region; off: the prompt goes to the text encoder as typed")
    ap.add_argument("--clockwork", choices=("auto", "off"), default="auto",
                    help="auto (a t2i job's default): every image under the model's measured quality-holding "
                         "Clockwork setting, where its profile has one; off: every step in full")
    ap.add_argument("--prompt-file", type=Path, default=None,
                    help="also score prompts from this JSON (e.g. tests/data/world_prompts_heldout.json)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    res = run_eval(args.model, args.n_per_prompt, args.steps, args.guidance, args.seed, args.device,
                   compositional=not args.single_only, paraphrase=not args.no_paraphrase,
                   singles_n=tuple(args.prompts[:2]), comp_n=tuple(args.prompts[2:]), layout=args.layout == "auto",
                   prompt_file=args.prompt_file, clockwork=args.clockwork)
    if args.recon:
        res["recon"] = recon_eval(args.model / "vae" if args.model else None)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
