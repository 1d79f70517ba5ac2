"""Train the embedded world's models:
``python -m engines.world.train STAGE [--resume] [--steps N] [--out DIR] [--install]``
(``studio train-embedded ...`` calls ``main``).

Stages, one module each (reproducible from fixed seeds, checkpointed, resumable with ``--resume``):

- ``judge`` (``train_judge``): WorldEval's CNN on fresh generator images.
- ``vae``   (``train_vae``):   AutoencoderKL, loss weighted towards object pixels, until ≥ 33 dB;
  then the gate (the judge's accuracy on reconstructions) goes to ``vae/gate.json``.
- ``text``  (``train_text``):  head start for the CLIP text encoder: predict every attribute from the caption.
- ``unet``  (``train_unet``):  UNet2DConditionModel on cached latents (v-prediction, min-SNR, EMA);
  refuses to start unless the VAE gate passes; keeps the best exported pipeline in ``unet/best``.
- ``all``:  the above in order.

Everything goes to ``--out`` (default ``$STUDIO_DATA_DIR/world-train``, i.e.
``~/.studio/world-train``): ``<stage>/state.pt`` (checkpoint), ``<stage>/log.csv`` (losses),
``<stage>/loss.png``, the models. Nothing in the source tree changes unless ``--install`` is
given: then the judge goes to ``engines/world/weights/judge/``, the best U-Net pipeline to
``engines/world/weights/sd/`` (whenever it improves) and the loss curves to ``docs/img/``.
Measurements (judge accuracy, VAE gate, quick WorldEval) come from ``engines.world.eval``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from engines.world.paths import train_dir
from engines.world.train_common import say

STAGES = ("judge", "vae", "text", "unet")


def run_stage(stage: str, out: Path, steps: int | None = None, resume: bool = False, install: bool = False,
              **kw: object) -> dict:
    """Run one stage with its default step count unless ``steps`` is given."""
    if stage == "judge":
        from engines.world.train_judge import DEFAULT_STEPS, train_judge as fn
    elif stage == "vae":
        from engines.world.train_vae import DEFAULT_STEPS, train_vae as fn
    elif stage == "text":
        from engines.world.train_text import DEFAULT_STEPS, train_text as fn
    elif stage == "unet":
        from engines.world.train_unet import DEFAULT_STEPS, train_unet as fn
    else:
        raise ValueError(f"unknown stage {stage!r}; one of {', '.join(STAGES)}")
    return fn(Path(out), steps or DEFAULT_STEPS, resume, install, **kw)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engines.world.train",
                                 description="Train the embedded world's models (docs/embedded-world.md).")
    ap.add_argument("stage", choices=STAGES + ("all",))
    ap.add_argument("--resume", action="store_true", help="continue from <out>/<stage>/state.pt")
    ap.add_argument("--steps", type=int, default=None, help="total steps for the stage (default per stage)")
    ap.add_argument("--out", type=Path, default=None,
                    help="output dir (default: $STUDIO_DATA_DIR/world-train, i.e. ~/.studio/world-train)")
    ap.add_argument("--install", action="store_true",
                    help="also install the results into the package (engines/world/weights/judge, weights/sd) "
                         "and the loss curves into docs/img")
    ap.add_argument("--decay-from", type=int, default=None,
                    help="unet: cosine-decay the LR to 10%% from this step to --steps (default: constant)")
    args = ap.parse_args(argv)
    out = args.out or train_dir()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    stages = STAGES if args.stage == "all" else (args.stage,)
    for st in stages:
        t = time.time()
        kw = {"decay_from": args.decay_from} if st == "unet" else {}
        run_stage(st, out, args.steps, args.resume, args.install, **kw)
        say(f"stage {st} took {time.time() - t:.0f}s (output in {out / st})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
