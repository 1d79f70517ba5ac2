"""Clockwork vs DeepCache: each one's best setting at ≤ N points of quality loss, with intervals.

    studio bench clockwork --json [--model embedded] [--steps 8 20] [--periods 2 3 4]
        [--dc-intervals 2 3 4 5] [--dc-branches 0 1 3] [--rounds 10] [--n-per-prompt 2]
        [--max-loss 2.0] [--sampler "DPM++ 2M"] [--adaptor FILE] [--sd15]

For each step count every setting of both methods is measured in the same run:
- quality: the world judge's ``overall`` (mean over shape, colour, background, position, style)
  on the WorldEval prompt set, every setting on the same prompts and seeds as the baseline;
  ``loss`` = baseline − setting in points, mean and 95 % bootstrap interval over prompts (paired);
- speed: one image at batch 1 with CFG per setting per round, settings in a seeded shuffled
  order each round (round 0 warms up); ``speedup`` = baseline time / setting time per round,
  mean and 95 % bootstrap interval over rounds. Times are the process's CPU seconds (torch runs
  on one thread, so this is the work done, not what other processes on a shared box took);
  wall-clock speedups are reported beside them.
Then each method's best = the fastest setting whose mean loss is ≤ ``--max-loss`` (the
baseline itself, 1.0×, always qualifies), and ``margin`` = DeepCache-best time / Clockwork-best
time per round, with its interval. Goal (issue 11 §5): margin ≥ 1.10 at 8 and 20 steps, and the
two speedup intervals not overlapping. ``--sd15`` adds a real-size SD1.5-shaped U-Net (random
weights) at 256×256, timing the U-Net loop alone. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from bench import add_threads_arg, apply_threads
from bench.stats import bootstrap_ci

SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                 down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                   "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
TIMING_PROMPT = "a red star on a blue background"


@dataclass(frozen=True)
class Setting:
    """One acceleration setting: ``method`` base | clockwork | deepcache."""
    method: str
    period: int = 1  # clockwork: full pass every N steps; deepcache: cache interval
    mode: str = ""  # clockwork: reuse | adaptor
    branch: int = 0  # deepcache: cache branch id (0 = shallowest cut, most skipped)
    depth: int = 1  # clockwork: resolution levels that run every step
    adaptor: str = ""  # clockwork adaptor mode: which adaptor (label)

    @property
    def name(self) -> str:
        if self.method == "base":
            return "base"
        if self.method == "clockwork":
            what = "reuse" if self.mode == "reuse" else self.adaptor
            return f"clockwork-{what}-d{self.depth}-p{self.period}"
        return f"deepcache-i{self.period}-b{self.branch}"


def resolve_model(ref: str) -> Path:
    if ref == "embedded":
        from engines.world.paths import default_model_dir

        return default_model_dir()
    return Path(ref)


@contextmanager
def applied(pipe: Any, s: Setting, adaptors: dict[str, Any]) -> Iterator[None]:
    """Install one setting on ``pipe`` for the duration of the block."""
    if s.method == "base":
        yield
    elif s.method == "clockwork":
        from engines.pipelines.clockwork import Clockwork

        with Clockwork(pipe.unet, s.period, s.mode, adaptors.get(s.adaptor), depth=s.depth):
            yield
    elif s.method == "deepcache":
        from DeepCache import DeepCacheSDHelper

        h = DeepCacheSDHelper(pipe=pipe)
        h.set_params(cache_interval=s.period, cache_branch_id=s.branch)
        h.enable()
        try:
            yield
        finally:
            h.disable()
    else:
        raise ValueError(s.method)


def settings(periods: list[int], depths: list[int], intervals: list[int], branches: list[int],
             adaptors: dict[str, Any], steps: int | None = None, only_at: dict[str, set[int]] | None = None
             ) -> list[Setting]:
    """Every setting to measure at ``steps``; an adaptor listed in ``only_at`` is measured only at
    its step counts (one distilled for 8 steps need not be timed at 20)."""
    out = [Setting("base")]
    use = {k: a for k, a in adaptors.items() if steps is None or not (only_at or {}).get(k) or steps in only_at[k]}
    for p in periods:
        out += [Setting("clockwork", p, "reuse", depth=d) for d in depths]
        out += [Setting("clockwork", p, "adaptor", depth=int(a.config.get("depth", 1)), adaptor=label)
                for label, a in use.items()]
    out += [Setting("deepcache", i, branch=b) for i in intervals for b in branches]
    return out


# ---------------------------------------------------------------- quality

def images(pipe: Any, prompts: list[str], steps: int, guidance: float, seed: int, batch: int = 16) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1]; one generator per prompt index, so images do not depend on batching."""
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    outs = []
    for i in range(0, len(prompts), batch):
        chunk = prompts[i:i + batch]
        gens = [torch.Generator().manual_seed(seed * 100003 + i + k) for k in range(len(chunk))]
        im = pipe(chunk, num_inference_steps=steps, guidance_scale=guidance, generator=gens, output_type="np",
                  height=size, width=size).images  # (B, H, W, 3)
        outs.append(torch.from_numpy(np.asarray(im)).permute(0, 3, 1, 2).float())
    return torch.cat(outs).clamp(0, 1)


