"""Model-step distillation of a Clockwork adaptor (captions only, no images).

The teacher is the model itself: full sampling trajectories are unrolled from noise for
each caption with the chosen sampler and step count, recording at every U-Net call the
low-res path's input ``r_in(t)`` (output of ``down_blocks[0]``; conv_in's at depth 0), its
output ``r_out(t)`` (output of ``up_blocks[-2]``; of the layer before the last one at depth 0),
the time embedding and the pooled text. The adaptor learns r_out(t) ≈ φ(r_in(t), r_out(t+1),
t_emb, text) with an L2 loss on consecutive steps, plus (``--eps-weight``) the error of the ε
it leads to, through the frozen layers after the cut and combined as classifier-free guidance
combines it. On the embedded model the ε term is what makes long periods usable: feature L2
alone ranks errors by size, not by how much they move the image.

    studio train-clockwork --model embedded [--captions FILE] [--sampler-steps 8 20]
        [--samplers "DPM++ 2M" Euler] [--chain 3] [--iters 3000] [--depth 0|1] [--eps-weight W]

One adaptor serves several samplers and step counts (trajectories of each are mixed in
training: φ sees the time embedding, not the step index); ``--chain`` trains it for clock
periods up to chain + 1.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch


def collect(pipe: Any, captions: list[str], steps: int, guidance: float, seed: int = 0,
            batch: int = 8, on_batch: Callable[[int, int], None] | None = None,
            depth: int = 1, tail: bool = False) -> list[dict[str, torch.Tensor]]:
    """Teacher records: one dict per trajectory with tensors stacked over steps:
    r_in [S, B, c_in, h/2, w/2] (depth 0: full res), r_out [S, B, c_out, h, w], temb [S, B, t_dim],
    text [S, B, D] (r_out stored as fp16: ~half the RAM for long multi-sampler runs).
    ``tail`` also records what the layers after the cut need to turn r_out into ε (see
    ``Tail``): the last up block's skips [S, B, C_k, H, W] as skip0, skip1, …, its time
    embedding emb [S, B, t_dim], and the teacher's ε [S, B, C, H, W]; B is the CFG batch,
    unconditional rows first, and ``guidance`` is kept beside them."""
    from engines.pipelines.clockwork import first_tensor, r_in_block, r_out_block

    unet = pipe.unet
    rec: dict[str, list[torch.Tensor]] = {"r_in": [], "r_out": [], "temb": [], "text": []}
    if tail:
        Tail(unet, depth)  # refuses a cut it cannot run before any sampling
        rec |= {"emb": [], "eps": []} | {f"skip{k}": [] for k in range(len(unet.up_blocks[-1].resnets))}

    def pre(_m: Any, args: tuple, kwargs: dict) -> None:
        ehs = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
        rec["text"].append(ehs.mean(1).detach().cpu())

    hooks = [
        unet.register_forward_pre_hook(pre, with_kwargs=True),
        r_in_block(unet, depth).register_forward_hook(
            lambda _m, _i, o: rec["r_in"].append(first_tensor(o).detach().cpu())),
        r_out_block(unet, depth).register_forward_hook(
            lambda _m, _i, o: rec["r_out"].append(first_tensor(o).detach().cpu().half())),
        unet.time_embedding.register_forward_hook(lambda _m, _i, o: rec["temb"].append(o.detach().cpu())),
    ]
    if tail:
        def top(_m: Any, _a: tuple, kw: dict) -> None:
            rec["emb"].append(kw["temb"].detach().cpu())
            for k, t in enumerate(kw["res_hidden_states_tuple"]):
                rec[f"skip{k}"].append(t.detach().cpu().half())

        hooks += [unet.up_blocks[-1].register_forward_pre_hook(top, with_kwargs=True),
                  unet.register_forward_hook(lambda _m, _i, o: rec["eps"].append(first_tensor(o).detach().cpu()))]
    size = unet.config.sample_size * pipe.vae_scale_factor
    trajectories = []
    try:
        for i in range(0, len(captions), batch):
            chunk = captions[i:i + batch]
            for v in rec.values():
                v.clear()
            gens = [torch.Generator().manual_seed(seed * 1_000_003 + i + k) for k in range(len(chunk))]
            with torch.inference_mode():
                pipe(chunk, num_inference_steps=steps, guidance_scale=guidance, generator=gens, height=size,
                     width=size, output_type="latent")
            trajectories.append({k: torch.stack(v) for k, v in rec.items()}
                                | ({"guidance": torch.tensor(guidance)} if tail else {}))
            if on_batch:
                on_batch(min(i + batch, len(captions)), len(captions))
    finally:
        for h in hooks:
            h.remove()
    return trajectories


class Tail:
    """The layers after the cut (frozen): r_out → ε, so the adaptor can be judged where it
    matters. Feature error is not what the sampler sees — a small error in a channel the last
    layers amplify moves the image more than a large one they ignore, and classifier-free
    guidance multiplies the conditional/unconditional difference by the guidance scale.

    Depth 1: ``up_blocks[-1]`` then the head; depth 0: the last resnet then the head. Only
    last up blocks without attention are supported (the embedded model's; SD's has
    cross-attention, whose text states the teacher records do not keep)."""

    def __init__(self, unet: Any, depth: int) -> None:
        blk = unet.up_blocks[-1]
        if depth not in (0, 1) or getattr(blk, "attentions", None):
            raise ValueError("the ε loss needs depth 0 or 1 and a last up block without attention")
        self.unet, self.depth = unet, depth

    def __call__(self, r_out: torch.Tensor, skips: list[torch.Tensor], emb: torch.Tensor) -> torch.Tensor:
        # r_out [b, c_out, h, w]; skips[k] [b, C_k, h, w] (the last up block's res_hidden_states_tuple)
        u = self.unet
        if self.depth == 1:
            x = u.up_blocks[-1](hidden_states=r_out, temb=emb, res_hidden_states_tuple=tuple(skips))
        else:  # only the last resnet: it consumes skips[0] (the tuple is used from its end)
            x = u.up_blocks[-1].resnets[-1](torch.cat([r_out, skips[0]], 1), emb)
        if u.conv_norm_out is not None:
            x = u.conv_act(u.conv_norm_out(x))
        return u.conv_out(x)  # ε [b, C, H, W]


def _guided(e: torch.Tensor, rows: int, g: float) -> torch.Tensor:
    """ε error as classifier-free guidance combines it: e_u + g (e_c − e_u) per trajectory
    batch of ``rows`` (unconditional half first). e: [n·rows, ...] → [n·rows/2, ...]."""
    e = e.reshape(-1, 2, rows // 2, *e.shape[1:])
    return (e[:, 0] + g * (e[:, 1] - e[:, 0])).flatten(0, 1)


def train(adaptor: torch.nn.Module, trajectories: list[dict[str, torch.Tensor]], iters: int, lr: float = 1e-3,
          batch: int = 32, seed: int = 0, on_step: Callable[[int, float], None] | None = None,
          chain: int = 1, tail: Tail | None = None, eps_weight: float = 1.0, clip: float = 1.0) -> list[float]:
    """L2 between φ's estimates and the teacher's r_out; returns the loss curve.

    ``chain`` k > 1 unrolls φ as the sampler will use it at clock period k + 1: from a full
    step's r_out(s) it predicts s+1 … s+k, each estimate feeding the next, and the loss sums
    over the chain — training on single pairs only (chain 1) lets errors compound between
    full steps, which is what limits the usable period.

    With ``tail`` (trajectories collected with ``tail=True``) the loss adds ``eps_weight`` ×
    the guided ε error of the estimate, both terms divided by what plain reuse scores on
    them (measured once on the first batches), so the weight reads as a ratio."""
    g = random.Random(seed)
    torch.manual_seed(seed)
    pairs = [(ti, s) for ti, tr in enumerate(trajectories) for s in range(1, tr["r_out"].shape[0])]
    rows = trajectories[0]["r_out"].shape[1]
    n_skips = sum(1 for k in trajectories[0] if k.startswith("skip"))
    if tail is not None and (n_skips == 0 or rows % 2):
        raise ValueError("the ε loss needs trajectories collected with tail=True and a CFG batch")
    frozen = [p for p in tail.unet.parameters() if p.requires_grad] if tail is not None else []
    for p in frozen:
        p.requires_grad_(False)

    def terms(pick: list[tuple[int, int]], j: int, est: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        target = torch.cat([trajectories[t]["r_out"][s + j] for t, s in pick]).float()
        feat = torch.nn.functional.mse_loss(est, target)
        if tail is None:
            return feat, torch.zeros(())
        skips = [torch.cat([trajectories[t][f"skip{k}"][s + j] for t, s in pick]).float() for k in range(n_skips)]
        emb = torch.cat([trajectories[t]["emb"][s + j] for t, s in pick]).float()
        eps = torch.cat([trajectories[t]["eps"][s + j] for t, s in pick]).float()
        gs = float(trajectories[pick[0][0]]["guidance"])
        return feat, _guided(tail(est, skips, emb) - eps, rows, gs).pow(2).mean()

    scale = (1.0, 1.0)
    if tail is not None:  # what identity reuse scores on each term
        with torch.no_grad():
            probe = [[pairs[g.randrange(len(pairs))] for _ in range(max(1, batch // rows))] for _ in range(8)]
            ts = [terms(pk, 0, torch.cat([trajectories[t]["r_out"][s - 1] for t, s in pk]).float()) for pk in probe]
        scale = (max(sum(float(a) for a, _ in ts) / len(ts), 1e-12), max(sum(float(b) for _, b in ts) / len(ts), 1e-12))
    opt = torch.optim.AdamW(adaptor.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iters)
    adaptor.train()
    losses = []
    for it in range(iters):
        per = max(1, batch // trajectories[0]["r_out"].shape[1])
        # chain length for this batch: 1..chain; start points leave room for all k steps
        k = 1 + g.randrange(chain) if chain > 1 else 1
        room = [(t, s) for t, s in pairs if s + k <= trajectories[t]["r_out"].shape[0]] or pairs
        k = min([k] + [trajectories[t]["r_out"].shape[0] - s for t, s in room])
        pick = [room[g.randrange(len(room))] for _ in range(per)]
        est = torch.cat([trajectories[t]["r_out"][s - 1] for t, s in pick]).float()  # [b, c_out, h, w]
        loss = torch.zeros(())
        for j in range(k):
            r_in = torch.cat([trajectories[t]["r_in"][s + j] for t, s in pick]).float()
            temb = torch.cat([trajectories[t]["temb"][s + j] for t, s in pick]).float()
            text = torch.cat([trajectories[t]["text"][s + j] for t, s in pick]).float()
            est = adaptor(r_in, est, temb, text)
            feat, eps = terms(pick, j, est)
            loss = loss + feat / scale[0] + (eps_weight * eps / scale[1] if tail is not None else 0.0)
        loss = loss / k
        opt.zero_grad(set_to_none=True)
        loss.backward()
        # the ε term through a chain has heavy-tailed batches (a few steps dominate): clip so one
        # cannot throw the adaptor off
        torch.nn.utils.clip_grad_norm_(adaptor.parameters(), clip)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if on_step:
            on_step(it, losses[-1])
    adaptor.eval()
    for p in frozen:
        p.requires_grad_(True)
    return losses


def identity_loss(trajectories: list[dict[str, torch.Tensor]]) -> float:
    """The loss of plain reuse (φ = r_out(t+1)): what the adaptor must beat."""
    tot, n = 0.0, 0
    for tr in trajectories:
        d = (tr["r_out"][1:].float() - tr["r_out"][:-1].float()).pow(2).mean()
        tot += float(d)
        n += 1
    return tot / max(n, 1)


def default_captions(n: int, seed: int = 0) -> list[str]:
    """World captions when the embedded world is installed, else a small generic set."""
    try:
        import numpy as np

        from engines.world import generator as wg

        rng = np.random.default_rng(seed)
        return [wg.canonical_caption(wg.sample_scene(rng, "train", 0.0)) for _ in range(n)]
    except ImportError:
        base = ["a photo of a cat", "a red car on a street", "a mountain landscape at sunset", "a portrait of a woman",
                "a bowl of fruit on a table", "a city skyline at night", "a watercolor painting of a forest"]
        return [base[i % len(base)] for i in range(n)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="studio train-clockwork", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded", help="'embedded' or a diffusers folder")
    ap.add_argument("--captions", type=Path, default=None, help="text file, one caption per line")
    ap.add_argument("--n-captions", type=int, default=256)
    ap.add_argument("--sampler-steps", type=int, nargs="+", default=[8, 20])
    ap.add_argument("--samplers", nargs="+", default=["DPM++ 2M"], help="A1111-style sampler names")
    ap.add_argument("--chain", type=int, default=1, help="cheap steps unrolled in training (period - 1)")
    ap.add_argument("--guidance", type=float, default=4.0)
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--depth", type=int, default=1,
                    help="resolution levels that run every step (0: only conv_in and the last layer)")
    ap.add_argument("--eps-weight", type=float, default=None,
                    help="weight of the guided ε error (through the frozen layers after the cut) beside the "
                         "feature error; 0: features only, as in the paper; default 1 where the layers after "
                         "the cut have no attention (the embedded model), else 0")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="default: next to the model (picked up by t2i)")
    args = ap.parse_args(argv)
    from engines.base import ModelSpec
    from engines.pipelines.clockwork import adaptor_for, save_adaptor
    from engines.pipelines import load_pipeline, make_scheduler
    from engines.t2i.engine import adaptor_path

    if args.model == "embedded":
        from engines.world.paths import default_model_dir

        path = default_model_dir()
    else:
        path = Path(args.model)
    spec = ModelSpec(ref=args.model, kind="diffusers", path=path)
    loaded = load_pipeline(spec, "cpu", "float32")
    pipe = loaded.pipe
    if args.eps_weight is None:
        try:
            Tail(pipe.unet, args.depth)
            args.eps_weight = 1.0
        except ValueError as e:
            print(f"features-only loss: {e}", file=sys.stderr)
            args.eps_weight = 0.0
    caps = (args.captions.read_text().splitlines() if args.captions else default_captions(args.n_captions, args.seed))
    caps = [c.strip() for c in caps if c.strip()]
    t0 = time.time()
    traj: list[dict[str, torch.Tensor]] = []
    for sampler in args.samplers:
        pipe.scheduler = make_scheduler(sampler, loaded.base_scheduler)
        for steps in args.sampler_steps:
            traj += collect(pipe, caps, steps, args.guidance, args.seed, depth=args.depth, tail=args.eps_weight > 0,
                            on_batch=lambda d, n, s=steps, m=sampler: print(f"teacher {m} {s} steps {d}/{n}",
                                                                              file=sys.stderr))
    t_collect = time.time() - t0
    torch.manual_seed(args.seed)
    adaptor = adaptor_for(pipe.unet, args.hidden, args.depth)
    base = identity_loss(traj)
    tail = Tail(pipe.unet, args.depth) if args.eps_weight > 0 else None
    losses = train(adaptor, traj, args.iters, args.lr, seed=args.seed, chain=args.chain, tail=tail,
                   eps_weight=args.eps_weight,
                   on_step=lambda i, l: print(f"iter {i} loss {l:.5f}", file=sys.stderr) if i % 200 == 0 else None)
    out = args.out or adaptor_path(spec)
    final = sum(losses[-50:]) / min(50, len(losses))
    info = {"samplers": args.samplers, "sampler_steps": args.sampler_steps, "chain": args.chain, "depth": args.depth,
            "eps_weight": args.eps_weight,
            "guidance": args.guidance, "hidden": args.hidden, "captions": len(caps), "iters": args.iters,
            "identity_loss": base, "final_loss": final,
            "model_hash": loaded.model_hash}
    save_adaptor(adaptor, out, info)
    print(json.dumps(info | {"out": str(out), "params": sum(p.numel() for p in adaptor.parameters()),
                             "unet_params": sum(p.numel() for p in pipe.unet.parameters()),
                             "collect_s": round(t_collect, 1), "total_s": round(time.time() - t0, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
