"""Soak: does a long-lived worker stay bounded while people cycle models and adapters?

Starts a real ``studio worker`` process on a scratch data dir, trains 12 adapters (LoRA,
SHiRA and FouRA on four demo sets) through the real ``adapter-train`` engine, makes two
variants of the embedded model (same architecture, perturbed U-Net weights, so every
adapter fits every model), then submits t2i jobs one after another, cycling through the
3 models × 12 adapters (one or two adapters per job). It reads the worker's resident
memory after the first block of jobs and at the end, and each job's run time from the
jobs table.

    studio bench soak --json [--jobs 300 --more 100 --steps 4]

Goals (issue 13): ``growth_ratio`` = rss_after_all / rss_after_first_block ≤ 1.10 and
``p50_ratio`` = p50 job time of the last block / the first ≤ 1.05.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

CACHE = Path(".cache/bench-soak")  # trained adapters, reused across runs
DEMOS = ("striped-style", "dotted-style", "outlined-style", "new-concept")
METHODS = ("lora", "shira", "foura")


def rss_mb(pid: int) -> float:
    """Resident set size of a process (VmRSS), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def make_variants(base: Path, dest: Path, n: int = 2) -> list[Path]:
    """Copies of a diffusers model with every U-Net weight perturbed by seeded noise (1 %)."""
    import torch
    from safetensors.torch import load_file, save_file

    out = []
    for k in range(n):
        d = dest / f"variant-{k + 1}"
        shutil.copytree(base, d, ignore=shutil.ignore_patterns("*.clockwork*", "clockwork_*"))
        g = torch.Generator().manual_seed(1000 + k)
        for f in (d / "unet").glob("*.safetensors"):
            t = load_file(str(f))
            t = {name: (v + 0.01 * v.float().std().nan_to_num() * torch.randn(v.shape, generator=g)).to(v.dtype)
                 if v.is_floating_point() and v.numel() > 1 else v for name, v in t.items()}
            save_file(t, str(f))
        out.append(d)
    return out


def train_adapters(model_dir: Path, dest: Path, steps: int) -> list[Path]:
    """Twelve real adapters from the adapter-train engine: 4 demo sets × LoRA/SHiRA/FouRA.
    Kept in ``dest`` (a cache keyed by the model's hash and the step count) across runs."""
    from engines.adapters.engine import AdapterTrainEngine
    from engines.adapters.params import AdapterTrainParams
    from engines.base import EngineContext, ModelSpec

    out = []
    dest.mkdir(parents=True, exist_ok=True)
    for i, demo in enumerate(DEMOS):
        for method in METHODS:
            done = sorted(dest.glob(f"{method}-{demo}.*safetensors"))
            if done:
                out.append(done[0])
                continue
            work = dest / f"work-{demo}-{method}"
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            p = AdapterTrainParams(model="embedded", demo=demo, method=method, steps=steps, sample_every=0, seed=i,
                                   name=f"{method}-{demo}")
            ctx = EngineContext(work_dir=work, resolve_model=lambda ref: ModelSpec(ref, "embedded", model_dir))
            res = AdapterTrainEngine().run(p, ctx)
            art = next(a for a in res.artifacts if a.kind == "adapter")
            final = dest / art.path.name
            shutil.move(str(art.path), final)
            shutil.rmtree(work)
            out.append(final)
    return out