def judge_scores(pipe: Any, judge: Any, steps: int, guidance: float, n_per_prompt: int, seed: int) -> np.ndarray:
    """[prompts, n_per_prompt] per-image score: fraction of the scored attributes the judge reads right."""
    from engines.world import eval as we
    from engines.world import models as wm

    ps = we.prompt_set()
    texts = [p for p, _, _ in ps for _ in range(n_per_prompt)]
    labels = [lab for _, lab, _ in ps for _ in range(n_per_prompt)]
    pred = wm.judge_predict(judge, images(pipe, texts, steps, guidance, seed))
    right = np.array([[pred[a][i] == labels[i][a] for a in we.SCORED] for i in range(len(texts))], float)
    return right.mean(1).reshape(len(ps), n_per_prompt)


def loss_points(base: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """Baseline − setting quality in points, paired over prompts, with a bootstrap interval."""
    d = np.stack([base.mean(1), other.mean(1)], 1)  # [prompts, 2]
    est, lo, hi = bootstrap_ci(d, lambda a: 100 * float(a[:, 0].mean() - a[:, 1].mean()))
    return {"mean": round(est, 2), "ci95": [round(lo, 2), round(hi, 2)]}


# ---------------------------------------------------------------- speed

def time_settings(pipe: Any, ss: list[Setting], steps: int, rounds: int, guidance: float, adaptor: dict[str, Any],
                  seed: int = 0) -> dict[str, dict[str, list[float]]]:
    """Per setting, per measured round: CPU and wall seconds for one image (batch 1, CFG on)."""
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    out: dict[str, dict[str, list[float]]] = {s.name: {"cpu": [], "wall": []} for s in ss}
    rng = np.random.default_rng([seed, steps])
    for r in range(rounds + 1):
        for k in rng.permutation(len(ss)):
            s = ss[int(k)]
            with applied(pipe, s, adaptor):
                g = torch.Generator().manual_seed(r)
                c0, w0 = time.process_time(), time.perf_counter()
                pipe(TIMING_PROMPT, num_inference_steps=steps, guidance_scale=guidance, generator=g, height=size,
                     width=size, output_type="np")
                c1, w1 = time.process_time(), time.perf_counter()
            if r > 0:  # round 0 warms up
                out[s.name]["cpu"].append(c1 - c0)
                out[s.name]["wall"].append(w1 - w0)
    return out


def ratio_ci(num: list[float], den: list[float], seed: int = 0) -> dict[str, Any]:
    """Mean per-round ratio num/den with a bootstrap interval over rounds."""
    d = np.stack([np.asarray(num), np.asarray(den)], 1)
    est, lo, hi = bootstrap_ci(d, lambda a: float((a[:, 0] / a[:, 1]).mean()), seed=seed)
    return {"mean": round(est, 3), "ci95": [round(lo, 3), round(hi, 3)]}


def best(rows: dict[str, dict[str, Any]], method: str, max_loss: float, mode: str | None = None) -> str:
    """The fastest setting of ``method`` (and Clockwork ``mode``) whose mean quality loss is within
    ``max_loss`` points (the baseline counts as every method's slowest admissible setting)."""
    ok = [n for n, r in rows.items() if n == "base" or (
        r["method"] == method and mode in (None, r["mode"]) and r["loss"]["mean"] <= max_loss)]
    return max(ok, key=lambda n: rows[n]["speedup"]["mean"])


def write_profile(path: Path, model_hash: str, sampler: str, runs: list[dict[str, Any]], argv: list[str],
                  files: dict[str, Path] | None = None) -> None:
    """Record, per step count and Clockwork mode, the fastest setting within the loss budget —
    period, cut depth and (adaptor mode) which adaptor file — what t2i uses when a job leaves
    ``clock_period`` empty. Only adaptors stored beside the model's weights can be named (t2i
    opens nothing else). Earlier entries for other samplers are kept."""
    prof: dict[str, Any] = {}
    if path.is_file():
        try:
            prof = json.loads(path.read_text())
        except ValueError:
            prof = {}
    if prof.get("model_hash") != model_hash:
        prof = {}
    table: dict[str, Any] = {}
    local = {k for k, f in (files or {}).items() if f.resolve().parent == path.resolve().parent}
    for run in runs:
        rows = {n: r for n, r in run["settings"].items()
                if r["method"] != "clockwork" or r["mode"] == "reuse" or r["adaptor"] in local}
        entry = {}
        for mode in ("reuse", "adaptor"):
            n = best(rows, "clockwork", run["max_loss"], mode)
            if n != "base":
                r = rows[n]
                entry[mode] = {"period": r["period"], "depth": r["depth"], "loss_points": r["loss"],
                               "speedup": r["speedup"]}
                if mode == "adaptor":
                    entry[mode]["adaptor"] = (files or {})[r["adaptor"]].name
        entry["measured_by"] = "studio bench clockwork " + " ".join(argv)  # per step count: runs can differ
        # the regional clock (``studio bench layout --write-profile``) is measured on its own: keep it
        before = ((prof.get("choices") or {}).get(sampler) or {}).get(str(run["steps"])) or {}
        for mode in ("reuse", "adaptor"):
            if mode in entry and isinstance((before.get(mode) or {}).get("layout"), dict):
                entry[mode]["layout"] = before[mode]["layout"]
        table[str(run["steps"])] = entry
    old = prof.get("choices") or {}
    # the command is kept per step count (each run may measure only some of them)
    prof = {"model_hash": model_hash, "choices": old | {sampler: (old.get(sampler) or {}) | table},
            "date": time.strftime("%Y-%m-%d")}
    path.write_text(json.dumps(prof, indent=1))


def compare(pipe: Any, judge: Any, ss: list[Setting], steps: int, args: argparse.Namespace,
            adaptor: dict[str, Any]) -> dict[str, Any]:
    q: dict[str, np.ndarray] = {}
    for s in ss:
        with applied(pipe, s, adaptor):
            q[s.name] = judge_scores(pipe, judge, steps, args.guidance, args.n_per_prompt, args.seed)
        print(f"steps {steps} quality {s.name}: {100 * q[s.name].mean():.1f}", file=sys.stderr)
    t = time_settings(pipe, ss, steps, args.rounds, args.guidance, adaptor, args.seed)
    rows: dict[str, dict[str, Any]] = {}
    for s in ss:
        rows[s.name] = {
            "method": s.method, "period": s.period, "mode": s.mode or None,
            "depth": s.depth if s.method == "clockwork" else None, "adaptor": s.adaptor or None,
            "branch": s.branch if s.method == "deepcache" else None,
            "quality": round(100 * float(q[s.name].mean()), 2),
            "loss": loss_points(q["base"], q[s.name]),
            "speedup": ratio_ci(t["base"]["cpu"], t[s.name]["cpu"]),
            "speedup_wall": ratio_ci(t["base"]["wall"], t[s.name]["wall"]),
            "cpu_s": round(statistics.median(t[s.name]["cpu"]), 4),
        }
    cw, dc = best(rows, "clockwork", args.max_loss), best(rows, "deepcache", args.max_loss)
    margin = ratio_ci(t[dc]["cpu"], t[cw]["cpu"])
    sc, sd = rows[cw]["speedup"]["ci95"], rows[dc]["speedup"]["ci95"]
    return {"steps": steps, "n_images": int(q["base"].size), "rounds": args.rounds, "max_loss": args.max_loss,
            "settings": rows,
            "best_clockwork": cw, "best_deepcache": dc, "margin": margin,
            "goal_met": bool(margin["mean"] >= 1.10 and sc[0] > sd[1])}


# ---------------------------------------------------------------- real-size U-Net timing

def sd15_unet_loop(steps: int, period: int, rounds: int) -> dict[str, float]:
    from diffusers import UNet2DConditionModel

    from engines.pipelines.clockwork import Clockwork

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
    ap.add_argument("--periods", type=int, nargs="+", default=[2, 3, 4])
    ap.add_argument("--depths", type=int, nargs="+", default=[1, 2], help="Clockwork reuse cut depths")
    ap.add_argument("--dc-intervals", type=int, nargs="+", default=[2, 3, 4, 5])
    ap.add_argument("--dc-branches", type=int, nargs="+", default=[0, 1, 3])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--n-per-prompt", type=int, default=2)
    ap.add_argument("--max-loss", type=float, default=2.0, help="admissible quality loss, points")
    ap.add_argument("--guidance", type=float, default=4.0)
    ap.add_argument("--sampler", default="DPM++ 2M")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--adaptors", nargs="*", default=None,
                    help="adaptor files, each measured at every period (default: the model's own); "
                         "FILE@8,20 measures one only at those step counts")
    ap.add_argument("--write-profile", action="store_true",
                    help="record the best Clockwork period per step count for t2i's automatic choice")
    ap.add_argument("--sd15", action="store_true", help="also time an SD1.5-shaped U-Net at 256x256")
    ap.add_argument("--sd15-only", action="store_true", help="only the SD1.5-shaped U-Net timing")
    ap.add_argument("--sd15-steps", type=int, default=8)
    ap.add_argument("--sd15-period", type=int, default=2)
    add_threads_arg(ap)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    apply_threads(args)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    with torch.no_grad():  # scoped: a global switch would break training run later in the same process
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    if args.sd15_only:
        print(json.dumps({"sd15_unet": sd15_unet_loop(steps=args.sd15_steps, period=args.sd15_period, rounds=2)}))
        return 0
    from engines.base import ModelSpec
    from engines.pipelines import load_pipeline, make_scheduler
    from engines.pipelines.clockwork import load_adaptor
    from engines.t2i.engine import adaptor_path, profile_path
    from engines.world import models as wm
    from engines.world.paths import judge_dir

    path = resolve_model(args.model)
    spec = ModelSpec(ref=args.model, kind="diffusers", path=path)
    loaded = load_pipeline(spec, "cpu", "float32")
    pipe = loaded.pipe
    pipe.scheduler = make_scheduler(args.sampler, loaded.base_scheduler)
    pipe.set_progress_bar_config(disable=True)
    specs = args.adaptors if args.adaptors is not None else [str(adaptor_path(spec))]
    files: list[Path] = []
    only_at: dict[str, set[int]] = {}
    labels: list[str] = []
    for item in specs:
        f, _, at = item.partition("@")
        if not Path(f).is_file():
            raise SystemExit(f"no adaptor file {f}")
        label = Path(f).name.removesuffix(".safetensors")
        if label in labels:
            raise SystemExit(f"two adaptors named {label}")
        files.append(Path(f))
        labels.append(label)
        if at:
            only_at[label] = {int(x) for x in at.split(",")}
    adaptor = {k: load_adaptor(f) for k, f in zip(labels, files)}
    judge = wm.load_judge(judge_dir())
    out: dict[str, Any] = {"model": str(path), "sampler": args.sampler, "guidance": args.guidance,
                           "max_loss_points": args.max_loss,
                           "adaptors": {k: {"file": str(f), **a.config} for (k, a), f in zip(adaptor.items(), files)},
                           "threads": torch.get_num_threads(), "runs": []}
    for steps in args.steps:
        ss = settings(args.periods, args.depths, args.dc_intervals, args.dc_branches, adaptor, steps, only_at)
        out["runs"].append(compare(pipe, judge, ss, steps, args, adaptor))
    if args.write_profile:
        write_profile(profile_path(spec), loaded.model_hash, args.sampler, out["runs"], args.argv,
                      dict(zip(labels, files)))
        out["profile"] = str(profile_path(spec))
    if args.sd15:
        out["sd15_unet"] = sd15_unet_loop(steps=args.sd15_steps, period=args.sd15_period, rounds=2)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
