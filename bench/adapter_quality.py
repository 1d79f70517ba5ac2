"""Adapter quality on the embedded model, judged by the world judge, over several training seeds.

    studio bench adapters --quality-only --json [--seeds 0 1 2 3 4] [--steps 100] [--pairs ...]
        [--modes sum mix-ready composite mix-ready-composite] [--methods lora shira foura] [--cache DIR]

Concepts the base model does not have are new words for things the judge can read: colour words
("zindle" = cyan, "plome" = pink), subject words ("blicket" = star, "wug" = heart) and a style word
("stripez" = striped). Each is learned by one adapter per method and training seed through the
Studio's own ``adapter-train`` engine, from a folder of 32 world images with .txt captions (the
path a user's dataset takes). Generation goes through the t2i engine's ``apply_adapters`` in fused
mode, the path a user's mix takes. Pairs: two colour words, colour + style, two subject words,
subject + style.

- retention of a pair: fuse both adapters (weight 1 each), prompt each trigger; the judge reads
  the concept's attribute. With c = mean judge probability of the concept's value,
  retention = (c_mix − c_base) / (c_alone − c_base): the share of the adapter's effect that
  survives fusing the other one (1.0 = nothing lost), averaged over the pair's concepts that were
  learned: a concept whose adapter alone moves the judge by less than ``MIN_GAIN`` has nothing to
  retain (null), and then the pair's figure is the other concept's retention beside it.
- mixing modes: ``sum`` (the baseline: adapters trained alone, deltas summed) and ``mix-ready``
  (adapters trained with ``preserve``: part of each batch has the trigger swapped for made-up
  words and the base model's own prediction as target, so each adapter acts on its trigger only);
  ``composite`` and ``mix-ready-composite``: the same adapters (no retraining) mixed as t2i's
  ``adapter_mode=composite`` does (``engines.adapters.composite``: each adapter runs alone, the
  effects are added in ε-space; n + 1 U-Net passes per step).
- ``high_strength[method]``: the first concept's adapter alone at weight 1 and ``--high`` (2.0):
  ``diversity`` = mean pairwise RMS pixel distance between seeds of one prompt, ``nn_train_ratio``
  = mean distance of each image to its nearest training image over the same figure for fresh
  real images (< 1: closer to the training set than new data is — copying), ``content_acc``.
Every figure is the mean over training seeds with a 95 % t interval; method and mode
comparisons are paired by seed (same data order, noise and timesteps) and called only when the
interval of the difference excludes 0. Everything is seeded: the same command prints the same
numbers. Adapters and scores are cached under ``--cache`` keyed by model weights and recipe.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.stats import mean_ci

RECIPE = "v2"  # bump when training or scoring changes, so cached results are not reused
CONCEPTS: dict[str, tuple[str, str]] = {  # new word -> (judge attribute, the value it means)
    "zindle": ("color", "cyan"), "plome": ("color", "pink"),
    "blicket": ("shape", "star"), "wug": ("shape", "heart"),
    "stripez": ("style", "striped"),
}
PAIRS: dict[str, tuple[str, str]] = {
    "colour+colour": ("zindle", "plome"), "colour+style": ("zindle", "stripez"),
    "subject+subject": ("blicket", "wug"), "subject+style": ("blicket", "stripez"),
}
# mixing mode -> (training ``preserve``, how the pair is mixed: fused sum or composite)
MODES: dict[str, tuple[float, str]] = {"sum": (0.0, "fused"), "mix-ready": (0.5, "fused"),
                                       "composite": (0.0, "composite"), "mix-ready-composite": (0.5, "composite")}
CONTENT = ("shape", "background", "position")
N_TRAIN = 32
CACHE = Path(".cache/bench-adapters")
QUALITY_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "time_emb_proj"]
MIN_GAIN = 0.2  # an adapter that moves the judge less than this alone has no concept to retain
def compare(a: list[float | None], b: list[float | None]) -> dict[str, Any]:
    """Paired difference a − b over seeds where both exist; ``verdict`` says what the interval allows."""
    d = [x - y for x, y in zip(a, b) if x is not None and y is not None]
    r = mean_ci(d)
    if r["ci95"] is None:
        verdict = "not enough seeds"
    elif r["mean"] - r["ci95"] > 0:
        verdict = "higher"
    elif r["mean"] + r["ci95"] < 0:
        verdict = "lower"
    else:
        verdict = "no difference measured"
    return r | {"verdict": verdict}


def _model_key(model_dir: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(model_dir.rglob("*.safetensors")):
        if f.name.startswith("clockwork"):
            continue
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def matched_density(unet: torch.nn.Module, rank: int, targets: list[str]) -> float:
    """SHiRA density with the parameter count of a rank-``rank`` LoRA on the same linears."""
    from engines.adapters.shira import target_linears

    lins = target_linears(unet, targets)
    lora = sum(rank * (m.in_features + m.out_features) for m in lins.values())
    return lora / sum(m.weight.numel() for m in lins.values())


def concept_caption(scene: Any, word: str) -> str:
    """The plain world caption with ``word`` in the slot of its concept's attribute
    ("a small zindle star top left …", "a small red blicket …", "a small red stripez star …")."""
    from engines.world import generator as g

    attr, _ = CONCEPTS[word]
    o = scene.primary
    pos = g._POS_WORDS[o.position][0]
    core = {"color": f"{word} {o.shape}", "shape": f"{o.color} {word}", "style": f"{o.color} {word} {o.shape}"}[attr]
    return f"a {o.size} {core} {pos} on a {scene.background} background"


@functools.lru_cache(maxsize=32)
def concept_images(word: str, n: int, seed: int) -> list[tuple[np.ndarray, str, dict[str, str]]]:
    """World images of single objects showing the concept (solid unless the concept is a style),
    captioned with ``word`` in place of the attribute's name. Memoised: rejection sampling
    renders ~40 scenes per kept one, which dominated short runs (callers do not mutate it)."""
    from engines.world import generator as g

    attr, value = CONCEPTS[word]
    out, i = [], 0
    while len(out) < n:
        s = g.make_sample(seed=seed, index=i)
        i += 1
        o = s.scene.primary
        if len(s.scene.objects) == 1 and getattr(o, attr) == value and (attr == "style" or o.style == "solid"):
            out.append((s.image, concept_caption(s.scene, word), s.scene.labels()))
    return out


def write_dataset(word: str) -> Path:
    """A folder of PNGs + .txt captions, as a user would hand the trainer (written atomically)."""
    from PIL import Image

    folder = CACHE / "data" / f"{word}-{RECIPE}"
    if not folder.is_dir():
        tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        for k, (im, cap, _) in enumerate(concept_images(word, N_TRAIN, seed=11)):
            Image.fromarray(im).save(tmp / f"{k:03d}.png")
            (tmp / f"{k:03d}.txt").write_text(cap)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished it first
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def train_adapter(model_dir: Path, method: str, dataset: Path, trigger: str, seed: int, args: argparse.Namespace,
                  density: float, model_key: str, preserve: float = 0.0) -> tuple[Path, dict[str, Any]]:
    """Train (or reuse from the cache) one adapter through the ``adapter-train`` engine.
    ``model_key`` (``_model_key(model_dir)``) is hashed once per run by the caller."""
    from engines.adapters.engine import AdapterTrainEngine
    from engines.adapters.params import AdapterTrainParams
    from engines.base import EngineContext, ModelSpec

    lr = {"lora": args.lr_lora, "shira": args.lr_shira, "foura": args.lr_foura}[method]
    own = {"density": round(density, 5), "mask_type": args.mask} if method == "shira" else {"rank": args.q_rank}
    p = AdapterTrainParams.model_validate(dict(
        model="embedded", dataset=str(dataset), method=method, trigger=trigger, targets=args.targets,
        preserve=preserve, steps=args.steps, learning_rate=lr, batch_size=args.batch, seed=seed, sample_every=0,
        name=f"{method}-{trigger}", **own)).root  # the per-method params (LoRA/FouRA: rank; SHiRA: density, mask)
    key = hashlib.sha256((RECIPE + model_key + p.model_dump_json(exclude={"dataset"})).encode()).hexdigest()[:16]
    dest = CACHE / f"{method}-{trigger}-{key}.safetensors"
    info_path = dest.with_suffix(".json")
    if dest.is_file() and info_path.is_file():
        return dest, json.loads(info_path.read_text())
    work = CACHE / f"work-{key}-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    ctx = EngineContext(work_dir=work, resolve_model=lambda ref: ModelSpec(ref, "diffusers", model_dir))
    t0 = time.perf_counter()
    res = AdapterTrainEngine().run(p, ctx)
    art = next(a for a in res.artifacts if a.kind == "adapter")
    info = {"seconds": round(time.perf_counter() - t0, 1), "final_loss": round(res.meta["final_loss"], 5),
            "params": _n_params(art.path, method), "lr": lr, "steps": args.steps, "seed": seed, "preserve": preserve,
            "rank": args.q_rank if method != "shira" else None, "density": getattr(p, "density", None),
            "key": key}
    shutil.move(str(art.path), dest)
    info_path.write_text(json.dumps(info))
    shutil.rmtree(work, ignore_errors=True)
    return dest, info


def _n_params(path: Path, method: str) -> int:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
        if method == "shira":
            return sum(f.get_slice(k).get_shape()[0] for k in keys if k.endswith(".val"))
        if method == "foura":  # A and B only, as for LoRA (the small gate MLP is not fused)
            keys = [k for k in keys if k.endswith((".down.weight", ".up.weight"))]
        return int(sum(np.prod(f.get_slice(k).get_shape()) for k in keys if "alpha" not in k))


def eval_prompts(word: str, n: int, seed: int) -> list[tuple[str, dict[str, str]]]:
    """Fresh single-object scenes showing the concept, captioned with ``word`` (labels hold the
    real value). Colour words: every third uses the shape held out with that colour from all
    training (base and adapter)."""
    from engines.world import generator as g

    attr, value = CONCEPTS[word]
    held = sorted(s for s, c in g.HELDOUT if c == value) if attr == "color" else []
    out = []
    rng = np.random.default_rng(seed)
    for i in range(n):
        sc = g.sample_scene(rng, "train", 0.0)
        o = replace(sc.primary, **({"style": "solid"} | {attr: value}))
        if held and i % 3 == 2:
            o = replace(o, shape=held[0])
        sc = replace(sc, objects=(o,))
        out.append((concept_caption(sc, word), sc.labels()))
    return out


class Generator:
    """The embedded pipeline through the t2i engine's loader and adapter path."""

    def __init__(self, model_dir: Path, steps: int, guidance: float) -> None:
        from engines.base import EngineContext, ModelSpec
        from engines.pipelines import load_pipeline
        from engines.world import models as M
        from engines.world.paths import judge_dir

        self.loaded = load_pipeline(ModelSpec("embedded", "diffusers", model_dir), "cpu", "float32")
        self.loaded.pipe.set_progress_bar_config(disable=True)
        self.judge = M.load_judge(judge_dir())
        self.ctx = EngineContext(work_dir=CACHE)
        self.steps, self.guidance = steps, guidance
        self.n_images = 0

    def images(self, mix: list[tuple[Path, float]], prompts: list[str], seed: int = 0,
               mixing: str = "fused") -> torch.Tensor:
        """(N, 3, 64, 64) in [0, 1] with ``mix`` fused (or, ``mixing="composite"`` with 2+
        adapters, composed in ε-space as t2i's ``adapter_mode=composite``); undone afterwards."""
        from engines.adapters.apply import AdapterUse, apply_adapters
        from engines.adapters.composite import CompositeMix
        from engines.world.eval import _images

        uses = [AdapterUse(Path(p), w) for p, w in mix]
        if mixing == "composite" and len(uses) > 1:
            with CompositeMix(self.loaded, uses), torch.inference_mode():
                x = _images(self.loaded.pipe, prompts, self.steps, self.guidance, seed, batch=16)
            self.n_images += len(prompts)
            return x
        _, _, undo = apply_adapters(self.loaded, uses, "fused")
        try:
            with torch.inference_mode():
                x = _images(self.loaded.pipe, prompts, self.steps, self.guidance, seed, batch=16)
        finally:
            undo()
        self.n_images += len(prompts)
        return x

    def score(self, x: torch.Tensor, labels: list[dict[str, str]], attr: str, value: str) -> dict[str, float]:
        """``concept``: mean judge probability of the concept's value; ``concept_acc``: its argmax
        rate; ``content_acc``: shape, background and position read as prompted (the concept's
        own attribute excluded)."""
        from engines.world import generator as g
        from engines.world import models as M

        with torch.inference_mode():
            preds = M.judge_predict(self.judge, x)
            p = M.judge_probs(self.judge, x, attr)[:, g.ATTRIBUTES[attr].index(value)]
        content = float(np.mean([[preds[a][i] == lab[a] for a in CONTENT if a != attr] for i, lab in enumerate(labels)]))
        return {"concept": round(float(p.mean()), 4),
                "concept_acc": round(float(np.mean([c == value for c in preds[attr]])), 4),
                "content_acc": round(content, 4)}


