"""The embedded world's generator: determinism, labels vs captions vs pixels, held-out pairs,
edit pairs and the novel subject."""
from __future__ import annotations

import numpy as np
import pytest

from engines.world import generator as g
from engines.world.data import decode_scene, encode_scene


def test_deterministic_and_seed_sensitive() -> None:
    a, b = g.make_sample(3, 17, p_two=0.5), g.make_sample(3, 17, p_two=0.5)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert a.caption == b.caption and a.scene == b.scene
    others = [g.make_sample(3, i, p_two=0.5) for i in range(18, 24)] + [g.make_sample(4, 17, p_two=0.5)]
    assert all(not np.array_equal(a.image, o.image) for o in others)


def test_image_format_and_mask() -> None:
    s = g.make_sample(0, 0)
    assert s.image.shape == (64, 64, 3) and s.image.dtype == np.uint8
    assert s.mask.shape == (64, 64) and 0.0 <= s.mask.min() and s.mask.max() <= 1.0
    assert s.mask.sum() > 14  # objects are large enough to survive a 4× downsample


@pytest.mark.parametrize("index", range(40))
def test_caption_names_labels(index: int) -> None:
    s = g.make_sample(11, index, p_two=0.3)
    cap = s.caption
    for o in s.scene.objects:
        assert o.color in cap and o.shape in cap  # always named, whatever the wording
    canon = g.canonical_caption(s.scene)
    lab = s.labels
    for word in (lab["color"], lab["shape"], lab["size"], lab["style"], s.scene.background):
        assert word in canon
    assert g._POS_WORDS[lab["position"]][0] in canon


def test_captions_vary_in_wording() -> None:
    scene = g.make_sample(0, 5).scene
    caps = {g.caption(scene, np.random.default_rng(i)) for i in range(30)}
    assert len(caps) >= 10


def test_pixels_match_labels_for_solid_objects() -> None:
    """The pixel colour under a fully covered mask is the named colour; elsewhere the background."""
    checked = 0
    for i in range(200):
        s = g.make_sample(5, i)
        o = s.scene.primary
        if o.style != "solid":
            continue
        inside = s.image[s.mask > 0.999].astype(int)
        outside = s.image[s.mask < 0.001].astype(int)
        assert np.abs(inside - np.array(g.COLORS[o.color])).max() <= 1
        assert np.abs(outside - np.array(g.BACKGROUNDS[s.scene.background])).max() <= 1
        # position: the mask centroid lies in the labelled third of the image
        ys, xs = np.nonzero(s.mask > 0.5)
        col, row = g.POSITIONS[o.position]
        assert int(xs.mean() // (64 / 3)) == col and int(ys.mean() // (64 / 3)) == row
        checked += 1
    assert checked > 30


def test_heldout_pairs_never_in_train_split() -> None:
    pairs = {(o.shape, o.color) for s in g.samples(1, 400, "train", p_two=0.5) for o in s.scene.objects}
    assert not pairs & g.HELDOUT
    assert len(pairs) == len(g.SHAPES) * len(g.COLORS) - len(g.HELDOUT)
    unseen = {(o.shape, o.color) for s in g.samples(1, 50, "heldout") for o in s.scene.objects}
    assert unseen <= g.HELDOUT


def test_world_size() -> None:
    assert len(g.SHAPES) >= 8 and len(g.COLORS) >= 8 and len(g.POSITIONS) == 9
    assert len(g.STYLES) >= 4 and len(g.BACKGROUNDS) >= 4
    assert not set(g.COLORS) & set(g.BACKGROUNDS)  # "red" always refers to the object


def test_scene_encoding_round_trip() -> None:
    for i in range(30):
        sc = g.make_sample(2, i, p_two=0.5).scene
        back = decode_scene(encode_scene(sc))
        assert back.background == sc.background
        assert [o.labels() for o in back.objects] == [o.labels() for o in sc.objects]


@pytest.mark.parametrize("attr", ["shape", "color", "position", "background", "style", "size"])
def test_edit_pair_changes_exactly_one_attribute(attr: str) -> None:
    for i in range(5):
        e = g.edit_pair(9, i, attribute=attr)
        before, after = e.before.labels, e.after.labels
        changed = {k for k in before if before[k] != after[k]}
        assert changed == {attr}
        assert after[attr] in e.instruction
        assert not np.array_equal(e.before.image, e.after.image)


def test_subject_is_novel_and_varied() -> None:
    subs = g.subject_samples(6, seed=0)
    assert all("zorb" in s.caption for s in subs)
    assert len({s.image.tobytes() for s in subs}) == 6
    # the sprite's teal body colour is not one of the world's object colours
    body = np.array([20, 160, 150])
    assert all(np.abs(np.array(c) - body).sum() > 60 for c in g.COLORS.values())
    assert all(s.mask.sum() > 30 for s in subs)
