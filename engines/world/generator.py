"""The embedded world: a deterministic, seeded generator of small captioned scenes.

Everything the Studio ships offline (the default text-to-image model, its judge) is trained on
this world, so it is designed to be *learnable on a 2-core CPU* and *measurable*:

- flat colours rendered 4× supersampled and box-downsampled (clean anti-aliased edges);
- objects are ≥ 14 px so they survive the autoencoder's 4× downsample;
- every image comes with exact labels and the object mask (the VAE loss is weighted by it);
- a fixed set of (shape, colour) pairs is never used for training (``HELDOUT``) so evals can
  ask for unseen combinations.

Also: edit pairs (same scene, one attribute changed, with an instruction) and a novel
"subject" sprite (not in the training distribution) for personalization engines.
"""
from __future__ import annotations

import math
from functools import lru_cache
from dataclasses import dataclass, field, replace
from typing import Iterator

import numpy as np

__all__ = [
    "SHAPES", "COLORS", "BACKGROUNDS", "POSITIONS", "STYLES", "SIZES", "HELDOUT", "SIZE",
    "ATTRIBUTES", "Obj", "Scene", "Sample", "EditPair", "sample_scene", "render", "caption",
    "canonical_caption", "make_sample", "samples", "edit_pair", "subject_samples", "world_words",
]

SIZE = 64  # output resolution (pixels)
SS = 4  # supersampling factor used for rendering

SHAPES = ["circle", "square", "triangle", "star", "heart", "ring", "cross", "diamond"]
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 130, 20),
    "yellow": (245, 225, 30),
    "green": (40, 185, 60),
    "cyan": (40, 215, 225),
    "blue": (35, 80, 235),
    "purple": (145, 45, 205),
    "pink": (250, 120, 190),
}
# Background names never coincide with object colour names, so "red" always means the object.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "gray": (128, 128, 128),
    "beige": (222, 205, 165),
    "navy": (20, 28, 85),
    "dark green": (20, 75, 40),
}
# Grid cell (col, row) in a 3×3 layout.
POSITIONS: dict[str, tuple[int, int]] = {
    "top left": (0, 0), "top": (1, 0), "top right": (2, 0),
    "left": (0, 1), "center": (1, 1), "right": (2, 1),
    "bottom left": (0, 2), "bottom": (1, 2), "bottom right": (2, 2),
}
STYLES = ["solid", "striped", "dotted", "outlined"]
SIZES: dict[str, float] = {"small": 16.0, "medium": 22.0, "large": 28.0}  # diameter, px @64
CELL = (17.0, 32.0, 47.0)  # cell centres, px @64

ATTRIBUTES = {
    "shape": SHAPES, "color": list(COLORS), "position": list(POSITIONS),
    "background": list(BACKGROUNDS), "style": STYLES, "size": list(SIZES),
}

# (shape, colour) pairs never rendered in the training split: one per shape and per colour.
HELDOUT: frozenset[tuple[str, str]] = frozenset({
    ("circle", "purple"), ("square", "orange"), ("triangle", "pink"), ("star", "green"),
    ("heart", "blue"), ("ring", "red"), ("cross", "cyan"), ("diamond", "yellow"),
})


@dataclass(frozen=True)
class Obj:
    shape: str
    color: str
    size: str
    position: str
    style: str
    jitter: tuple[float, float] = (0.0, 0.0)  # px @64, keeps positions from being a lookup table
    scale: float = 1.0  # multiplicative size jitter

    def labels(self) -> dict[str, str]:
        return {"shape": self.shape, "color": self.color, "size": self.size,
                "position": self.position, "style": self.style}


@dataclass(frozen=True)
class Scene:
    background: str
    objects: tuple[Obj, ...]

    @property
    def primary(self) -> Obj:
        """The object the judge and single-object evals score (the first one named)."""
        return self.objects[0]

    def labels(self) -> dict[str, str]:
        """Labels of the primary object plus the background (what the judge reads)."""
        return {**self.primary.labels(), "background": self.background}


@dataclass
class Sample:
    image: np.ndarray  # (64, 64, 3) uint8
    mask: np.ndarray  # (64, 64) float32 in [0, 1], union of object coverage
    caption: str
    scene: Scene
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class EditPair:
    before: Sample
    after: Sample
    instruction: str
    attribute: str  # which attribute changed: shape|color|position|background|style|size