def _rms(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise RMS distance [len(a), len(b)] between image sets (N, 3, H, W) in [0, 1]."""
    return torch.cdist(a.flatten(1), b.flatten(1)) / (a[0].numel() ** 0.5)


def high_strength(gen: Generator, path: Path, word: str, weights: list[float], n_prompts: int,
                  n_seeds: int) -> dict[str, Any]:
    """Diversity across seeds and closeness to the training images, at each adapter weight."""
    def stack(items: list) -> torch.Tensor:  # (N, 3, 64, 64) in [0, 1]
        return torch.stack([torch.from_numpy(im.astype(np.float32) / 255).permute(2, 0, 1) for im, _, _ in items])

    attr, value = CONCEPTS[word]
    train = stack(concept_images(word, N_TRAIN, seed=11))  # the adapter's training set
    fresh = stack(concept_images(word, N_TRAIN, seed=99))  # new real images of the concept
    real_nn = float(_rms(fresh, train).min(1).values.mean())
    ps = eval_prompts(word, n_prompts, seed=4321)
    prompts = [p for p, _ in ps for _ in range(n_seeds)]
    labels = [lab for _, lab in ps for _ in range(n_seeds)]
    out: dict[str, Any] = {"real_nn_rms": round(real_nn, 4)}
    for w in weights:
        x = gen.images([(path, w)], prompts, seed=5)  # (P*S, 3, 64, 64); each image index has its own seed
        div = []
        for k in range(n_prompts):
            xs = x[k * n_seeds:(k + 1) * n_seeds]
            div.append(float(_rms(xs, xs).sum() / (n_seeds * (n_seeds - 1))))
        nn = float(_rms(x, train).min(1).values.mean())
        out[str(w)] = {"diversity": round(float(np.mean(div)), 4), "nn_train_rms": round(nn, 4),
                       "nn_train_ratio": round(nn / real_nn, 3)} | gen.score(x, labels, attr, value)
    return out


class _Scores:
    """Judge scores cached on disk by (recipe, model, mix, concept, eval settings): generating is
    most of the bench's time, and parallel runs over different seeds share the cache."""

    def __init__(self, gen: Generator, args: argparse.Namespace, model_key: str) -> None:
        self.gen, self.args, self.model_key = gen, args, model_key
        self.dir = CACHE / "scores"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.prompts = {w: eval_prompts(w, args.n_prompts, seed=1000 + k) for k, w in enumerate(CONCEPTS)}

    def __call__(self, mix: list[tuple[Path, float]], word: str, mixing: str = "fused") -> dict[str, float]:
        def compute() -> dict[str, float]:
            ps = self.prompts[word]
            x = self.gen.images(mix, [p for p, _ in ps], mixing=mixing)
            return self.gen.score(x, [lab for _, lab in ps], *CONCEPTS[word])

        composite = mixing == "composite" and len(mix) > 1
        what = [[(p.name, w) for p, w in mix], word, self.args.n_prompts] + (["composite"] if composite else [])
        return self.cached(what, compute)

    def cached(self, what: list, compute: Any) -> Any:
        key = hashlib.sha256(json.dumps([RECIPE, self.model_key, self.args.sample_steps, self.args.guidance] + what)
                             .encode()).hexdigest()[:20]
        f = self.dir / f"{key}.json"
        if f.is_file():
            return json.loads(f.read_text())
        res = compute()
        tmp = f.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(res))
        os.replace(tmp, f)
        return res


