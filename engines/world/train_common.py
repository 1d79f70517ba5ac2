"""What every training stage of the embedded world shares: the per-stage work dir, the CSV log
with its loss-curve plot, one checkpoint/resume helper, the judge a run measures with, and the
atomic install into the package (only on ``--install``)."""
from __future__ import annotations

import csv
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engines.world.paths import docs_img_dir, judge_dir


def say(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def stage_dir(out: Path, stage: str) -> Path:
    work = Path(out) / stage
    work.mkdir(parents=True, exist_ok=True)
    return work


class Log:
    """Append-only CSV log (survives resumes) plus a loss-curve PNG on demand."""

    def __init__(self, path: Path, fields: list[str]) -> None:
        self.path, self.fields = path, fields
        new = not path.exists()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.f = path.open("a", newline="")
        self.w = csv.DictWriter(self.f, fields)
        if new:
            self.w.writeheader()

    def row(self, **kw: float) -> None:
        self.w.writerow({k: kw.get(k, "") for k in self.fields})
        self.f.flush()

    def plot(self, png: Path, keys: list[str], title: str, logy: bool = True) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = list(csv.DictReader(self.path.open()))
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
        for k in keys:
            pts = [(float(r["step"]), float(r[k])) for r in rows if r.get(k) not in (None, "")]
            if not pts:
                continue
            x, y = np.array(pts).T
            if len(y) > 50:  # running mean for readability
                w = max(1, len(y) // 50)
                y = np.convolve(y, np.ones(w) / w, mode="valid")
                x = x[w - 1:]
            ax.plot(x, y, label=k)
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(png)
        plt.close(fig)


def plot_loss(log: Log, stage: str, keys: list[str], title: str, install: bool) -> Path:
    """``<stage dir>/loss.png``; with ``install`` also ``docs/img/world-<stage>-loss.png``."""
    png = log.path.parent / "loss.png"
    log.plot(png, keys, title)
    if install:
        dst = docs_img_dir() / f"world-{stage}-loss.png"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, dst)
    return png


class Checkpoint:
    """``<stage dir>/state.pt``: the state of the objects it was given (anything with
    ``state_dict``/``load_state_dict``: models, optimisers) plus plain extras such as the step.

    ``resume()`` is the one resume path of every stage; ``save()`` writes atomically."""

    def __init__(self, work: Path, **objs: Any) -> None:
        self.path = Path(work) / "state.pt"
        self.objs = objs

    def resume(self, enabled: bool) -> dict[str, Any]:
        """Load the saved state into the objects when ``enabled`` and a checkpoint exists; returns
        the extras (``{"step": 0}`` for a fresh start)."""
        if not (enabled and self.path.exists()):
            return {"step": 0}
        st = torch.load(self.path, weights_only=False)  # our own file
        for k, o in self.objs.items():
            o.load_state_dict(st[k])
        extras = {k: v for k, v in st.items() if k not in self.objs}
        say(f"resumed {self.path} at step {extras.get('step')}")
        return extras

    def save(self, step: int, **extras: Any) -> None:
        state = {k: o.state_dict() for k, o in self.objs.items()} | extras | {"step": step}
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.path)


def tokenize(tok, captions: list[str]) -> torch.Tensor:  # noqa: ANN001
    """Padded CLIP input ids [N, max_len]."""
    return tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True,
               return_tensors="pt").input_ids


def trained_judge(out: Path) -> Path:
    """The judge a run measures with: the one trained into ``out`` (stage ``judge``) if there is
    one, else the shipped judge."""
    own = Path(out) / "judge" / "model"
    return own if (own / "judge.safetensors").is_file() else judge_dir()


def install_dir(src: Path, dst: Path, extra: dict[str, Path] | None = None) -> None:
    """Copy the directory ``src`` to ``dst`` by an atomic swap (readers never see half a model);
    ``extra`` maps file names to more files to put in it."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    for name, f in (extra or {}).items():
        shutil.copy(f, tmp / name)
    swap_in(tmp, dst)


def swap_in(tmp: Path, dst: Path) -> None:
    """Replace the directory ``dst`` by the finished ``tmp`` (renames only: never half a model)."""
    old = dst.with_name(dst.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dst.exists():
        dst.rename(old)
    tmp.rename(dst)
    shutil.rmtree(old, ignore_errors=True)