# ---------------------------------------------------------------- geometry

def _shape_polys(shape: str, cx: float, cy: float, d: float) -> tuple[list[list[tuple[float, float]]], list]:
    """Outer polygons and hole polygons for a shape of diameter ``d`` centred at (cx, cy)."""
    r = d / 2

    def circle(rad: float, n: int = 48) -> list[tuple[float, float]]:
        return [(cx + rad * math.cos(2 * math.pi * i / n), cy + rad * math.sin(2 * math.pi * i / n)) for i in range(n)]

    if shape == "circle":
        return [circle(r)], []
    if shape == "ring":
        return [circle(r)], [circle(r * 0.4)]  # a thick band: never confused with an outlined circle
    if shape == "square":
        s = r * 0.86
        return [[(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]], []
    if shape == "diamond":
        return [[(cx, cy - r), (cx + r * 0.72, cy), (cx, cy + r), (cx - r * 0.72, cy)]], []
    if shape == "triangle":
        return [[(cx, cy - r), (cx + r * 0.95, cy + r * 0.75), (cx - r * 0.95, cy + r * 0.75)]], []
    if shape == "star":
        pts = []
        for i in range(10):
            rad = r if i % 2 == 0 else r * 0.45
            a = -math.pi / 2 + i * math.pi / 5
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a) + r * 0.08))
        return [pts], []
    if shape == "cross":
        w = r * 0.38
        return [[(cx - w, cy - r), (cx + w, cy - r), (cx + w, cy - w), (cx + r, cy - w), (cx + r, cy + w),
                 (cx + w, cy + w), (cx + w, cy + r), (cx - w, cy + r), (cx - w, cy + w), (cx - r, cy + w),
                 (cx - r, cy - w), (cx - w, cy - w)]], []
    if shape == "heart":
        pts = []
        for i in range(64):
            t = 2 * math.pi * i / 64
            x = 16 * math.sin(t) ** 3
            y = -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
            pts.append((cx + x / 17 * r, cy + (y + 2.5) / 17 * r))
        return [pts], []
    raise ValueError(f"unknown shape {shape!r}")


def _mask(obj: Obj) -> np.ndarray:
    """Coverage mask of one object at supersampled resolution: (256, 256) float32 in {0, 1}."""
    from PIL import Image, ImageDraw

    n = SIZE * SS
    col, row = POSITIONS[obj.position]
    cx = (CELL[col] + obj.jitter[0]) * SS
    cy = (CELL[row] + obj.jitter[1]) * SS
    d = SIZES[obj.size] * obj.scale * SS
    outer, holes = _shape_polys(obj.shape, cx, cy, d)
    img = Image.new("L", (n, n), 0)
    draw = ImageDraw.Draw(img)
    if obj.style == "outlined":
        width = int(round(2.0 * SS))  # thin, so an outlined circle is clearly not a ring
        for poly in outer + holes:
            draw.polygon(poly, outline=255, width=width)
    else:
        for poly in outer:
            draw.polygon(poly, fill=255)
        for poly in holes:
            draw.polygon(poly, fill=0)
    return np.asarray(img, dtype=np.float32) / 255.0


@lru_cache(maxsize=64)
def _texture(style: str, rgb: tuple[int, int, int]) -> np.ndarray:
    """Surface of a style at supersampled resolution: (256, 256, 3) float32 in [0, 1]."""
    n = SIZE * SS
    base = np.asarray(rgb, dtype=np.float32) / 255.0
    dark = base * 0.35
    tex = np.broadcast_to(base, (n, n, 3)).copy()
    if style in ("solid", "outlined"):
        return tex
    y, x = np.mgrid[0:n, 0:n].astype(np.float32) / SS  # px @64
    if style == "striped":
        sel = ((x + y) % 6.0) < 3.0  # diagonal stripes, period 6 px
    elif style == "dotted":
        sel = ((x % 6.0 - 3.0) ** 2 + (y % 6.0 - 3.0) ** 2) < 1.6 ** 2  # dots every 6 px
    else:
        raise ValueError(f"unknown style {style!r}")
    tex[sel] = dark
    tex.setflags(write=False)  # cached: shared between calls
    return tex


