"""Adapter switching and step-time overheads on an SD1.5-shaped U-Net (random weights).

    studio bench adapters --json [--density 0.01] [--rank 16] [--rounds 3] [--latent 32]

- ``lora_fuse_unfuse_ms``: peft LoRA r=16 on the attention and feed-forward linears, merge
  + unmerge of every layer (what ``fuse_lora``/``unfuse_lora`` do on a switch).
- ``shira_switch_ms``: SHiRA at ``density`` on the same linears, switching adapter A → B in
  fused mode (restore A's entries by index, scatter B's).
- ``peft_shira_merge_unmerge_ms``: peft's own SHiRA merge + unmerge at the same parameter
  budget, for reference.
- ``lora_unfused_step_ratio`` / ``shira_fused_step_ratio``: U-Net step time (CFG batch 2) with
  LoRA active but unfused / with SHiRA fused, over the plain U-Net. Interleaved rounds.

On the embedded model (``bench/adapter_quality.py``; skipped with ``--no-quality``, alone with
``--quality-only``): ``concept_retention`` per method (baseline mode, mean over seeds and pairs),
and under ``"quality"`` the per-pair / per-mode means with 95 % intervals, paired comparisons and
diversity / data copying at high adapter strength. ``--unet tiny`` times a toy U-Net (tests).
Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from bench import adapter_quality as quality
from bench import add_threads_arg, apply_threads
from bench.clockwork import SD15_UNET


def _ms(fn, repeats: int) -> float:  # noqa: ANN001
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1000)
    return statistics.median(ts)


def _r(x: float, nd: int) -> float | None:
    return None if x != x else round(x, nd)  # NaN (skipped) -> null


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="studio bench adapters")
    ap.add_argument("--density", type=float, default=0.01)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--latent", type=int, default=32, help="latent side (32 = 256x256 images)")
    ap.add_argument("--switch-only", action="store_true", help="skip the step-time ratios")
    ap.add_argument("--unet", default="sd15", choices=["sd15", "tiny"], help="U-Net shape for the timings (tiny: tests)")
    ap.add_argument("--no-quality", action="store_true", help="skip concept retention / diversity (minutes)")
    ap.add_argument("--quality-only", action="store_true", help="only concept retention / diversity")
    add_threads_arg(ap)
    ap.add_argument("--json", action="store_true")
    quality.add_args(ap)
    args = ap.parse_args(argv)
    apply_threads(args)
    res = {} if args.quality_only else timings(args)
    if not args.no_quality:
        q = quality.run(args)
        res |= {"concept_retention": q["concept_retention"], "quality": q}
    print(json.dumps(res))
    return 0


TINY_UNET = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
                 cross_attention_dim=768, attention_head_dim=4, norm_num_groups=8,
                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))


@torch.no_grad()  # scoped: a global set_grad_enabled(False) here broke the quality stage's training after it
def timings(args: argparse.Namespace) -> dict:
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig, ShiraConfig, inject_adapter_in_model
    from peft.tuners.tuners_utils import BaseTunerLayer

    from engines.adapters.shira import DEFAULT_TARGETS, FusedSwitcher, random_adapter, target_linears

    cfg = TINY_UNET if args.unet == "tiny" else SD15_UNET
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**cfg).eval()
    lins = target_linears(unet)
    n_lin = sum(m.weight.numel() for m in lins.values())
    x = torch.randn(2, 4, args.latent, args.latent)
    ehs = torch.randn(2, 77, 768)
    t = torch.tensor(500)

    def step() -> None:
        unet(x, t, encoder_hidden_states=ehs)

    # SHiRA: two adapters switched A <-> B in fused mode; LoRA r=16 through peft on the same
    # linears (random B so the merge is real work). The switcher edits the Linear under the
    # LoRA wrapper, so both live on one U-Net and are timed interleaved, round by round.
    a = random_adapter(unet, args.density, seed=1)
    b = random_adapter(unet, args.density, seed=2)
    lcfg = LoraConfig(r=args.rank, lora_alpha=args.rank, target_modules=list(DEFAULT_TARGETS), init_lora_weights=False)
    inject_adapter_in_model(lcfg, unet, adapter_name="lora")
    tuners = [m for m in unet.modules() if isinstance(m, BaseTunerLayer)]
    lora_params = sum(p.numel() for n, p in unet.named_parameters() if "lora_" in n)
    sw = FusedSwitcher(unet)
    sw.apply([(a, 1.0)])
    flip = {"next": b}

    def switch() -> None:
        cur = flip["next"]
        sw.apply([(cur, 1.0)])
        flip["next"] = a if cur is b else b

    def fuse_unfuse() -> None:
        for m in tuners:
            m.merge()
        for m in tuners:
            m.unmerge()

    def lora(on: bool) -> None:
        for m in tuners:
            m.enable_adapters(on)

    switch()
    fuse_unfuse()  # warm-up
    shira_t, lora_t = [], []
    for _ in range(max(3, args.rounds)):
        shira_t.append(_ms(switch, 3))
        lora_t.append(_ms(fuse_unfuse, 1))
    shira_ms, lora_ms = statistics.median(shira_t), statistics.median(lora_t)
    # step time: plain / LoRA unfused / SHiRA fused, interleaved
    base_steps, shira_steps, lora_steps = [], [], []
    sw.restore()
    for _ in range(0 if args.switch_only else args.rounds):
        lora(False)
        base_steps.append(_ms(step, 1))
        lora(True)
        lora_steps.append(_ms(step, 1))
        lora(False)
        sw.apply([(a, 1.0)])
        shira_steps.append(_ms(step, 1))
        sw.restore()
    base2 = base_steps

    # peft's SHiRA merge/unmerge at the same parameter budget, for reference
    shira_r = max(1, round(a.n_params() / sum(m.weight.shape[0] + m.weight.shape[1] for m in lins.values())))
    torch.manual_seed(0)
    unet2 = UNet2DConditionModel(**cfg).eval()
    scfg = ShiraConfig(r=shira_r, target_modules=list(DEFAULT_TARGETS), init_weights=False, random_seed=0)
    inject_adapter_in_model(scfg, unet2, adapter_name="shira")
    tuners2 = [m for m in unet2.modules() if isinstance(m, BaseTunerLayer)]

    def peft_shira() -> None:
        for m in tuners2:
            m.merge()
        for m in tuners2:
            m.unmerge()

    peft_shira_ms = _ms(peft_shira, 3)
    b1, s1, b2, l2 = (statistics.median(v) if v else float("nan") for v in (base_steps, shira_steps, base2,
                                                                             lora_steps))
    return {
        "unet_params_m": round(sum(p.numel() for p in unet2.parameters()) / 1e6, 1), "target_linears": len(lins),
        "shira_density": args.density, "shira_params": a.n_params(), "lora_rank": args.rank,
        "lora_params": lora_params, "linear_params": n_lin,
        "lora_fuse_unfuse_ms": round(lora_ms, 1), "shira_switch_ms": round(shira_ms, 1),
        "switch_speedup": round(lora_ms / shira_ms, 2), "peft_shira_merge_unmerge_ms": round(peft_shira_ms, 1),
        "lora_unfused_step_ratio": _r(l2 / b2, 3), "shira_fused_step_ratio": _r(s1 / b1, 3),
        "step_ms_base": _r(b1, 1), "latent": args.latent, "unet": args.unet}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
