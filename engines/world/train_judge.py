"""Stage ``judge``: WorldEval's CNN on single-object images of every (shape, colour) pair,
including the held-out ones. Writes ``<out>/judge/model/judge.{safetensors,json}``; with
``install`` also ``engines/world/weights/judge/`` and the loss curve in docs/img."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engines.world import data as D
from engines.world import generator as g
from engines.world import models as M
from engines.world.eval import judge_accuracy
from engines.world.paths import judge_dir
from engines.world.train_common import Checkpoint, Log, install_dir, plot_loss, say, stage_dir

DEFAULT_STEPS = 1800


def train_judge(out: Path, steps: int = DEFAULT_STEPS, resume: bool = False, install: bool = False,
                n_data: int = 24000, n_eval: int = 2000) -> dict:
    torch.manual_seed(0)
    work = stage_dir(out, "judge")
    data = D.dataset(out, "judge", seed=1, n=n_data, split="all", p_two=0.0)
    x_all = D.to_tensor(data["images"])
    y_all = {k: torch.from_numpy(v.astype(np.int64)) for k, v in D.label_indices(data["scenes"]).items()}
    model = M.Judge()
    opt = torch.optim.AdamW(model.parameters(), 2e-3, weight_decay=1e-4)
    ckpt = Checkpoint(work, model=model, opt=opt)
    start = ckpt.resume(resume)["step"]
    log = Log(work / "log.csv", ["step", "loss"])
    gen = torch.Generator().manual_seed(start)
    model.train()
    t0 = time.time()
    for step in range(start, steps):
        idx = torch.randint(0, len(x_all), (64,), generator=gen)
        x = x_all[idx]
        # light augmentation (blur/noise) so the judge also reads slightly soft VAE outputs
        if step % 2:
            x = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, 1) * 0.5 + x * 0.5
        x = (x + 0.02 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
        lr = 2e-3 * min(1.0, (step + 1) / 150) * (0.5 * (1 + math.cos(math.pi * step / steps)) * 0.97 + 0.03)
        for pg in opt.param_groups:
            pg["lr"] = lr
        logits = model(x)
        loss = sum(F.cross_entropy(logits[h], y_all[h][idx]) for h in M.Judge.HEADS)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 20 == 0:
            log.row(step=step, loss=loss.item())
        if step % 200 == 0 or step == steps - 1:
            say(f"judge step {step} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
            ckpt.save(step + 1)
    model.eval()
    acc = judge_accuracy(model, n=n_eval, seed=12345)
    say(f"judge accuracy on fresh images: {acc}")
    from safetensors.torch import save_file

    dst = work / "model"
    dst.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(dst / "judge.safetensors"))
    meta = {f"accuracy_fresh_{n_eval}": acc, "steps": steps, "train_seconds": round(time.time() - t0, 1),
            "attributes": {h: g.ATTRIBUTES[h] for h in M.Judge.HEADS},
            "note": "reads the primary (first-named) object of single-object scenes"}
    (dst / "judge.json").write_text(json.dumps(meta, indent=2))
    plot_loss(log, "judge", ["loss"], "judge: summed cross-entropy", install)
    if install:
        install_dir(dst, judge_dir())
        say(f"installed the judge into {judge_dir()}")
    return meta
