"""WorldEval: generate from a fixed prompt set and let the judge read the images.

Prompts are single-object scenes in the canonical wording (the judge reads the primary object
of single-object scenes; two-object prompts would need a per-object judge). A third of them
use (shape, colour) pairs held out of training (``generator.HELDOUT``): their accuracies are
reported again under ``"unseen"``.

``python -m engines.world.eval [--model DIR] [--n-per-prompt N] [--steps S] [--guidance G]
[--recon]`` prints one JSON object (``studio eval world --json`` calls ``main``).

Also home of the measurements training uses as gates (``judge_accuracy``, ``recon_gate``,
``quick_eval``): training imports them from here; this module imports nothing from training.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from engines.world import generator as g
from engines.world import models as M
from engines.world.data import to_tensor
from engines.world.paths import default_model_dir, judge_dir

SCORED = ("shape", "color", "background", "position", "style")
DEFAULT_GUIDANCE = 4.0


def prompt_set(n_seen: int = 32, n_unseen: int = 16, seed: int = 777) -> list[tuple[str, dict[str, str], bool]]:
    """Fixed (prompt, labels, unseen) triples. Seen scenes come from the training split, unseen
    ones use only held-out (shape, colour) pairs; all attribute values otherwise vary."""
    out = []
    for split, n, unseen in (("train", n_seen, False), ("heldout", n_unseen, True)):
        rng = np.random.default_rng([seed, int(unseen)])
        for _ in range(n):
            sc = g.sample_scene(rng, split, 0.0)
            out.append((g.canonical_caption(sc), sc.labels(), unseen))
    return out


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


def _images(pipe, prompts: list[str], steps: int, guidance: float, seed: int, batch: int) -> torch.Tensor:  # noqa: ANN001
    """(N, 3, 64, 64) in [0, 1]. One generator per prompt index keeps results batch-independent."""
    outs = []
    for i in range(0, len(prompts), batch):
        chunk = prompts[i:i + batch]
        gens = [torch.Generator().manual_seed(seed * 100003 + i + k) for k in range(len(chunk))]
        im = pipe(chunk, num_inference_steps=steps, guidance_scale=guidance, generator=gens,
                  output_type="np", height=g.SIZE, width=g.SIZE).images  # (B, 64, 64, 3) float
        outs.append(torch.from_numpy(np.asarray(im)).permute(0, 3, 1, 2).float())
    return torch.cat(outs).clamp(0, 1)


def evaluate_pipeline(pipe, judge, n_per_prompt: int = 1, steps: int = 20, guidance: float = DEFAULT_GUIDANCE,  # noqa: ANN001
                      seed: int = 0, batch: int = 16, prompts=None, time_images: int = 3,  # noqa: ANN001
                      save_grid: Path | None = None) -> dict:
    """Score a loaded pipeline. ``seconds_per_image`` is timed separately at batch 1 (CFG on)."""
    ps = prompts or prompt_set()
    texts = [p for p, _, _ in ps for _ in range(n_per_prompt)]
    labels = [lab for _, lab, _ in ps for _ in range(n_per_prompt)]
    unseen = [u for _, _, u in ps for _ in range(n_per_prompt)]
    pipe.set_progress_bar_config(disable=True)
    t = time.time()
    x = _images(pipe, texts, steps, guidance, seed, batch)
    batched_s = (time.time() - t) / len(texts)
    preds = M.judge_predict(judge, x)
    res = _score(preds, labels, [True] * len(texts))
    res["unseen"] = _score(preds, labels, unseen)
    res["seen"] = _score(preds, labels, [not u for u in unseen])
    if time_images:
        _images(pipe, texts[:1], steps, guidance, seed, 1)  # warm-up
        t = time.time()
        _images(pipe, texts[:time_images], steps, guidance, seed, 1)
        res["seconds_per_image"] = round((time.time() - t) / time_images, 3)
    res["seconds_per_image_batched"] = round(batched_s, 3)
    res.update(steps=steps, guidance=guidance, n_per_prompt=n_per_prompt, prompts=len(ps), seed=seed,
               resolution=g.SIZE, scored_object="primary (single-object prompts)")
    if save_grid is not None:
        _grid(x, save_grid)
    return res


def _grid(x: torch.Tensor, path: Path, cols: int = 8) -> None:
    from PIL import Image

    n = (len(x) // cols) * cols or len(x)
    a = (x[:n].permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    rows = [np.concatenate(list(a[r:r + cols]), 1) for r in range(0, n, cols)]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, 0)).resize((cols * 128, len(rows) * 128), Image.NEAREST).save(path)


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


def load_pipeline(model_dir: Path | None = None, device: str = "cpu"):  # noqa: ANN201
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(model_dir or default_model_dir()), local_files_only=True,
                                                   safety_checker=None, requires_safety_checker=False)
    return pipe.to(device)


def run_eval(model_dir: Path | None = None, n_per_prompt: int = 2, steps: int = 20,
             guidance: float = DEFAULT_GUIDANCE, seed: int = 0, device: str = "cpu") -> dict:
    """WorldEval on a StableDiffusionPipeline dir (default: the shipped embedded model).
    48 prompts (16 unseen combinations) × ``n_per_prompt`` images at 64×64."""
    t = time.time()
    pipe = load_pipeline(model_dir, device)
    judge = M.load_judge(judge_dir(), device)
    res = evaluate_pipeline(pipe, judge, n_per_prompt, steps, guidance, seed)
    res["model_dir"] = str(model_dir or default_model_dir())
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
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    res = run_eval(args.model, args.n_per_prompt, args.steps, args.guidance, args.seed, args.device)
    if args.recon:
        res["recon"] = recon_eval(args.model / "vae" if args.model else None)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
