"""Adapter quality on the embedded model, judged by the world judge.

    studio bench adapters --quality-only --json [--steps 300] [--n-prompts 24] [--methods lora shira foura]

Two concepts the base model does not have — new colour words, "zindle" (= cyan) and "plome"
(= pink), used in place of the colour name — are each learned by one adapter per method
through the Studio's own ``adapter-train`` engine, from a folder of 32 world images with .txt
captions (the path a user's dataset takes). Generation goes through the t2i engine's
``apply_adapters`` in fused mode, the path a user's mix takes. (Surface styles were tried
first: U-Net adapters on this small model learn them only faintly in a few hundred steps, too
weakly to measure retention.)

- ``concept_retention[method]``: fuse both adapters (weight 1 each) and prompt each trigger;
  the judge reads the object colour. With c = mean judge probability of the concept's colour,
  retention = (c_mix − c_base) / (c_alone − c_base): the share of the adapter's effect that
  survives fusing the other one, averaged over the two concepts (1.0 = nothing lost).
- ``high_strength[method][w]``: the first adapter alone at weight 1 and ``--high`` (2.0):
  ``diversity`` = mean pairwise RMS pixel distance between seeds of one prompt, ``nn_train_ratio``
  = mean distance of each image to its nearest training image over the same figure for fresh
  real images of the concept (< 1: closer to the training set than new data is — copying),
  ``content_acc`` = shape/background/position read as prompted (copying the training
  objects instead of the prompt lowers it).
LoRA and FouRA use the same rank; SHiRA's density is set to LoRA's parameter count unless given.
Trained adapters are cached under ``.cache/bench-adapters`` keyed by model weights and recipe.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

CONCEPTS = (("zindle", "cyan"), ("plome", "pink"))  # (new word, the colour it means)
CONTENT = ("shape", "background", "position")
N_TRAIN = 32
CACHE = Path(".cache/bench-adapters")
QUALITY_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "time_emb_proj"]
MIN_GAIN = 0.05  # an adapter that moves the judge less than this alone has no concept to retain


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


def concept_images(word: str, color: str, n: int, seed: int) -> list[tuple[np.ndarray, str, dict[str, str]]]:
    """World images of single ``color`` objects, captioned with ``word`` in place of the colour."""
    from engines.world import generator as g

    out, i = [], 0
    while len(out) < n:
        s = g.make_sample(seed=seed, index=i)
        i += 1
        if len(s.scene.objects) == 1 and s.scene.primary.color == color:
            out.append((s.image, g.plain_caption(s.scene).replace(f" {color} ", f" {word} ", 1), s.scene.labels()))
    return out


def write_dataset(word: str, color: str) -> Path:
    """A folder of PNGs + .txt captions, as a user would hand the trainer."""
    from PIL import Image

    folder = CACHE / "data" / word
    if not (folder / f"{N_TRAIN - 1:03d}.txt").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        for k, (im, cap, _) in enumerate(concept_images(word, color, N_TRAIN, seed=11)):
            Image.fromarray(im).save(folder / f"{k:03d}.png")
            (folder / f"{k:03d}.txt").write_text(cap)
    return folder


def train_adapter(model_dir: Path, method: str, dataset: Path, trigger: str, seed: int, args: argparse.Namespace,
                  density: float, model_key: str) -> tuple[Path, dict[str, Any]]:
    """Train (or reuse from the cache) one adapter through the ``adapter-train`` engine.
    ``model_key`` (``_model_key(model_dir)``) is hashed once per run by the caller."""
    from engines.adapters.engine import AdapterTrainEngine
    from engines.adapters.params import AdapterTrainParams
    from engines.base import EngineContext, ModelSpec

    lr = {"lora": args.lr_lora, "shira": args.lr_shira, "foura": args.lr_foura}[method]
    p = AdapterTrainParams(model="embedded", dataset=str(dataset), method=method, trigger=trigger, rank=args.q_rank,
                           targets=args.targets, mask_type=args.mask,
                           density=round(density, 5), steps=args.steps, learning_rate=lr, batch_size=args.batch,
                           seed=seed, sample_every=0, name=f"{method}-{trigger}")
    key = hashlib.sha256((model_key + p.model_dump_json()).encode()).hexdigest()[:16]
    dest = CACHE / f"{method}-{trigger}-{key}.safetensors"
    info_path = dest.with_suffix(".json")
    if dest.is_file() and info_path.is_file():
        return dest, json.loads(info_path.read_text())
    work = CACHE / f"work-{key}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    ctx = EngineContext(work_dir=work, load_model=lambda ref, k, build: build(ModelSpec(ref, "diffusers", model_dir)))
    t0 = time.perf_counter()
    res = AdapterTrainEngine().run(p, ctx)
    art = next(a for a in res.artifacts if a.kind == "adapter")
    info = {"seconds": round(time.perf_counter() - t0, 1), "final_loss": round(res.meta["final_loss"], 5),
            "params": _n_params(art.path, method), "lr": lr, "steps": args.steps,
            "rank": args.q_rank if method != "shira" else None, "density": p.density if method == "shira" else None}
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


def eval_prompts(word: str, color: str, n: int, seed: int) -> list[tuple[str, dict[str, str]]]:
    """Fresh single-object scenes captioned with ``word`` for the colour (labels say ``color``);
    every third uses the shape held out with that colour from all training (base and adapter)."""
    from dataclasses import replace

    from engines.world import generator as g

    held = sorted(s for s, c in g.HELDOUT if c == color)
    out = []
    rng = np.random.default_rng(seed)
    for i in range(n):
        sc = g.sample_scene(rng, "train", 0.0)
        o = replace(sc.primary, color=color, style="solid")
        if held and i % 3 == 2:
            o = replace(o, shape=held[0])
        sc = replace(sc, objects=(o,))
        out.append((g.plain_caption(sc).replace(f" {color} ", f" {word} ", 1), sc.labels()))
    return out


class Generator:
    """The embedded pipeline through the t2i engine's loader and adapter path."""

    def __init__(self, model_dir: Path, steps: int, guidance: float) -> None:
        from engines.base import EngineContext, ModelSpec
        from engines.t2i.engine import load_pipeline
        from engines.world import models as M
        from engines.world.paths import judge_dir

        self.loaded = load_pipeline(ModelSpec("embedded", "diffusers", model_dir), "cpu", "float32")
        self.loaded.pipe.set_progress_bar_config(disable=True)
        self.judge = M.load_judge(judge_dir())
        self.ctx = EngineContext(work_dir=CACHE)
        self.steps, self.guidance = steps, guidance
        self.n_images = 0

    def images(self, mix: list[tuple[Path, float]], prompts: list[str], seed: int = 0) -> torch.Tensor:
        """(N, 3, 64, 64) in [0, 1] with ``mix`` fused; the mix is undone afterwards."""
        from engines.t2i.engine import apply_adapters
        from engines.t2i.params import AdapterUse, T2IParams
        from engines.world.eval import _images

        params = T2IParams(prompt="-", adapter_mode="fused",
                           adapters=[AdapterUse(adapter=str(p), weight=w) for p, w in mix])
        _, _, undo = apply_adapters(self.loaded, params, self.ctx)
        try:
            x = _images(self.loaded.pipe, prompts, self.steps, self.guidance, seed, batch=16)
        finally:
            undo()
        self.n_images += len(prompts)
        return x

    def score(self, x: torch.Tensor, labels: list[dict[str, str]], color: str) -> dict[str, float]:
        """``concept``: mean judge probability of the concept's colour; ``concept_acc``: its
        argmax rate; ``content_acc``: shape, background and position read as prompted."""
        from engines.world import generator as g
        from engines.world import models as M

        preds = M.judge_predict(self.judge, x)
        p = M.judge_probs(self.judge, x, "color")[:, g.ATTRIBUTES["color"].index(color)]
        content = float(np.mean([[preds[a][i] == lab[a] for a in CONTENT] for i, lab in enumerate(labels)]))
        return {"concept": round(float(p.mean()), 4),
                "concept_acc": round(float(np.mean([c == color for c in preds["color"]])), 4),
                "content_acc": round(content, 4)}


