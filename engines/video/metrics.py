"""How good and how steady an edited clip is, against the world's exact edit."""
from __future__ import annotations

import numpy as np


def gt_error(out: np.ndarray, gt: np.ndarray) -> float:
    """Mean absolute error in [0, 1] between edited frames [T, H, W, 3] and the truth."""
    return float(np.abs(out.astype(np.float32) - gt.astype(np.float32)).mean() / 255.0)


def flicker(out: np.ndarray, gt: np.ndarray) -> float:
    """Mean |Δout_t − Δgt_t| over consecutive frames, in [0, 1]: change the truth does not
    have (temporal inconsistency), not penalising the motion itself."""
    do = np.diff(out.astype(np.float32), axis=0)
    dg = np.diff(gt.astype(np.float32), axis=0)
    return float(np.abs(do - dg).mean() / 255.0)


def edit_success(labels_pred: list[dict[str, str]], before: dict[str, str], after: dict[str, str],
                 attribute: str) -> float:
    """Fraction of frames where the judge reads the instructed attribute as changed to the
    target and every other judged attribute (except position, which moves) as kept."""
    ok = 0
    for p in labels_pred:
        good = p.get(attribute) == after[attribute]
        for k, v in before.items():
            if k in (attribute, "position") or k not in p:
                continue
            good &= p[k] == v
        ok += bool(good)
    return ok / max(len(labels_pred), 1)


def judge_labels(judge, frames: np.ndarray, batch: int = 256) -> list[dict[str, str]]:  # noqa: ANN001
    """The world judge's reading of each frame [T, 64, 64, 3] uint8: one label dict per frame."""
    import torch

    from engines.world.models import judge_predict

    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0  # [T, 3, 64, 64]
    with torch.no_grad():
        preds = judge_predict(judge, x, batch)
    return [{k: v[i] for k, v in preds.items()} for i in range(len(frames))]
