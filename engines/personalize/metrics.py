"""Personalization metrics on the embedded world, in the spirit of DreamBooth's DINO / CLIP-I / CLIP-T:

- ``subject_fidelity``: how sure a judge head that knows the subject is that a generated image
  shows it — a logistic probe on the world judge's 256-d penultimate features, fitted (seeded, in
  about a second) on real renders of the subject against ordinary world objects; mean probability.
- ``subject_similarity``: DINO-style cosine similarity, in the same feature space, between each
  generated image and a real photo of the subject in the context the prompt asked for. (The judge
  was trained on world objects, so its features mostly encode background and position: this
  figure moves little; the probe is the discriminative one.)
- ``prompt_fidelity``: the judge's accuracy on that context — background and position — for
  prompts the training photos never showed ("… top left on a navy background").
- ``base_drift``: RMS pixel change (0–1 scale) of class-word images ("a photo of creature …",
  no subject word) between the base model and the adapted one, same seeds: what prior
  preservation protects.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from engines.world import models as M


@torch.no_grad()
def judge_features(judge: M.Judge, x: torch.Tensor) -> torch.Tensor:
    """[N, 3, 64, 64] in [0, 1] -> [N, 256] penultimate judge features."""
    judge.eval()
    return judge.fc(judge.features(x * 2 - 1))


def to_tensor(images: list[Any]) -> torch.Tensor:
    """PIL images -> [N, 3, 64, 64] in [0, 1]."""
    return torch.stack([torch.from_numpy(np.asarray(im.convert("RGB").resize((64, 64)), np.float32) / 255.0)
                        .permute(2, 0, 1) for im in images])


def generate(pipe: Any, prompts: list[str], seeds: list[int], steps: int = 20, guidance: float = 4.0) -> torch.Tensor:
    """One image per (prompt, seed) [P·S, 3, 64, 64] in [0, 1] (prompt-major); batch-independent seeds."""
    from engines.world import generator as g

    out = []
    pipe.set_progress_bar_config(disable=True)
    for s in seeds:
        gens = [torch.Generator().manual_seed(s * 100_003 + i) for i in range(len(prompts))]
        im = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, generator=gens, output_type="np",
                  height=g.SIZE, width=g.SIZE).images  # [P, 64, 64, 3]
        out.append(torch.from_numpy(np.asarray(im)).permute(0, 3, 1, 2).float())
    x = torch.stack(out, 1)  # [P, S, 3, 64, 64]
    return x.flatten(0, 1).clamp(0, 1)


def subject_probe(judge: M.Judge, n: int = 256, seed: int = 7) -> Any:
    """A judge head that knows the subject: logistic regression on judge features, real subject
    renders (not the demo photos' seed) vs single world objects; returns images -> P(subject) [N]."""
    from engines.world import generator as g

    pos = [s.image for s in g.subject_samples(n, seed=seed + 1000, name="zorb")]
    neg = [g.make_sample(seed=seed, index=i).image for i in range(n)]
    x = torch.from_numpy(np.stack(pos + neg)).permute(0, 3, 1, 2).float() / 255.0  # [2n, 3, 64, 64]
    f = judge_features(judge, x)  # [2n, 256]
    mu, sd = f.mean(0), f.std(0) + 1e-6
    z = (f - mu) / sd
    y = torch.cat([torch.ones(n), torch.zeros(n)])
    w = torch.zeros(z.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=0.05)
    with torch.enable_grad():
        for _ in range(300):  # full batch, zero init: deterministic
            loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, y) + 1e-3 * (w ** 2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    w, b = w.detach(), b.detach()
    return lambda imgs: torch.sigmoid(((judge_features(judge, imgs) - mu) / sd) @ w + b)


def subject_scores(judge: M.Judge, gen: torch.Tensor, refs: torch.Tensor, labels: list[dict[str, str]],
                   probe: Any = None) -> dict[str, float]:
    """gen [N, 3, 64, 64], refs [N, 3, 64, 64] (the real subject in row i's context), labels per row."""
    from engines.world import generator as g

    probe = probe or subject_probe(judge)
    fg, fr = judge_features(judge, gen), judge_features(judge, refs)
    subj = torch.nn.functional.cosine_similarity(fg, fr, dim=1)  # [N]
    prob = probe(gen)  # [N]
    logits = judge(gen * 1.0)
    bg = [g.ATTRIBUTES["background"][i] for i in logits["background"].argmax(1).tolist()]
    pos = [g.ATTRIBUTES["position"][i] for i in logits["position"].argmax(1).tolist()]
    bg_acc = float(np.mean([b == lab["background"] for b, lab in zip(bg, labels)]))
    pos_acc = float(np.mean([p == lab["position"] for p, lab in zip(pos, labels)]))
    return {"subject_fidelity": round(float(prob.mean()), 4), "subject_similarity": round(float(subj.mean()), 4),
            "prompt_fidelity": round((bg_acc + pos_acc) / 2, 4),
            "background_acc": round(bg_acc, 4), "position_acc": round(pos_acc, 4)}


def drift(base: torch.Tensor, adapted: torch.Tensor) -> float:
    """RMS pixel difference [0, 1] between paired images [N, 3, 64, 64]."""
    return round(float(((base - adapted) ** 2).mean(dim=(1, 2, 3)).sqrt().mean()), 4)


def evaluate(pipe: Any, base_pipe: Any, judge: M.Judge, subject_word: str, class_word: str,
             instance_prompt: str = "a photo of {subject} {class}", n_contexts: int = 8, seeds: tuple[int, ...] = (0, 1),
             steps: int = 20, guidance: float = 4.0, avoid: set[tuple[str, str]] | None = None,
             base_images: torch.Tensor | None = None, probe: Any = None) -> tuple[dict[str, Any], torch.Tensor]:
    """All three metrics for an adapted pipeline, and its subject images [N, 3, 64, 64]
    (``base_pipe`` only for ``base_drift``; pass ``base_images`` to reuse its class-prompt images)."""
    from engines.personalize.demo import eval_contexts, render_subject

    ctxs = eval_contexts(n_contexts, avoid=avoid)
    fill = instance_prompt.replace("{subject}", subject_word).replace("{class}", class_word)
    prompts = [f"{fill} {c['context']}" for c in ctxs]
    gen = generate(pipe, prompts, list(seeds), steps, guidance)
    labels = [c for c in ctxs for _ in seeds]
    refs = to_tensor([render_subject(c["position"], c["background"], seed=j) for c in ctxs for j in range(len(seeds))])
    res = subject_scores(judge, gen, refs, labels, probe)
    cls = instance_prompt.replace("{subject} ", "").replace("{subject}", "").replace("{class}", class_word)
    class_prompts = [f"{cls} {c['context']}".strip() for c in ctxs[: max(2, n_contexts // 2)]]
    base_x = base_images if base_images is not None else generate(base_pipe, class_prompts, list(seeds), steps, guidance)
    res["base_drift"] = drift(base_x, generate(pipe, class_prompts, list(seeds), steps, guidance))
    res.update(images=len(gen), contexts=len(ctxs), seeds=list(seeds), steps=steps, guidance=guidance)
    return res, gen
