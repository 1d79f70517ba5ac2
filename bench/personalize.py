"""Personalization benchmark: Hollowed-Net memory on an SD1.5-shaped U-Net, and subject /
prompt fidelity on the embedded model, plain vs hollowed vs the untrained base.

    studio bench personalize --json [--memory-only | --quality-only] [--threads 1]
        memory:  [--mem-steps 2] [--mem-hollow 2] [--rank 4] [--device cpu]
        quality: [--steps 300] [--lr 5e-3] [--seeds 0] [--eval-seeds 0 1] [--contexts 8] [--hollow 1]
                 [--prior-preservation off|on] [--class-images 50]
    studio bench personalize --merge seed0.json seed1.json …   (joint statistics of per-seed runs)

Memory: an SD1.5-config ``UNet2DConditionModel`` with random weights (cost does not depend on
the values), 64×64 latents (512×512 images), batch 1, LoRA r=4 on the engine's default targets,
AdamW; each measurement in a fresh subprocess:
- ``inference``: two no-grad forwards (batch 1, no CFG);
- ``plain``: LoRA on the full U-Net, ``--mem-steps`` training steps;
- ``hollowed``: pre-compute (full frozen U-Net to the hollow boundary, stored to disk, timed as
  ``precompute_s``), then the hollow's blocks are deleted and the freed pages returned to the OS,
  then the same training steps on the kept blocks.
Peak = the process's peak RSS (``VmHWM``) over the measured phase, reset right before it
(``/proc/self/clear_refs``) — weights included, as a user's RAM sees it; on CUDA also
``torch.cuda.max_memory_allocated``. ``memory_ratio`` = hollowed / plain (goal ≤ 0.6),
``step_time_ratio`` = hollowed / plain mean step time (first step excluded as warm-up).

Quality: the ``personalize`` engine itself on the embedded model with the demo subject (8
photos of the world's never-seen creature), subject word ``sks``, class ``creature``, plain
(hollow 0) and hollowed (``--hollow``), same seed and steps; then ``engines.personalize.metrics``:
``subject_fidelity`` (a judge head that knows the subject), ``subject_similarity`` (DINO-style),
``prompt_fidelity`` (contexts the photos never showed) and ``base_drift``,
with the untrained base model as reference. Everything seeded. With two or more training seeds
the summary gives, per mode and for the paired hollowed − plain difference, the mean, the 95 %
Student-t half-width over seeds and the per-seed values.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SD15_UNET = ROOT / "engines" / "pipelines" / "configs" / "sd15" / "unet" / "config.json"


def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> None:
    import torch

    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _peak(device: str) -> dict[str, float]:
    import torch

    out = {"peak_rss_mb": round(_rss_mb("VmHWM"), 1)}
    if device.startswith("cuda"):
        out["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


# -- one memory measurement (runs in its own process) --------------------------------------------

def child(mode: str, steps: int, hollow: int, rank: int, device: str, threads: int) -> dict[str, Any]:
    import torch
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from engines.personalize.hollow import Store, boundary, hollow_out, kept_fraction
    from engines.personalize.params import DEFAULT_TARGETS
    from engines.personalize.train import Batch, PersonalTrainer, release_memory

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(SD15_UNET))).to(device)
    unet.requires_grad_(False)
    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    c = unet.config
    g = torch.Generator().manual_seed(1)

    def batch(i: int) -> Batch:  # one row: 64×64 latent, 77-token text states
        return Batch(torch.randn(1, c.in_channels, 64, 64, generator=g), torch.randn(1, 77, c.cross_attention_dim,
                     generator=g), torch.tensor([100 + 37 * i]), torch.randn(1, c.in_channels, 64, 64, generator=g), 1)

    batches = [batch(i) for i in range(steps)]
    out: dict[str, Any] = {"mode": mode, "params_m": round(sum(p.numel() for p in unet.parameters()) / 1e6, 1),
                           "weights_mb": round(sum(p.numel() * p.element_size() for p in unet.parameters()) / 2**20, 1)}
    release_memory()
    if mode == "inference":
        _reset_peak()
        t0 = time.perf_counter()
        with torch.no_grad():
            for b in batches[:2]:
                unet(b.x0.to(device), b.t.to(device), encoder_hidden_states=b.ehs.to(device))
        out["step_s"] = round((time.perf_counter() - t0) / 2, 2)
        return out | _peak(device)
    store = None
    if mode == "hollowed":
        out["kept_param_fraction"] = round(kept_fraction(unet, hollow), 4)
        tmp = tempfile.TemporaryDirectory(prefix="bench-hollow-")
        store = Store(Path(tmp.name), "bench")
        _reset_peak()
        t0 = time.perf_counter()
        for i, b in enumerate(batches):
            noisy = sched.add_noise(b.x0, b.noise, b.t).to(device)
            store.save(i, boundary(unet, hollow, noisy, b.t.to(device), b.ehs.to(device)))
        out["precompute_s"] = round(time.perf_counter() - t0, 2)
        out["precompute_peak_rss_mb"] = _peak(device)["peak_rss_mb"]
        out["stored_mb_per_step"] = round(store.nbytes() / len(batches) / 2**20, 2)
        hollow_out(unet, hollow)
        release_memory()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        out["rss_after_hollowing_mb"] = round(_rss_mb("VmRSS"), 1)
    tr = PersonalTrainer(unet, dict(sched.config), method="lora", rank=rank, density=0.02, targets=DEFAULT_TARGETS,
                         lr=1e-4, seed=0, hollow=hollow if mode == "hollowed" else 0)
    out["adapted_layers"] = len(tr.adapter_names())
    out["trainable_params"] = sum(p.numel() for p in tr.params)
    _reset_peak()
    times = []
    for i, b in enumerate(batches):
        t0 = time.perf_counter()
        tr.step(b, store.load(i) if store is not None else None)
        times.append(time.perf_counter() - t0)
    out["step_s"] = round(sum(times[1:]) / max(1, len(times) - 1), 2) if len(times) > 1 else round(times[0], 2)
    out["steps"] = len(times)
    return out | _peak(device)


def _spawn(mode: str, a: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.personalize", "--child", mode, "--mem-steps", str(a.mem_steps),
           "--mem-hollow", str(a.mem_hollow), "--rank", str(a.rank), "--device", a.device, "--threads", str(a.threads)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        return {"mode": mode, "error": (r.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def memory(a: argparse.Namespace) -> dict[str, Any]:
    runs = {m: _spawn(m, a) for m in ("inference", "plain", "hollowed")}
    inf, plain, hol = runs["inference"], runs["plain"], runs["hollowed"]
    res: dict[str, Any] = {"config": "SD1.5 UNet2DConditionModel, random weights, 64x64 latent (512x512), batch 1, fp32",
                           "device": a.device, "threads": a.threads, "lora_rank": a.rank, "hollow": a.mem_hollow,
                           "steps": a.mem_steps, "runs": runs}
    if all("error" not in r for r in runs.values()):
        res |= {"inference_peak_mb": inf["peak_rss_mb"], "plain_peak_mb": plain["peak_rss_mb"],
                "hollowed_peak_mb": hol["peak_rss_mb"],
                "memory_ratio": round(hol["peak_rss_mb"] / plain["peak_rss_mb"], 3),
                "hollowed_vs_inference": round(hol["peak_rss_mb"] / inf["peak_rss_mb"], 3),
                "step_time_ratio": round(hol["step_s"] / plain["step_s"], 3),
                "precompute_s": hol["precompute_s"], "precompute_s_per_step": round(hol["precompute_s"] / a.mem_steps, 2),
                "goal_memory_ratio_le_0_6": hol["peak_rss_mb"] / plain["peak_rss_mb"] <= 0.6}
        if "cuda_peak_mb" in plain:
            res["cuda_memory_ratio"] = round(hol["cuda_peak_mb"] / plain["cuda_peak_mb"], 3)
    return res


# -- quality on the embedded model ----------------------------------------------------------------

METRICS = ("subject_fidelity", "subject_similarity", "prompt_fidelity", "base_drift")
# two-sided 95 % Student-t quantiles by degrees of freedom (n - 1); beyond 30: the normal's 1.96
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
       11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
       20: 2.086, 25: 2.060, 30: 2.042}


def interval(xs: list[float]) -> dict[str, Any]:
    """Mean, 95 % t half-width over the values (None for one value), and the values."""
    n = len(xs)
    mean = sum(xs) / n
    half = None
    if n > 1:
        sd = (sum((x - mean) ** 2 for x in xs) / (n - 1)) ** 0.5
        t = T95.get(n - 1) or next((T95[k] for k in sorted(T95) if k >= n - 1), 1.96)
        half = round(t * sd / n ** 0.5, 4)
    return {"mean": round(mean, 4), "ci95": half, "n": n, "values": [round(x, 4) for x in xs]}


def summarize(runs: dict[str, dict[str, Any]], base: dict[str, Any]) -> dict[str, Any]:
    """Per-mode and paired (hollowed − plain, same training seed) statistics from ``runs``
    keyed "plain/seedN" / "hollowed/seedN"."""
    seeds = sorted({int(k.split("seed")[1]) for k in runs}, key=int)
    paired = [s for s in seeds if f"plain/seed{s}" in runs and f"hollowed/seed{s}" in runs]
    out: dict[str, Any] = {"seeds": seeds}
    for mode in ("plain", "hollowed"):
        rows = [runs[f"{mode}/seed{s}"] for s in seeds if f"{mode}/seed{s}" in runs]
        if rows:
            out[mode] = {m: interval([r[m] for r in rows]) for m in METRICS}
    if paired:
        out["hollowed_minus_plain"] = {m: interval([runs[f"hollowed/seed{s}"][m] - runs[f"plain/seed{s}"][m]
                                                    for s in paired]) for m in METRICS}
        out["paired_seeds"] = paired
    for mode in ("plain", "hollowed"):
        if mode in out:
            out[f"{mode}_minus_base"] = {m: interval([runs[f"{mode}/seed{s}"][m] - base[m] for s in seeds
                                                      if f"{mode}/seed{s}" in runs])
                                         for m in ("subject_fidelity", "prompt_fidelity")}
    return out


def quality(a: argparse.Namespace) -> dict[str, Any]:
    import torch

    from engines.base import EngineContext, ModelSpec
    from engines.personalize.demo import demo_photos
    from engines.personalize.engine import PersonalizeEngine
    from engines.personalize.metrics import evaluate, generate, subject_probe
    from engines.personalize.params import PersonalizeParams
    from engines.personalize.train import apply_adapter_file
    from engines.pipelines import load_pipeline
    from engines.world.models import load_judge
    from engines.world.paths import default_model_dir, judge_dir

    torch.set_num_threads(a.threads)
    spec = ModelSpec("embedded", "embedded", default_model_dir())
    judge = load_judge(judge_dir())
    avoid = {(lab["position"], lab["background"]) for _, _, lab in demo_photos()}
    words = {"subject_word": "sks", "class_word": "creature"}
    kw = dict(n_contexts=a.contexts, seeds=tuple(a.eval_seeds), guidance=4.0, avoid=avoid, probe=subject_probe(judge))

    def fresh() -> Any:
        return load_pipeline(spec, "cpu", "float32").pipe

    t0 = time.perf_counter()
    base = fresh()
    from engines.personalize.demo import eval_contexts

    ctxs = eval_contexts(a.contexts, avoid=avoid)
    class_prompts = [f"a photo of creature {c['context']}" for c in ctxs[: max(2, a.contexts // 2)]]
    base_class = generate(base, class_prompts, list(a.eval_seeds), 20, 4.0)
    base_scores, _ = evaluate(base, base, judge, **words, base_images=base_class, **kw)
    out: dict[str, Any] = {"model": "embedded", "subject": "demo (world's novel creature), 8 photos",
                           "steps": a.steps, "train_seeds": a.seeds, "eval_seeds": a.eval_seeds,
                           "contexts": a.contexts, "hollow": a.hollow, "lr": a.lr, "batch_size": a.batch,
                           "prior_preservation": a.prior_preservation,
                           "class_images": a.class_images if a.prior_preservation == "on" else 0,
                           "base": base_scores, "runs": {}}
    per: dict[str, list[dict[str, Any]]] = {"plain": [], "hollowed": []}
    lr = None if a.lr == "engine" else a.lr  # None: the engine's default for each mode
    with tempfile.TemporaryDirectory(prefix="bench-personalize-") as td:
        for seed in a.seeds:
            for mode, k in (("plain", 0), ("hollowed", a.hollow)):
                if mode not in a.modes:
                    continue
                work, state = Path(td) / f"{mode}-{seed}" / "work", Path(td) / f"{mode}-{seed}" / "state"
                work.mkdir(parents=True)
                state.mkdir(parents=True)
                p = PersonalizeParams(demo=True, **words, hollow=k, steps=a.steps, seed=seed, learning_rate=lr,
                                      batch_size=a.batch, samples_every=0, checkpoint_every=max(a.steps, 1),
                                      prior_preservation=a.prior_preservation, class_images=a.class_images)
                # class images are cached per model + class across the runs (as the Studio's data dir does)
                ctx = EngineContext(work_dir=work, state_dir=state, resolve_model=lambda _r: spec,
                                    extras={"personalize_cache_dir": str(Path(td) / "class-images")})
                t = time.perf_counter()
                r = PersonalizeEngine().run(p, ctx)
                wall = time.perf_counter() - t
                pipe = fresh()
                apply_adapter_file(pipe.unet, r.artifacts[0].path, "lora")
                scores, _ = evaluate(pipe, base, judge, **words, base_images=base_class, **kw)
                scores |= {"learning_rate": p.learning_rate, "train_wall_s": round(wall, 1),
                           "train_s": r.meta["train_s"],
                           "precompute_s": r.meta["precompute_s"], "final_loss": round(r.meta["final_loss"], 4),
                           "kept_param_fraction": r.meta["kept_param_fraction"],
                           "class_images": r.meta["class_images"]}
                per[mode].append(scores)
                out["runs"][f"{mode}/seed{seed}"] = scores
                print(json.dumps({"seed": seed, "mode": mode, **scores}), file=sys.stderr, flush=True)
    for mode, rows in per.items():
        if rows:
            out[mode] = {m: round(sum(r[m] for r in rows) / len(rows), 4)
                         for m in ("subject_fidelity", "subject_similarity", "prompt_fidelity", "base_drift")}
    if "hollowed" in out and "plain" in out:
        out["hollowed_minus_plain_points"] = {
            m: round(100 * (out["hollowed"][m] - out["plain"][m]), 1) for m in ("subject_fidelity", "prompt_fidelity")}
    if "plain" in out:
        out["plain_minus_base_points"] = {
            m: round(100 * (out["plain"][m] - base_scores[m]), 1) for m in ("subject_fidelity", "prompt_fidelity")}
    out["stats"] = summarize(out["runs"], base_scores)
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    return out


SETTINGS = ("model", "steps", "eval_seeds", "contexts", "hollow", "lr", "batch_size", "prior_preservation",
            "class_images")
DEFAULTS = {"prior_preservation": "off", "class_images": 0}  # results from before these settings existed


def merge(paths: list[str]) -> dict[str, Any]:
    """Joint statistics of several ``--quality-only`` results (e.g. one training seed per
    process); refuses results made with different settings or a different base."""
    runs: dict[str, Any] = {}
    first: dict[str, Any] | None = None
    lr: dict[str, Any] = {}  # mode -> learning rate: plain and hollowed may come from runs at different rates
    for p in paths:
        q = json.loads(Path(p).read_text())["quality"]
        if first is None:
            first = q
        for k in SETTINGS + ("base",):
            if k != "lr" and q.get(k, DEFAULTS.get(k)) != first.get(k, DEFAULTS.get(k)):
                raise SystemExit(f"{p}: {k} = {q.get(k)!r} differs from {first.get(k)!r} in {paths[0]}")
        for mode in {k.split("/")[0] for k in q["runs"]}:
            if lr.setdefault(mode, q["lr"]) != q["lr"]:
                raise SystemExit(f"{p}: {mode} runs at lr {q['lr']!r}, another file's at {lr[mode]!r}")
        for k, v in q["runs"].items():
            if k in runs and runs[k] != v:
                raise SystemExit(f"{p}: run {k} differs from an earlier file's")
            runs[k] = v
    assert first is not None
    return {"bench": "personalize", "merged": paths,
            "quality": {k: first.get(k, DEFAULTS.get(k)) for k in SETTINGS} | {
                "lr": lr if len(set(lr.values())) > 1 else first["lr"], "base": first["base"],
                "runs": runs, "stats": summarize(runs, first["base"])}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="studio bench personalize", description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="accepted for symmetry; output is always JSON")
    ap.add_argument("--memory-only", action="store_true")
    ap.add_argument("--quality-only", action="store_true")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadiest on a shared 2-core box)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--mem-steps", type=int, default=2, help="training steps per memory run (first is warm-up)")
    ap.add_argument("--mem-hollow", type=int, default=2, help="hollow levels for the memory runs (SD1.5: 0..3)")
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--steps", type=int, default=300, help="training steps per quality run")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (quality)")
    ap.add_argument("--eval-seeds", type=int, nargs="+", default=[0, 1], help="generation seeds per context")
    ap.add_argument("--contexts", type=int, default=8, help="unseen (position, background) contexts")
    ap.add_argument("--hollow", type=int, default=1, help="hollow levels for the quality runs (embedded: 0..2)")
    ap.add_argument("--lr", type=lambda v: v if v == "engine" else float(v), default=5e-3,
                    help="learning rate, or 'engine': the engine's default per mode (1e-3 plain, 3e-3 hollowed LoRA)")
    ap.add_argument("--modes", nargs="+", choices=("plain", "hollowed"), default=["plain", "hollowed"],
                    help="which trainings to run per seed (merge joins runs made with different --modes)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--prior-preservation", choices=("off", "on"), default="off",
                    help="quality runs with class images by the base model (the engine's prior preservation)")
    ap.add_argument("--class-images", type=int, default=50, help="class images with --prior-preservation on")
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                    help="no runs: merge the quality results of earlier runs (one seed set each, same settings) "
                         "and print their joint statistics")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.child, a.mem_steps, a.mem_hollow, a.rank, a.device, a.threads)))
        return 0
    if a.merge:
        print(json.dumps(merge(a.merge)))
        return 0
    t0 = time.perf_counter()
    res: dict[str, Any] = {"bench": "personalize"}
    if not a.quality_only:
        res["memory"] = memory(a)
    if not a.memory_only:
        res["quality"] = quality(a)
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