def _ts(s: Any) -> datetime:
    return s if isinstance(s, datetime) else datetime.fromisoformat(str(s).rstrip("Z"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="studio bench soak")
    ap.add_argument("--jobs", type=int, default=300, help="first block of jobs (RSS read after 1/3 of it)")
    ap.add_argument("--more", type=int, default=100, help="jobs after the first block")
    ap.add_argument("--steps", type=int, default=4, help="denoising steps per t2i job")
    ap.add_argument("--train-steps", type=int, default=3, help="steps per adapter (they only need to exist)")
    ap.add_argument("--adapter-cache-mb", type=int, default=None, help="STUDIO_ADAPTER_CACHE_MB for the worker")
    ap.add_argument("--model-cache-mb", type=int, default=None, help="STUDIO_MODEL_CACHE_MB for the worker")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from studio.config import load
    from studio.model_manager import embedded_model_dir
    from studio.wiring import build

    base = embedded_model_dir()
    with tempfile.TemporaryDirectory(prefix="studio-soak-") as td:
        root = Path(td)
        settings = load(root / "data", auth="off")
        services = build(settings)
        t0 = time.perf_counter()
        variants = make_variants(base, settings.models_dir)
        from engines.pipelines import model_hash
        from engines.base import ModelSpec

        key = model_hash(ModelSpec("embedded", "embedded", base))[:12]
        adapters = train_adapters(base, CACHE / f"{key}-s{args.train_steps}", args.train_steps)
        setup_s = time.perf_counter() - t0
        models = ["embedded"] + [str(v) for v in variants]
        env = dict(os.environ, STUDIO_DATA_DIR=str(settings.data_dir), STUDIO_AUTH="off")
        if args.adapter_cache_mb is not None:
            env["STUDIO_ADAPTER_CACHE_MB"] = str(args.adapter_cache_mb)
        if args.model_cache_mb is not None:
            env["STUDIO_MODEL_CACHE_MB"] = str(args.model_cache_mb)
        log_path = root / "worker.log"  # a file, not a pipe: a full pipe would stall the worker
        log_file = open(log_path, "w")  # noqa: SIM115 - closed in finally
        worker = subprocess.Popen([sys.executable, "-m", "studio", "worker", "--data-dir", str(settings.data_dir)],
                                  env=env, stdout=log_file, stderr=subprocess.STDOUT, text=True)
        total = args.jobs + args.more
        first_mark = args.jobs // 3  # "after 100" of 300
        rss: dict[str, float] = {}
        times: list[float] = []
        try:
            for i in range(total):
                mix = [{"adapter": str(adapters[i % 12]), "weight": 0.8}]
                if i % 3 == 0:  # every third job mixes two adapters of different kinds
                    mix.append({"adapter": str(adapters[(i * 5 + 1) % 12]), "weight": 0.5})
                params = {"model": models[(i // 4) % 3], "prompt": "a red circle on a blue background",
                          "steps": args.steps, "seed": i, "adapters": mix, "preview_every": 2}
                job = services.jobs.submit("t2i", params)
                deadline = time.monotonic() + 300
                while True:
                    j = services.jobs.get(job.id)
                    if j.status in ("completed", "failed", "canceled"):
                        break
                    if worker.poll() is not None:
                        raise SystemExit(f"worker exited ({worker.returncode}): {log_path.read_text()[-2000:]}")
                    if time.monotonic() > deadline:
                        raise SystemExit(f"job {i} stuck in {j.status}")
                    time.sleep(0.01)
                if j.status != "completed":
                    raise SystemExit(f"job {i} {j.status}: {j.error or j.message}")
                times.append((_ts(j.finished_at) - _ts(j.started_at)).total_seconds())
                if i + 1 == first_mark:
                    rss["after_first"] = rss_mb(worker.pid)
                if i + 1 == total:
                    rss["after_all"] = rss_mb(worker.pid)
        finally:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
            log_file.close()
        block = max(1, args.more)
        p50_first = statistics.median(times[:block])
        p50_last = statistics.median(times[-block:])
        previews = sum(1 for _ in settings.previews_dir.glob("*")) if settings.previews_dir.is_dir() else 0
        work_left = sum(1 for _ in settings.work_root.iterdir()) if settings.work_root.is_dir() else 0
        out = {"jobs": total, "models": len(models), "adapters": len(adapters), "steps": args.steps,
               f"rss_mb_after_{first_mark}": round(rss["after_first"], 1),
               f"rss_mb_after_{total}": round(rss["after_all"], 1),
               "growth_ratio": round(rss["after_all"] / rss["after_first"], 3),
               f"p50_job_s_first_{block}": round(p50_first, 3), f"p50_job_s_last_{block}": round(p50_last, 3),
               "p50_ratio": round(p50_last / p50_first, 3),
               "p50_job_s_by_block": [round(statistics.median(times[i:i + block]), 3) for i in range(0, total, block)],
               "previews_left": previews, "work_dirs_left": work_left, "setup_s": round(setup_s, 1),
               "goals": {"growth_ratio": 1.10, "p50_ratio": 1.05}}
        out["met"] = out["growth_ratio"] <= 1.10 and out["p50_ratio"] <= 1.05
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