def _retention(mixed: float, alone: float, base: float) -> float | None:
    gain = alone - base
    return None if gain < MIN_GAIN else (mixed - base) / gain


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole quality bench; ``--cache`` redirects the cache for this run only."""
    global CACHE
    old = CACHE
    CACHE = Path(args.cache) if getattr(args, "cache", None) else old
    try:
        return _run(args)
    finally:
        CACHE = old


def _run(args: argparse.Namespace) -> dict[str, Any]:
    from engines.world.paths import default_model_dir

    t0 = time.perf_counter()
    model_dir = Path(args.model) if args.model else default_model_dir()
    CACHE.mkdir(parents=True, exist_ok=True)
    gen = Generator(model_dir, args.sample_steps, args.guidance)
    density = args.q_density or matched_density(gen.loaded.pipe.unet, args.q_rank, args.targets)
    model_key = _model_key(model_dir)
    pairs = {k: PAIRS[k] for k in args.pairs}
    words = list(dict.fromkeys(w for pr in pairs.values() for w in pr))
    score = _Scores(gen, args, model_key)
    base = {w: score([], w) for w in words}
    train_info: dict[str, Any] = {}
    # per (mode, method): per-seed lists
    alone_c: dict[str, dict[str, dict[str, list]]] = {}
    ret: dict[str, dict[str, dict[str, list]]] = {}
    ret_c: dict[str, dict[str, dict[str, list]]] = {}
    detail: dict[str, Any] = {}
    first: dict[str, list[Path]] = {m: [] for m in args.methods}
    for s in args.seeds:  # seed-major: a run cut short still has whole seeds
        for mode in args.modes:
            for m in args.methods:
                files = {}
                for w in words:
                    seed = 100 * s + list(CONCEPTS).index(w)  # distinct per concept: SHiRA masks differ
                    files[w], info = train_adapter(model_dir, m, write_dataset(w), w, seed, args, density, model_key,
                                                   MODES[mode][0])
                    train_info[f"{mode}/{m}/{w}/{s}"] = info
                if mode == args.modes[0] and words:
                    first[m].append(files[words[0]])
                alone = {w: score([(files[w], 1.0)], w) for w in words}
                for w in words:
                    alone_c.setdefault(mode, {}).setdefault(m, {}).setdefault(w, []).append(
                        alone[w]["concept"] - base[w]["concept"])
                for pname, pr in pairs.items():
                    mix = [(files[w], 1.0) for w in pr]
                    rs = {}
                    for w in pr:
                        mixed = score(mix, w, MODES[mode][1])
                        rs[w] = _retention(mixed["concept"], alone[w]["concept"], base[w]["concept"])
                        ret_c.setdefault(mode, {}).setdefault(m, {}).setdefault(f"{pname}/{w}", []).append(rs[w])
                        detail.setdefault(mode, {}).setdefault(m, {}).setdefault(pname, {}).setdefault(w, []).append(
                            {"seed": s, "alone": alone[w], "mixed": mixed,
                             "retention": None if rs[w] is None else round(rs[w], 3)})
                    ok = [v for v in rs.values() if v is not None]  # concepts the adapters did learn
                    r = float(np.mean(ok)) if ok else None
                    ret.setdefault(mode, {}).setdefault(m, {}).setdefault(pname, []).append(r)

    def over_pairs(mode: str, m: str) -> list[float | None]:
        per = list(zip(*ret[mode][m].values()))  # per seed: one retention per pair
        return [None if None in row else float(np.mean(row)) for row in per]

    retention = {mode: {m: {"pairs": {p: mean_ci(v) for p, v in ret[mode][m].items()},
                            "concepts": {c: mean_ci(v) for c, v in ret_c[mode][m].items()},
                            "mean_over_pairs": mean_ci(over_pairs(mode, m)),
                            "per_seed": [None if x is None else round(x, 3) for x in over_pairs(mode, m)]}
                     for m in args.methods} for mode in args.modes}
    gains = {mode: {m: {w: mean_ci(v) for w, v in alone_c[mode][m].items()} for m in args.methods}
             for mode in args.modes}
    comparisons: dict[str, Any] = {}
    for mode in args.modes:
        for i, a in enumerate(args.methods):
            for b in args.methods[i + 1:]:
                comparisons[f"{mode}: {a} - {b}"] = compare(over_pairs(mode, a), over_pairs(mode, b))
    for i, mode in enumerate(args.modes[1:], 1):
        for other in args.modes[:i]:  # every mode against the baseline and the modes before it
            for m in args.methods:
                comparisons[f"{m}: {mode} - {other}"] = compare(over_pairs(mode, m), over_pairs(other, m))
    # a mode only counts as "best" when its adapters learned their concepts (mean gain ≥ 0.5):
    # an adapter that barely acts also barely disturbs the other one. Concepts the method does not
    # learn even in the baseline mode (the style word, so far) do not disqualify a mode: they
    # are reported under ``not_learned`` and left out of every pair's figure already.
    def learnable(m: str, w: str) -> bool:
        g = gains[args.modes[0]][m][w]["mean"]
        return g is not None and g >= 0.5

    learned = [(mode, m) for mode in args.modes for m in args.methods
               if any(learnable(m, w) for w in gains[mode][m])
               and all(g["mean"] is not None and g["mean"] >= 0.5
                       for w, g in gains[mode][m].items() if learnable(m, w))]
    not_learned = {m: [w for w in gains[args.modes[0]][m] if not learnable(m, w)] for m in args.methods}
    best = max(learned or [(args.modes[0], args.methods[0])],
               key=lambda k: -1 if retention[k[0]][k[1]]["mean_over_pairs"]["mean"] is None
               else retention[k[0]][k[1]]["mean_over_pairs"]["mean"])
    strong: dict[str, Any] = {}
    if args.high and words:
        for m in args.methods:
            runs = [score.cached(["high", f.name, words[0], args.high, args.div_prompts, args.div_seeds],
                                 lambda f=f: high_strength(gen, f, words[0], [1.0, args.high], args.div_prompts,
                                                           args.div_seeds)) for f in first[m]]
            strong[m] = {"real_nn_rms": runs[0]["real_nn_rms"]} | {
                str(w): {k: mean_ci([r[str(w)][k] for r in runs])
                         for k in ("diversity", "nn_train_ratio", "content_acc", "concept")} for w in (1.0, args.high)}
            strong[m]["per_seed_diversity"] = {str(w): [r[str(w)]["diversity"] for r in runs] for w in (1.0, args.high)}
        for i, a in enumerate(args.methods):
            for b in args.methods[i + 1:]:
                comparisons[f"diversity@{args.high}: {a} - {b}"] = compare(
                    strong[a]["per_seed_diversity"][str(args.high)], strong[b]["per_seed_diversity"][str(args.high)])
    return {"model_dir": str(model_dir), "model_key": model_key, "recipe": RECIPE, "seeds": list(args.seeds),
            "concepts": {w: CONCEPTS[w] for w in words}, "pairs": pairs, "modes": {m: {"preserve": MODES[m][0], "mixing": MODES[m][1]} for m in args.modes},
            "eval_prompts_per_concept": args.n_prompts, "sample_steps": args.sample_steps, "guidance": args.guidance,
            "steps": args.steps, "batch": args.batch, "shira_density": round(density, 4), "shira_mask": args.mask,
            "rank": args.q_rank, "targets": args.targets,
            "concept_retention": {m: retention[args.modes[0]][m]["mean_over_pairs"]["mean"] for m in args.methods},
            "best_mode": {"mode": best[0], "method": best[1]} | retention[best[0]][best[1]]["mean_over_pairs"],
            "under_learned": [f"{mode}/{m}" for mode in args.modes for m in args.methods if (mode, m) not in learned],
            "not_learned": not_learned,
            "retention": retention, "alone_gain": gains, "comparisons": comparisons, "base": base,
            "high_strength": strong, "retention_detail": detail, "train": train_info,
            "images_generated": gen.n_images, "wall_seconds": round(time.perf_counter() - t0, 1)}


def add_args(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("quality (embedded model)")
    g.add_argument("--methods", nargs="+", default=["lora", "shira", "foura"], choices=["lora", "shira", "foura"])
    g.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    g.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES),
                   help="mixing modes; the first is the baseline the others are compared with")
    g.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4], help="training seeds (≥ 5 for intervals)")
    g.add_argument("--cache", default=None, help=f"cache folder (default {CACHE}); an empty one recomputes all")
    g.add_argument("--model", default=None, help="SD folder (default: the shipped embedded model)")
    g.add_argument("--steps", type=int, default=100, help="adapter training steps")
    g.add_argument("--q-targets", dest="targets", nargs="+", default=QUALITY_TARGETS,
                   help="adapted linears (the embedded U-Net has attention only at 8x8 and 4x4 latents; the "
                        "resnets' time-embedding projections carry the pooled text to every resolution)")
    g.add_argument("--batch", type=int, default=8, help="adapter training batch")
    g.add_argument("--mask", default="random", choices=["random", "weight", "gradient", "snip", "structured"],
                   help="SHiRA mask")
    g.add_argument("--q-rank", dest="q_rank", type=int, default=4, help="LoRA / FouRA rank")
    g.add_argument("--q-density", dest="q_density", type=float, default=None,
                   help="SHiRA density (default: LoRA's parameter count)")
    g.add_argument("--lr-lora", type=float, default=3e-3)
    g.add_argument("--lr-shira", type=float, default=3e-3)
    g.add_argument("--lr-foura", type=float, default=3e-3)
    g.add_argument("--n-prompts", type=int, default=24, help="eval prompts per concept")
    g.add_argument("--sample-steps", type=int, default=10)
    g.add_argument("--guidance", type=float, default=4.0)
    g.add_argument("--high", type=float, default=2.0, help="high adapter strength for diversity (0 = skip)")
    g.add_argument("--div-prompts", type=int, default=8)
    g.add_argument("--div-seeds", type=int, default=4)


def main(argv: list[str] | None = None) -> int:
    from bench import add_threads_arg, apply_threads

    ap = argparse.ArgumentParser(prog="python -m bench.adapter_quality")
    add_args(ap)
    add_threads_arg(ap)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    apply_threads(args)
    print(json.dumps(run(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
