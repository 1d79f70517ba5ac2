"""Stage ``text``: a head start for the CLIP text encoder — predict every attribute of both
objects and the background from the caption (linear heads on the EOS state), so cross-attention
starts from features that already separate attributes. Writes ``<out>/text/{model,tokenizer}``."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engines.world import data as D
from engines.world import generator as g
from engines.world import models as M
from engines.world.train_common import Checkpoint, Log, plot_loss, say, stage_dir, tokenize

DEFAULT_STEPS = 400
_TEXT_HEADS = [("shape", 0), ("color", 1), ("size", 2), ("position", 3), ("style", 4)]


def text_targets(scenes: list[g.Scene]) -> dict[str, torch.Tensor]:
    """Class indices for both objects (second object: extra class "none") and the background."""
    rows = np.stack([D.encode_scene(s) for s in scenes]).astype(np.int64)
    t = {}
    for name, j in _TEXT_HEADS:
        t[f"a_{name}"] = torch.from_numpy(rows[:, j])
        second = rows[:, 5 + j]
        t[f"b_{name}"] = torch.from_numpy(np.where(second < 0, len(g.ATTRIBUTES[name]), second))
    t["background"] = torch.from_numpy(rows[:, 10])
    return t


def train_text(out: Path, steps: int = DEFAULT_STEPS, resume: bool = False, install: bool = False,
               batch: int = 64) -> dict:
    from engines.world.tokenizer import load_tokenizer, write_tokenizer

    torch.manual_seed(0)
    work = stage_dir(out, "text")
    write_tokenizer(work / "tokenizer")
    tok = load_tokenizer(work / "tokenizer")
    te = M.build_text_encoder(len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.model_max_length)
    heads = torch.nn.ModuleDict()
    for name, _ in _TEXT_HEADS:
        heads[f"a_{name}"] = torch.nn.Linear(M.TEXT_DIM, len(g.ATTRIBUTES[name]))
        heads[f"b_{name}"] = torch.nn.Linear(M.TEXT_DIM, len(g.ATTRIBUTES[name]) + 1)
    heads["background"] = torch.nn.Linear(M.TEXT_DIM, len(g.BACKGROUNDS))
    opt = torch.optim.AdamW(list(te.parameters()) + list(heads.parameters()), 1e-3, weight_decay=0.01)
    ckpt = Checkpoint(work, model=te, heads=heads, opt=opt)
    st = ckpt.resume(resume)
    start = st["step"]
    log = Log(work / "log.csv", ["step", "loss", "acc"])
    t0 = time.time()
    acc = st.get("acc", float("nan"))
    te.train()
    for step in range(start, steps):
        rng = np.random.default_rng([5, step])
        scenes = [g.sample_scene(rng, "all", p_two=0.3) for _ in range(batch)]
        ids = tokenize(tok, [g.caption(s, rng, drop=False) for s in scenes])
        pooled = te(input_ids=ids).pooler_output  # (B, 128): the EOS token's state
        tg = text_targets(scenes)
        loss = 0.0
        correct = []
        for k, h in heads.items():
            lg = h(pooled)
            loss = loss + F.cross_entropy(lg, tg[k])
            correct.append(float((lg.argmax(1) == tg[k]).float().mean()))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        acc = float(np.mean(correct))
        if step % 20 == 0:
            log.row(step=step, loss=loss.item(), acc=acc)
        if step % 250 == 0 or step == steps - 1:
            say(f"text step {step} loss {loss.item():.4f} mean head acc {acc:.3f} ({time.time() - t0:.0f}s)")
            ckpt.save(step + 1, acc=acc)
    te.save_pretrained(work / "model", safe_serialization=True)
    plot_loss(log, "text", ["loss"], "text encoder head start: attribute cross-entropy", install)
    res = {"final_mean_head_acc": acc, "steps": steps, "train_seconds": round(time.time() - t0, 1)}
    (work / "result.json").write_text(json.dumps(res, indent=2))
    return res
