"""The demo subject: the embedded world's novel sprite (a two-tone creature with eyes and
antennae that no training image of the base model contains) as a handful of "photos".

Each photo carries its context ("top left on a navy background") so captions can name it and
the evaluation can ask for contexts the photos never showed.
"""
from __future__ import annotations

from pathlib import Path

from PIL import Image

N_DEMO = 8
DEMO_SEED = 0


def _context(pos: str, bg: str) -> str:
    from engines.world import generator as g

    return f"{g._POS_WORDS[pos][0]} on a {bg} background"


def demo_photos(n: int = N_DEMO, seed: int = DEMO_SEED) -> list[tuple[Image.Image, str, dict[str, str]]]:
    """(64×64 RGB photo, context phrase, labels {position, background}) × n, seeded."""
    from engines.world import generator as g

    out = []
    for s in g.subject_samples(n, seed=seed, name="zorb"):
        out.append((Image.fromarray(s.image), _context(s.labels["position"], s.labels["background"]),
                    {"position": s.labels["position"], "background": s.labels["background"]}))
    return out


def write_demo_folder(dest: Path, n: int = N_DEMO) -> list[Path]:
    """The demo photos as PNG files (to try the upload flow with them)."""
    dest.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (im, _, lab) in enumerate(demo_photos(n)):
        p = dest / f"zorb-{i:02d}-{lab['position'].replace(' ', '-')}-{lab['background'].replace(' ', '-')}.png"
        im.save(p)
        paths.append(p)
    return paths


def eval_contexts(n: int, seed: int = 4242, avoid: set[tuple[str, str]] | None = None) -> list[dict[str, str]]:
    """``n`` (position, background) contexts, avoiding the training photos' own, seeded."""
    import numpy as np

    from engines.world import generator as g

    rng = np.random.default_rng(seed)
    avoid = avoid or set()
    combos = [(p, b) for p in g.POSITIONS for b in g.BACKGROUNDS if (p, b) not in avoid]
    idx = rng.permutation(len(combos))[:n]
    return [{"position": combos[i][0], "background": combos[i][1], "context": _context(*combos[i])} for i in idx]


def render_subject(position: str, background: str, seed: int = 0) -> Image.Image:
    """A real photo of the subject in a given context (the reference for subject fidelity)."""
    import numpy as np

    from engines.world import generator as g

    for i in range(400):  # subject_samples draws contexts at random: search one with this context
        s = g.subject_samples(1, seed=seed * 1000 + i + 1, name="zorb")[0]
        if s.labels["position"] == position and s.labels["background"] == background:
            return Image.fromarray(s.image)
    # never reached in practice (54 contexts, 400 draws); fall back to recolouring the background
    s = g.subject_samples(1, seed=seed, name="zorb")[0]
    a = s.image.astype(np.float32)
    m = s.mask[..., None]
    a = a * m + np.asarray(g.BACKGROUNDS[background], np.float32) * (1 - m)
    return Image.fromarray(a.clip(0, 255).astype(np.uint8))
