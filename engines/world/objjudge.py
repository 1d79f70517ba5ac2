"""The per-object judge: reads *every* object of a 64×64 world image, one 3×3 grid cell at a time.

WorldEval's original judge (``models.Judge``) reads only the primary object of single-object
scenes, so it cannot score "a red square and a blue circle". This one predicts, for each of the
9 cells of the world's layout (``generator.CELLS``), whether an object sits there and its shape,
colour, size and style, plus the background. The cell head is shared by all cells (it sees a
fixed-size window of the feature map resampled around the cell centre), so every object in every
training scene teaches the same head, and binding is structural: the attributes read for a cell
come from that cell's window, never from elsewhere in the image.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from engines.world import generator as g

OBJ_HEADS = ("shape", "color", "size", "style")
WEIGHTS_FILE = "objjudge.safetensors"
META_FILE = "objjudge.json"
WINDOW_PX = 32.0  # side of the window read around each cell centre (largest object ≈ 30 px)


def _bn_block(i: int, o: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(i, o, 3, stride=stride, padding=1), nn.BatchNorm2d(o), nn.ReLU(inplace=True))


class ObjJudge(nn.Module):
    """Input (B, 3, 64, 64) in [0, 1]. Output dict: ``present`` (B, 9) logits, ``shape`` (B, 9, 8),
    ``color`` (B, 9, 8), ``size`` (B, 9, 3), ``style`` (B, 9, 4), ``background`` (B, 6)."""

    def __init__(self, width: int = 48) -> None:
        super().__init__()
        w = width
        # full resolution first: stripes and dots have a 6 px period
        self.backbone = nn.Sequential(_bn_block(3, 16), _bn_block(16, 32, 2), _bn_block(32, 32),
                                      _bn_block(32, w, 2), _bn_block(w, w))  # (B, w, 16, 16), stride 4
        self.cell = nn.Sequential(_bn_block(w, 64, 2), _bn_block(64, 64, 2), nn.Flatten(),  # (B*9, 64, 2, 2)
                                  nn.Linear(256, 128), nn.ReLU(inplace=True))
        n = {h: len(g.ATTRIBUTES[h]) for h in OBJ_HEADS}
        self.heads = nn.ModuleDict({h: nn.Linear(128, k) for h, k in n.items()})
        self.present = nn.Linear(128, 1)
        self.bg = nn.Linear(w, len(g.BACKGROUNDS))
        self.register_buffer("grids", self._grids(), persistent=False)  # (9, 8, 8, 2)

    @staticmethod
    def _grids(n: int = 8) -> torch.Tensor:
        """Sampling grids (normalised coords, align_corners=False) of an n×n window of
        ``WINDOW_PX`` px around each cell centre: (9, n, n, 2)."""
        out = []
        for pos in g.CELLS:
            c, r = g.POSITIONS[pos]
            cx, cy = g.CELL[c], g.CELL[r]
            offs = (torch.arange(n, dtype=torch.float32) + 0.5) / n * WINDOW_PX - WINDOW_PX / 2  # px
            ys, xs = torch.meshgrid(cy + offs, cx + offs, indexing="ij")
            out.append(torch.stack([xs / g.SIZE * 2 - 1, ys / g.SIZE * 2 - 1], -1))
        return torch.stack(out)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.backbone(x * 2 - 1)  # (B, w, 16, 16)
        b = f.shape[0]
        k = self.grids.shape[0]
        grid = self.grids.unsqueeze(0).expand(b, -1, -1, -1, -1).reshape(b * k, *self.grids.shape[1:])
        fe = f.unsqueeze(1).expand(-1, k, -1, -1, -1).reshape(b * k, *f.shape[1:])  # (B*9, w, 16, 16)
        win = F.grid_sample(fe, grid, mode="bilinear", padding_mode="zeros", align_corners=False)  # (B*9, w, 8, 8)
        h = self.cell(win)  # (B*9, 128)
        out = {name: m(h).view(b, k, -1) for name, m in self.heads.items()}
        out["present"] = self.present(h).view(b, k)
        out["background"] = self.bg(f.mean((2, 3)))
        return out


@dataclass
class Detection:
    """One object the judge found: its cell and attributes (``conf``: presence probability)."""

    position: str
    shape: str
    color: str
    size: str
    style: str
    conf: float

    def get(self, attr: str) -> str:
        return getattr(self, attr)


def load_objjudge(judge_dir: Path, device: str = "cpu") -> ObjJudge:
    from safetensors.torch import load_file

    meta = json.loads((Path(judge_dir) / META_FILE).read_text()) if (Path(judge_dir) / META_FILE).is_file() else {}
    m = ObjJudge(width=int(meta.get("width", 48)))
    m.load_state_dict(load_file(str(Path(judge_dir) / WEIGHTS_FILE)))
    return m.to(device).eval()


@torch.no_grad()
def read_scenes(model: ObjJudge, images: torch.Tensor, batch: int = 256,
                threshold: float = 0.5) -> list[tuple[str, list[Detection]]]:
    """images (N, 3, 64, 64) in [0, 1] -> per image (background, detections in cell order)."""
    out: list[tuple[str, list[Detection]]] = []
    bgs = list(g.BACKGROUNDS)
    for i in range(0, len(images), batch):
        o = model(images[i:i + batch])
        p = o["present"].sigmoid()  # (b, 9)
        idx = {h: o[h].argmax(-1) for h in OBJ_HEADS}  # (b, 9) each
        bg = o["background"].argmax(-1)
        for j in range(len(p)):
            dets = [Detection(g.CELLS[k], *(g.ATTRIBUTES[h][int(idx[h][j, k])] for h in OBJ_HEADS), float(p[j, k]))
                    for k in range(len(g.CELLS)) if p[j, k] >= threshold]
            out.append((bgs[int(bg[j])], dets))
    return out