def _down(a: np.ndarray) -> np.ndarray:
    """Box-filter downsample by SS: (256, 256, ...) -> (64, 64, ...)."""
    s = a.shape
    return a.reshape(SIZE, SS, SIZE, SS, *s[2:]).mean(axis=(1, 3))


def render(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Render a scene: returns image (64, 64, 3) uint8 and object mask (64, 64) float32."""
    n = SIZE * SS
    img = np.broadcast_to(np.asarray(BACKGROUNDS[scene.background], np.float32) / 255.0, (n, n, 3)).copy()
    cover = np.zeros((n, n), np.float32)
    for obj in scene.objects:
        m = _mask(obj)
        tex = _texture(obj.style, COLORS[obj.color])
        img = img * (1 - m[..., None]) + tex * m[..., None]
        cover = np.maximum(cover, m)
    out = np.clip(np.rint(_down(img) * 255.0), 0, 255).astype(np.uint8)
    return out, _down(cover).astype(np.float32)


# ---------------------------------------------------------------- sampling

def _far(p: str, q: str) -> bool:
    """Two cells far enough apart that two small/medium objects never overlap."""
    (a, b), (c, d) = POSITIONS[p], POSITIONS[q]
    return max(abs(a - c), abs(b - d)) == 2


def _obj(rng: np.random.Generator, split: str, sizes: list[str], position: str | None = None) -> Obj:
    while True:
        shape = SHAPES[rng.integers(len(SHAPES))]
        color = list(COLORS)[rng.integers(len(COLORS))]
        if split == "train" and (shape, color) in HELDOUT:
            continue
        if split == "heldout" and (shape, color) not in HELDOUT:
            continue
        break
    return Obj(
        shape=shape, color=color,
        size=sizes[rng.integers(len(sizes))],
        position=position or list(POSITIONS)[rng.integers(len(POSITIONS))],
        style=STYLES[rng.integers(len(STYLES))],
        jitter=(float(rng.uniform(-2, 2)), float(rng.uniform(-2, 2))),
        scale=float(rng.uniform(0.92, 1.08)),
    )


def sample_scene(rng: np.random.Generator, split: str = "train", p_two: float = 0.0) -> Scene:
    """Draw a scene. ``split``: "train" (never a HELDOUT pair), "heldout" (only those pairs,
    for every object), or "all". ``p_two``: probability of a second, smaller object."""
    bg = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    if rng.random() < p_two:
        edge = [p for p in POSITIONS if p != "center"]  # the centre has no far partner
        a = _obj(rng, split, ["small", "medium"], position=edge[rng.integers(len(edge))])
        far = [p for p in POSITIONS if _far(a.position, p)]
        b = _obj(rng, split, ["small", "medium"], position=far[rng.integers(len(far))])
        return Scene(bg, (a, b))
    return Scene(bg, (_obj(rng, split, list(SIZES)),))


# ---------------------------------------------------------------- captions

_POS_WORDS = {
    "top left": ["in the top left corner", "at the top left", "in the upper left corner"],
    "top": ["at the top", "at the top center", "near the top"],
    "top right": ["in the top right corner", "at the top right", "in the upper right corner"],
    "left": ["on the left", "at the left", "on the left side"],
    "center": ["in the center", "in the middle", "in the centre"],
    "right": ["on the right", "at the right", "on the right side"],
    "bottom left": ["in the bottom left corner", "at the bottom left", "in the lower left corner"],
    "bottom": ["at the bottom", "at the bottom center", "near the bottom"],
    "bottom right": ["in the bottom right corner", "at the bottom right", "in the lower right corner"],
}
_SIZE_WORDS = {"small": ["small", "tiny"], "medium": ["medium", "medium-sized"], "large": ["large", "big"]}
_STYLE_ADJ = {"solid": ["solid", "plain"], "striped": ["striped"], "dotted": ["dotted", "polka-dot"],
              "outlined": ["outlined", "hollow"]}
_STYLE_SUFFIX = {"solid": ["filled in", "with a solid fill"], "striped": ["with stripes"],
                 "dotted": ["with dots"], "outlined": ["drawn as an outline", "in outline"]}


def _pick(rng: np.random.Generator, xs: list[str]) -> str:
    return xs[rng.integers(len(xs))]


def _obj_phrase(o: Obj, rng: np.random.Generator, drop: bool) -> str:
    """e.g. "a small red striped star in the top left corner" (some parts optional)."""
    size = "" if drop and rng.random() < 0.4 else _pick(rng, _SIZE_WORDS[o.size]) + " "
    style_mode = rng.integers(3)  # 0 adjective, 1 suffix, 2 omitted (only for solid)
    if style_mode == 2 and o.style != "solid":
        style_mode = 0
    adj = _pick(rng, _STYLE_ADJ[o.style]) + " " if style_mode == 0 else ""
    suffix = " " + _pick(rng, _STYLE_SUFFIX[o.style]) if style_mode == 1 else ""
    pos = "" if drop and rng.random() < 0.1 else " " + _pick(rng, _POS_WORDS[o.position])
    core = f"{size}{o.color} {adj}{o.shape}"
    article = "an" if core[0] in "aeiou" else "a"
    if rng.random() < 0.5:
        return f"{article} {core}{suffix}{pos}"
    return f"{article} {core}{pos}{suffix}"


def caption(scene: Scene, rng: np.random.Generator, drop: bool = True) -> str:
    """A varied caption. With ``drop`` some attributes (size, position, background) may be
    omitted, so the model learns the marginals too; colour and shape are always named."""
    objs = [_obj_phrase(o, rng, drop) for o in scene.objects]
    body = " and ".join(objs)
    if drop and rng.random() < 0.1:
        return body
    t = rng.integers(4)
    if t == 0:
        return f"{body} on a {scene.background} background"
    if t == 1:
        return f"{body}, {scene.background} background"
    if t == 2:
        return f"a {scene.background} background with {body}"
    return f"{body}. background: {scene.background}"


def canonical_caption(scene: Scene) -> str:
    """The fixed wording used by evals (one of the training templates, nothing omitted)."""
    parts = []
    for o in scene.objects:
        core = f"{o.size} {o.color} {o.style} {o.shape}"
        parts.append(f"a {core} {_POS_WORDS[o.position][0]}")
    return " and ".join(parts) + f" on a {scene.background} background"


def plain_caption(scene: Scene) -> str:
    """The canonical wording without style words (the world's captions omit only "solid")."""
    parts = [f"a {o.size} {o.color} {o.shape} {_POS_WORDS[o.position][0]}" for o in scene.objects]
    return " and ".join(parts) + f" on a {scene.background} background"


def make_sample(seed: int, index: int = 0, split: str = "train", p_two: float = 0.0,
                drop: bool = True) -> Sample:
    """Deterministic in (seed, index, split, p_two, drop)."""
    rng = np.random.default_rng([seed, index, {"train": 0, "heldout": 1, "all": 2}[split]])
    scene = sample_scene(rng, split, p_two)
    img, mask = render(scene)
    return Sample(img, mask, caption(scene, rng, drop), scene, scene.labels())


def samples(seed: int, n: int, split: str = "train", p_two: float = 0.0, start: int = 0,
            drop: bool = True) -> Iterator[Sample]:
    for i in range(start, start + n):
        yield make_sample(seed, i, split, p_two, drop)


# ---------------------------------------------------------------- edit pairs

def edit_pair(seed: int, index: int = 0, attribute: str | None = None) -> EditPair:
    """Same single-object scene before and after changing one attribute, plus an instruction
    like "make the star yellow". Uses split "all" (an editing engine is not a T2I model)."""
    rng = np.random.default_rng([seed, index, 7])
    scene = sample_scene(rng, "all", 0.0)
    o = scene.primary
    attr = attribute or ["shape", "color", "position", "background", "style", "size"][rng.integers(6)]

    def other(xs: list[str], cur: str) -> str:
        rest = [x for x in xs if x != cur]
        return rest[rng.integers(len(rest))]

    if attr == "background":
        new = other(list(BACKGROUNDS), scene.background)
        after = Scene(new, scene.objects)
        instr = _pick(rng, [f"change the background to {new}", f"make the background {new}"])
    else:
        cur = getattr(o, attr)
        new = other(ATTRIBUTES[attr], cur)
        after = Scene(scene.background, (replace(o, **{attr: new}),))
        instr = {
            "shape": f"turn the {o.shape} into a {new}",
            "color": f"make the {o.shape} {new}",
            "position": f"move the {o.shape} to the {new}",
            "style": f"make the {o.shape} {new}",
            "size": f"make the {o.shape} {new}",
        }[attr]
    b_img, b_mask = render(scene)
    a_img, a_mask = render(after)
    cap = canonical_caption
    return EditPair(Sample(b_img, b_mask, cap(scene), scene, scene.labels()),
                    Sample(a_img, a_mask, cap(after), after, after.labels()), instr, attr)


# ---------------------------------------------------------------- novel subject

def subject_samples(n: int, seed: int = 0, name: str = "zorb") -> list[Sample]:
    """A sprite that never appears in training (a two-tone creature with eyes and antennae),
    in several poses (rotation, flip, scale, position) on varied backgrounds, captioned
    "a photo of {name} ...". For personalization engines (DreamBooth/adapters)."""
    from PIL import Image, ImageDraw

    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, i, 11])
        bg = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
        pos = list(POSITIONS)[rng.integers(len(POSITIONS))]
        k = SS * 4  # sprite drawn on a 4×-supersampled 32-px canvas
        spr = Image.new("RGBA", (32 * k // 4, 32 * k // 4), (0, 0, 0, 0))
        dr = ImageDraw.Draw(spr)
        u = k / 4
        dr.ellipse([6 * u, 8 * u, 26 * u, 30 * u], fill=(20, 160, 150, 255))  # body
        dr.ellipse([10 * u, 16 * u, 22 * u, 28 * u], fill=(250, 160, 40, 255))  # belly
        for ex in (11, 18):
            dr.ellipse([ex * u, 11 * u, (ex + 4) * u, 15 * u], fill=(255, 255, 255, 255))
            dr.ellipse([(ex + 1.2) * u, 12.2 * u, (ex + 2.8) * u, 13.8 * u], fill=(0, 0, 0, 255))
        dr.line([12 * u, 9 * u, 9 * u, 2 * u], fill=(20, 160, 150, 255), width=int(u))
        dr.line([20 * u, 9 * u, 23 * u, 2 * u], fill=(20, 160, 150, 255), width=int(u))
        dr.ellipse([7.5 * u, 0.5 * u, 10.5 * u, 3.5 * u], fill=(230, 40, 90, 255))
        dr.ellipse([21.5 * u, 0.5 * u, 24.5 * u, 3.5 * u], fill=(230, 40, 90, 255))
        scale = float(rng.uniform(0.75, 1.05))
        side = int(32 * SS * scale)
        spr = spr.resize((side, side), Image.LANCZOS).rotate(float(rng.uniform(-25, 25)), Image.BICUBIC)
        if rng.random() < 0.5:
            spr = spr.transpose(Image.FLIP_LEFT_RIGHT)
        canvas = Image.new("RGBA", (SIZE * SS, SIZE * SS), BACKGROUNDS[bg] + (255,))
        col, row = POSITIONS[pos]
        cx = (CELL[col] + rng.uniform(-2, 2)) * SS
        cy = (CELL[row] + rng.uniform(-2, 2)) * SS
        canvas.alpha_composite(spr, (int(cx - side / 2), int(cy - side / 2)))
        arr = np.asarray(canvas, np.float32) / 255.0
        img = np.clip(np.rint(_down(arr[..., :3]) * 255), 0, 255).astype(np.uint8)
        mask = _down(arr[..., 3]).astype(np.float32)
        words = _POS_WORDS[pos][0]
        scene = Scene(bg, ())
        out.append(Sample(img, mask, f"a photo of {name} {words} on a {bg} background", scene,
                          {"subject": name, "position": pos, "background": bg}))
    return out


def world_words() -> list[str]:
    """Every word the captions use (the tokenizer gives each a single token)."""
    text = " ".join(
        SHAPES + list(COLORS) + list(BACKGROUNDS) + list(POSITIONS) + STYLES + list(SIZES)
        + [w for v in _POS_WORDS.values() for w in v]
        + [w for v in _SIZE_WORDS.values() for w in v]
        + [w for v in _STYLE_ADJ.values() for w in v]
        + [w for v in _STYLE_SUFFIX.values() for w in v]
        + ["a", "an", "and", "on", "background", "with", "of", "photo", "picture", "zorb",
           "make", "the", "turn", "into", "move", "to", "change", "image", "scene"]
    )
    words = sorted(set(text.replace(",", " ").replace(".", " ").replace(":", " ").replace("-", " ").split()))
    return words


# ---------------------------------------------------------------- compositional scenes and wording
# Added for the compositional WorldEval and the per-object judge. Nothing above depends on it, so
# existing captions, scenes and training caches are unchanged.

CELLS: list[str] = list(POSITIONS)  # cell index k <-> position name (row-major 3×3)
# Relation -> (d col, d row) sign that "A <relation> B" requires of A's cell minus B's cell.
RELATIONS: dict[str, tuple[int, int]] = {"left of": (-1, 0), "right of": (1, 0), "above": (0, -1),
                                         "below": (0, 1)}


def relation_holds(relation: str, pos_a: str, pos_b: str) -> bool:
    """Does "A <relation> B" hold for objects in cells ``pos_a``/``pos_b``? Only the relation's
    axis is checked (GenEval's rule: a red square up-left of a circle is still left of it)."""
    (ca, ra), (cb, rb) = POSITIONS[pos_a], POSITIONS[pos_b]
    dc, dr = RELATIONS[relation]
    return (ca - cb) * dc > 0 if dc else (ra - rb) * dr > 0


def _overlap_ok(o: Obj, others: list[Obj], slack: float) -> bool:
    """Objects may touch by at most ``slack`` px (bounding discs of the jittered, scaled shapes)."""
    def centre(x: Obj) -> tuple[float, float]:
        c, r = POSITIONS[x.position]
        return CELL[c] + x.jitter[0], CELL[r] + x.jitter[1]

    cx, cy = centre(o)
    for p in others:
        px, py = centre(p)
        need = 0.5 * (SIZES[o.size] * o.scale + SIZES[p.size] * p.scale) - slack
        if math.hypot(cx - px, cy - py) < need:
            return False
    return True


def sample_multi_scene(rng: np.random.Generator, n_objects: int | None = None, split: str = "all",
                       jitter: float = 4.0, slack: float = 4.0, max_objects: int = 3) -> Scene:
    """1–``max_objects`` objects in distinct cells, any sizes, jitter up to ±``jitter`` px (wider
    than the training world's ±2, so a judge trained on it tolerates a generator's misplacement)
    and at most ``slack`` px of overlap. Objects that cannot be placed are dropped (≥ 1 always
    stays). For the per-object judge; the cell of each object is its ``position``."""
    bg = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    n = int(n_objects or rng.integers(1, max_objects + 1))
    cells = [CELLS[i] for i in rng.permutation(len(CELLS))[:n]]
    objs: list[Obj] = []
    for cell in cells:
        for _ in range(20):
            o = _obj(rng, split, list(SIZES), position=cell)
            o = replace(o, jitter=(float(rng.uniform(-jitter, jitter)), float(rng.uniform(-jitter, jitter))))
            if _overlap_ok(o, objs, slack):
                objs.append(o)
                break
    return Scene(bg, tuple(objs))


def cell_labels(scene: Scene) -> list[dict[str, str] | None]:
    """Per cell (``CELLS`` order): the labels of the object in it, or None."""
    out: list[dict[str, str] | None] = [None] * len(CELLS)
    for o in scene.objects:
        out[CELLS.index(o.position)] = o.labels()
    return out


def _noun(o: Obj, size: bool = True, style: bool = True) -> str:
    """"a small red striped star" (template word order, as the training captions say it)."""
    core = " ".join(w for w in ((o.size if size else ""), o.color, (o.style if style else ""), o.shape) if w)
    return f"{'an' if core[0] in 'aeiou' else 'a'} {core}"


def pair_caption(scene: Scene, positions: bool = False, size: bool = True, style: bool = True) -> str:
    """Two objects in the training templates' wording: "a small red striped star and a medium blue
    solid circle on a white background" (positions only if asked)."""
    parts = [_noun(o, size, style) + (f" {_POS_WORDS[o.position][0]}" if positions else "") for o in scene.objects]
    return " and ".join(parts) + f" on a {scene.background} background"


RELATION_PHRASES = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}


def relation_caption(a: Obj, relation: str, b: Obj, background: str) -> str:
    """"a red square to the left of a blue circle on a white background" (GenEval's wording;
    the training captions never relate two objects)."""
    rel = RELATION_PHRASES[relation]
    return f"{_noun(a, False, False)} {rel} {_noun(b, False, False)} on a {background} background"


# Paraphrases: wordings the caption templates above never produce (checked by the tests), for
# the same scenes. Attribute *values* keep the world's names; structure and function words change.
_PARA_SIZE = {"small": ["little", "small-sized"], "medium": ["mid-sized", "middle-sized"],
              "large": ["huge", "large-sized"]}
_PARA_STYLE = {"solid": ["fully filled", "solid-colored"], "striped": ["in stripes", "with a stripe pattern"],
               "dotted": ["in polka dots", "with a dot pattern"], "outlined": ["outline only", "as an outline"]}
_PARA_POS = {
    "top left": ["up in the top-left corner", "at the upper-left"], "top": ["along the top edge", "up top"],
    "top right": ["up in the top-right corner", "at the upper-right"], "left": ["at the far left", "by the left edge"],
    "center": ["dead center", "at the very centre"], "right": ["at the far right", "by the right edge"],
    "bottom left": ["down in the bottom-left corner", "at the lower-left"],
    "bottom": ["along the bottom edge", "low and centered"],
    "bottom right": ["down in the bottom-right corner", "at the lower-right"],
}
_PARA_BG = ["on a plain {bg} background", "against a {bg} backdrop", "set on {bg}", "; the background is {bg}"]
_PARA_REL = {"left of": ["on the left side of", "placed left of"],
             "right of": ["on the right side of", "placed right of"],
             "above": ["sitting above", "placed over"], "below": ["sitting below", "placed under"]}


def paraphrase_object(o: Obj, rng: np.random.Generator, size: bool = True, style: bool = True,
                      position: bool = True) -> str:
    """One object in other words: "a star in red", "a little pink heart covered in stripes", ..."""
    t = int(rng.integers(3))
    sz = _pick(rng, _PARA_SIZE[o.size]) + " " if size else ""
    st = " " + _pick(rng, _PARA_STYLE[o.style]) if style else ""
    if t == 0:
        core = f"{sz}{o.shape} in {o.color}{st}"
    elif t == 1:
        core = f"{sz}{o.shape} colored {o.color}{st}"
    else:
        core = f"{sz}{o.color}-colored {o.shape}{st}"
    pos = " " + _pick(rng, _PARA_POS[o.position]) if position else ""
    return f"{'an' if core[0] in 'aeiou' else 'a'} {core}{pos}"


def paraphrase_caption(scene: Scene, rng: np.random.Generator, size: bool = True, style: bool = True,
                       position: bool = True) -> str:
    """A scene (1 or 2 objects) in wording the training templates never produce."""
    objs = [paraphrase_object(o, rng, size, style, position) for o in scene.objects]
    body = objs[0] if len(objs) == 1 else f"{objs[0]} {_pick(rng, ['as well as', 'together with', 'plus'])} {objs[1]}"
    bg = _pick(rng, _PARA_BG).format(bg=scene.background)
    return f"{body}{'' if bg.startswith(';') else ' '}{bg}"


def paraphrase_relation(a: Obj, relation: str, b: Obj, background: str, rng: np.random.Generator) -> str:
    """"a square in red placed left of a circle in blue against a white backdrop"."""
    pa = paraphrase_object(a, rng, size=False, style=False, position=False)
    pb = paraphrase_object(b, rng, size=False, style=False, position=False)
    bg = _pick(rng, _PARA_BG).format(bg=background)
    return f"{pa} {_pick(rng, _PARA_REL[relation])} {pb}{'' if bg.startswith(';') else ' '}{bg}"


def template_phrases() -> set[str]:
    """Every fixed phrase the training captions use (for checking that paraphrases avoid them)."""
    out = {w for v in _POS_WORDS.values() for w in v} | {w for v in _STYLE_SUFFIX.values() for w in v}
    return out | {"background:", "background with"}
