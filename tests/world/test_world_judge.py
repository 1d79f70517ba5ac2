"""WorldEval's judge: shipped weights read every attribute of fresh generator images."""
from __future__ import annotations

import numpy as np
import torch

from engines.world import generator as g
from engines.world.models import Judge, judge_predict, load_judge
from engines.world.paths import judge_dir

N = 1000  # large enough that ≥ 0.98 is meaningful (binomial SD at p=0.98 is ~0.004)


def test_judge_accuracy_on_fresh_images() -> None:
    judge = load_judge(judge_dir())
    ss = list(g.samples(31337, N, "all"))  # a seed never used in training
    x = torch.from_numpy(np.stack([s.image for s in ss])).permute(0, 3, 1, 2).float() / 255
    pred = judge_predict(judge, x)
    acc = {h: float(np.mean([p == s.labels[h] for p, s in zip(pred[h], ss)])) for h in Judge.HEADS}
    for h in ("shape", "color", "position", "background", "style"):
        assert acc[h] >= 0.98, acc


def test_judge_is_not_fooled_by_a_blank_image() -> None:
    judge = load_judge(judge_dir())
    blank = torch.ones(1, 3, 64, 64) * torch.tensor(g.BACKGROUNDS["white"]).view(1, 3, 1, 1) / 255
    s = g.make_sample(0, 1, "all")
    real = torch.from_numpy(s.image).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        logits_blank, logits_real = judge(blank), judge(real)
    # a real object is read with far more confidence than nothing at all
    conf = lambda lg: float(torch.softmax(lg["shape"], 1).max())  # noqa: E731
    assert conf(logits_real) > conf(logits_blank) or conf(logits_real) > 0.99