def _rms(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise RMS distance [len(a), len(b)] between image sets (N, 3, H, W) in [0, 1]."""
    return torch.cdist(a.flatten(1), b.flatten(1)) / (a[0].numel() ** 0.5)


def high_strength(gen: Generator, path: Path, word: str, color: str, weights: list[float], n_prompts: int,
                  n_seeds: int) -> dict[str, Any]:
    """Diversity across seeds and closeness to the training images, at each adapter weight."""
    def stack(items: list) -> torch.Tensor:  # (N, 3, 64, 64) in [0, 1]
        return torch.stack([torch.from_numpy(im.astype(np.float32) / 255).permute(2, 0, 1) for im, _, _ in items])

    train = stack(concept_images(word, color, N_TRAIN, seed=11))  # the adapter's training set
    fresh = stack(concept_images(word, color, N_TRAIN, seed=99))  # new real images of the concept
    real_nn = float(_rms(fresh, train).min(1).values.mean())
    ps = eval_prompts(word, color, n_prompts, seed=4321)
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
                       "nn_train_ratio": round(nn / real_nn, 3)} | gen.score(x, labels, color)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from engines.world.paths import default_model_dir

    t0 = time.perf_counter()
    model_dir = Path(args.model) if args.model else default_model_dir()
    CACHE.mkdir(parents=True, exist_ok=True)
    gen = Generator(model_dir, args.sample_steps, args.guidance)
    density = args.q_density or matched_density(gen.loaded.pipe.unet, args.q_rank, args.targets)
    model_key = _model_key(model_dir)
    adapters: dict[str, dict[str, Path]] = {}
    train_info: dict[str, dict[str, Any]] = {}
    for m in args.methods:
        adapters[m] = {}
        for k, (word, color) in enumerate(CONCEPTS):
            data = write_dataset(word, color)
            adapters[m][word], info = train_adapter(model_dir, m, data, word, k + 1, args, density, model_key)
            train_info[f"{m}/{word}"] = info
    prompts = {w: eval_prompts(w, c, args.n_prompts, seed=1000 + k) for k, (w, c) in enumerate(CONCEPTS)}

    def score(mix: list[tuple[Path, float]], word: str, color: str) -> dict[str, float]:
        ps = prompts[word]
        x = gen.images(mix, [p for p, _ in ps])
        return gen.score(x, [lab for _, lab in ps], color)

    base = {w: score([], w, c) for w, c in CONCEPTS}
    retention: dict[str, float | None] = {}
    detail: dict[str, Any] = {}
    for m in args.methods:
        mix = [(adapters[m][w], 1.0) for w, _ in CONCEPTS]
        d: dict[str, Any] = {}
        rs = []
        for word, color in CONCEPTS:
            alone = score([(adapters[m][word], 1.0)], word, color)
            mixed = score(mix, word, color)
            gain = alone["concept"] - base[word]["concept"]
            r = (mixed["concept"] - base[word]["concept"]) / gain if gain >= MIN_GAIN else None
            d[word] = {"alone": alone, "mixed": mixed, "retention": None if r is None else round(r, 3)}
            rs.append(r)
        retention[m] = None if None in rs else round(float(np.mean(rs)), 3)
        detail[m] = d
    strong = {}
    if args.high:
        word, color = CONCEPTS[0]
        for m in args.methods:
            strong[m] = high_strength(gen, adapters[m][word], word, color, [1.0, args.high], args.div_prompts,
                                      args.div_seeds)
    return {"model_dir": str(model_dir), "model_key": model_key,
            "concepts": dict(CONCEPTS), "eval_prompts_per_concept": args.n_prompts,
            "sample_steps": args.sample_steps, "guidance": args.guidance, "shira_density": round(density, 4),
            "shira_mask": args.mask, "rank": args.q_rank, "targets": args.targets, "train": train_info, "base": base,
            "concept_retention": retention, "retention_detail": detail, "high_strength": strong,
            "images_generated": gen.n_images, "wall_seconds": round(time.perf_counter() - t0, 1)}


def add_args(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("quality (embedded model)")
    g.add_argument("--methods", nargs="+", default=["lora", "shira", "foura"], choices=["lora", "shira", "foura"])
    g.add_argument("--model", default=None, help="SD folder (default: the shipped embedded model)")
    g.add_argument("--steps", type=int, default=300, help="adapter training steps")
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
    g.add_argument("--sample-steps", type=int, default=20)
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
