"""The embedded world's prompt reader and layout (engines/world/prompt_parse.py).

Wordings here are written for this test, unlike both the caption templates and the eval's
paraphrase generator; the measured check on independent wording is
``tests/data/world_prompts_heldout.json`` (``studio eval world --prompt-file``)."""
from __future__ import annotations

import time

import numpy as np
import pytest

from engines.world import generator as g
from engines.world import prompt_parse as pp


def objs(prompt: str) -> list[tuple]:
    p = pp.parse(prompt)
    assert p is not None, prompt
    return [(o.shape, o.color, o.size, o.style, o.position) for o in p.objects]


@pytest.mark.parametrize("prompt, want", [
    ("Crimson STAR, huge, with pinstripes", [("star", "red", "large", "striped", None)]),
    ("could you draw a teeny violet rhombus made of spots near the upper-right?",
     [("diamond", "purple", "small", "dotted", "top right")]),
    ("paint one heart; make it pink and hollow, centred", [("heart", "pink", None, "outlined", "center")]),
    ("A doughnut coloured turquoise at the lower left", [("ring", "cyan", None, None, "bottom left")]),
    ("the triangle should be golden and sit at the very bottom", [("triangle", "yellow", None, None, "bottom")]),
    ("green plus sign, right-hand side", [("cross", "green", None, None, "right")]),
])
def test_single_objects_in_free_wording(prompt, want) -> None:  # noqa: ANN001
    assert objs(prompt) == want


def test_post_modifiers_bind_to_their_own_noun() -> None:
    assert objs("a circle painted orange next to a square in blue") == [
        ("circle", "orange", None, None, None), ("square", "blue", None, None, None)]
    assert objs("a big yellow heart, and also a small striped purple star") == [
        ("heart", "yellow", "large", None, None), ("star", "purple", "small", "striped", None)]
    # the style suffix of the first object stays with it (the split is at the last conjunction)
    assert objs("a cross with dots and an orange ring") == [
        ("cross", None, None, "dotted", None), ("ring", "orange", None, None, None)]
    # "both" spreads what follows over every object
    assert objs("a red star and a blue circle, both tiny") == [
        ("star", "red", "small", None, None), ("circle", "blue", "small", None, None)]


def test_background_wherever_it_is_said() -> None:
    for text in ("navy blue backdrop behind a red star", "a red star. Make the background beige.",
                 "on cream: a red star", "a red star over a dark-grey canvas", "forest green bg, red star"):
        p = pp.parse(text)
        assert p is not None and p.objects[0].color == "red" and p.objects[0].shape == "star", text
        assert p.background in ("navy", "beige", "gray", "dark green"), (text, p.background)
    p = pp.parse("a red star on a plain white background")
    assert p.background == "white" and p.objects[0].style is None  # "plain" belongs to the background here
    # an object colour said of the background is not the object's colour; it is reported
    p = pp.parse("a red star on a blue background")
    assert p.objects[0].color == "red" and p.background is None and "blue" in p.ignored


@pytest.mark.parametrize("prompt, rel", [
    ("a red square sits to the left of a blue circle", (0, "left of", 1)),
    ("put a blue circle on the right-hand side of the red square", (0, "right of", 1)),
    ("underneath a green star there is a pink heart", (1, "below", 0)),
    ("a purple ring, and on top of it an orange cross", (1, "above", 0)),
    ("first a yellow diamond; then a cyan triangle to its right", (1, "right of", 0)),
    ("a heart and a star, with the star beneath the heart", (1, "below", 0)),
])
def test_relations_and_their_direction(prompt, rel) -> None:  # noqa: ANN001
    p = pp.parse(prompt)
    assert p is not None and len(p.objects) == 2, (prompt, p and p.as_dict())
    assert p.relations == [rel], (prompt, p.as_dict())


def test_counts_and_references() -> None:
    assert objs("three orange stars") == [("star", "orange", None, None, None)] * 3
    assert objs("a red star. The star is large.") == [("star", "red", "large", None, None)]
    assert objs("a red star and a star") == [("star", "red", None, None, None), ("star", None, None, None, None)]
    p = pp.parse("nine blue circles")
    assert len(p.objects) == 1  # "nine" is no count it knows: one circle, the word reported
    p = pp.parse("four red stars and two blue circles")
    assert len(p.objects) == pp.MAX_OBJECTS and any("over the limit" in w for w in p.ignored)


def test_no_shape_means_the_prompt_is_used_as_typed() -> None:
    assert pp.parse("a photo of a cat") is None
    plan = pp.plan("a photo of a cat", 0)
    assert plan.prompt == "a photo of a cat" and plan.regions == []


def test_a_single_object_is_reworded_in_the_models_own_words() -> None:
    plan = pp.plan("show me a star in red, the backdrop should be navy", 5)
    assert plan.regions == [] and plan.prompt == "a red star on a navy background"
    # the canonical eval wording reads back to itself (single-object prompts are unchanged)
    rng = np.random.default_rng(0)
    for _ in range(40):
        sc = g.sample_scene(rng, "all")
        assert pp.plan(g.canonical_caption(sc), 0).prompt == g.canonical_caption(sc)


def test_every_training_caption_reads_back_to_its_scene() -> None:
    """The captions the model was trained on (all templates and synonyms) parse to their labels."""
    for i in range(300):
        s = g.make_sample(11, i, "all", p_two=0.3)
        p = pp.parse(s.caption)
        assert p is not None and len(p.objects) == len(s.scene.objects), s.caption
        for o, want in zip(p.objects, s.scene.objects):
            assert (o.shape, o.color) == (want.shape, want.color), s.caption
            assert o.size in (None, want.size) and o.position in (None, want.position), (s.caption, o)
            assert o.style in (None, want.style) or (o.style is None and want.style == "solid"), (s.caption, o)
        assert p.background in (None, s.scene.background), s.caption


def test_layout_keeps_named_cells_satisfies_relations_and_spreads_objects() -> None:
    for seed in range(30):
        rng = np.random.default_rng(seed)
        p = pp.parse("a red square left of a blue circle, and a green star above the circle")
        cells = pp.layout(p, rng)
        assert len(set(cells)) == 3
        for a, r, b in p.relations:
            assert g.relation_holds(r, cells[a], cells[b]), (cells, p.relations)
        p = pp.parse("a red square in the top left and a blue circle")
        cells = pp.layout(p, rng)
        assert cells[0] == "top left" and cells[1] != "top left"
        (c0, r0), (c1, r1) = g.POSITIONS[cells[0]], g.POSITIONS[cells[1]]
        assert max(abs(c0 - c1), abs(r0 - r1)) == 2  # far apart when nothing says otherwise


def test_plan_repeats_with_its_seed_and_varies_across_seeds() -> None:
    text = "an orange heart and a purple cross"
    assert pp.plan(text, 3).as_dict() == pp.plan(text, 3).as_dict()
    layouts = {tuple(r.cell for r in pp.plan(text, s).regions) for s in range(20)}
    assert len(layouts) > 3
    plan = pp.plan(text, 3)
    assert len(plan.regions) == 2 and plan.background in g.BACKGROUNDS
    assert all(plan.background in r.caption for r in plan.regions)  # every region names the same background


def test_region_masks_cover_their_cells() -> None:
    regions = [pp.Region("a", "top left", None), pp.Region("b", "bottom right", "small")]
    m = pp.region_masks(regions, 16, 16)  # (2, 16, 16)
    assert m.shape == (2, 16, 16) and m.min() >= 0 and m.max() <= 1
    assert m[0, 4, 4] > 0.95 and m[0, 12, 12] < 0.05 and m[1, 12, 12] > 0.95
    assert m[1].sum() < m[0].sum()  # a small object gets a smaller region


def test_hostile_prompts_are_cheap_and_harmless() -> None:
    """4,000 characters (the params cap) of shapes, relations and junk parse in well under a second."""
    junk = ("left of above two red stars and the star beneath it; " * 80)[:4000]
    for text in (junk, "\x00" * 4000, "🙂 " * 1000, "of " * 1300, "-" * 4000):
        t = time.perf_counter()
        p = pp.parse(text)
        assert time.perf_counter() - t < 1.0
        if p is not None:
            assert 1 <= len(p.objects) <= pp.MAX_OBJECTS
            pp.layout(p, np.random.default_rng(0))


def test_intensifiers_generic_counts_colour_references_and_background_prepositions() -> None:
    assert objs("an orange star right at the top") == [("star", "orange", None, None, "top")]
    assert objs("a pink heart in the lower right in blue")[0][4] == "bottom right"
    assert objs("three things: a red ring and a blue cross") == [
        ("ring", "red", None, None, None), ("cross", "blue", None, None, None)]
    p = pp.parse("a yellow star under a beige background")
    assert p.background == "beige" and p.objects[0].position is None and not p.relations
    p = pp.parse("make a green ring and an orange square; put the orange one underneath the green one")
    assert len(p.objects) == 2 and p.relations == [(1, "below", 0)], p.as_dict()


@pytest.mark.parametrize("name", ["world_prompts_heldout.json", "world_prompts_heldout2.json",
                                  "world_prompts_heldout3.json"])
def test_wording_sets_parse_to_their_labels(name) -> None:  # noqa: ANN001
    """The wording sets written by helpers that never saw this code. The reader was fixed on what
    it misread in each, after the set had been measured through WorldEval (figures in
    docs/embedded-world.md); all are development sets now. A relation counts as read when the
    reader names it or when the places it reads ("on the left", "on the right") make it hold in
    every layout drawn; those places are the only attribute a relation item may add."""
    import json
    from pathlib import Path

    import numpy as np

    from engines.world.generator import relation_holds

    data = json.loads((Path(__file__).parents[1] / "data" / name).read_text())
    for cat in ("single", "pair", "relation"):
        for it in data[cat]:
            p = pp.parse(it["prompt"])
            assert p is not None and len(p.objects) == len(it["objects"]), it["prompt"]
            got = [{k: v for k, v in o.__dict__.items() if v is not None and (cat != "relation" or k != "position")}
                   for o in p.objects]
            want = [{k: v for k, v in o.items() if v is not None} for o in it["objects"]]
            idx = [got.index(w) if w in got else None for w in want]
            assert None not in idx and len(set(idx)) == len(idx), (it["prompt"], got)
            assert p.background == it.get("background") or it.get("background") is None, it["prompt"]
            if cat == "relation":
                a, b = idx
                for seed in range(8):
                    cells = pp.layout(p, np.random.default_rng(seed))
                    assert relation_holds(it["relation"], cells[a], cells[b]), (it["prompt"], p.as_dict(), cells)


def test_negated_fills_line_patterns_lead_ins_and_sides_of_the_background() -> None:
    assert objs("a purple cross that is not filled in") == [("cross", "purple", None, "outlined", None)]
    assert objs("an orange diamond with lines") == [("diamond", "orange", None, "striped", None)]
    assert objs("all tiny: a red heart, a blue star") == [
        ("heart", "red", "small", None, None), ("star", "blue", "small", None, None)]
    assert objs("both a red heart and a big blue star") == [
        ("heart", "red", None, None, None), ("star", "blue", "large", None, None)]
    p = pp.parse("a green triangle at the lower left of a navy background")
    assert p.objects[0].position == "bottom left" and p.background == "navy" and not p.relations


def test_counted_shapes_whose_members_are_described_one_by_one() -> None:
    assert objs("three stars: a red one, a blue one and a green one") == [
        ("star", "red", None, None, None), ("star", "blue", None, None, None), ("star", "green", None, None, None)]
    assert objs("two large squares, one purple and one orange") == [
        ("square", "purple", "large", None, None), ("square", "orange", "large", None, None)]
    assert objs("a pair of hearts: pink on top, yellow at the bottom") == [
        ("heart", "pink", None, None, "top"), ("heart", "yellow", None, None, "bottom")]
    p = pp.parse("two rings, the dotted cyan one above the blue one")
    assert [(o.color, o.style) for o in p.objects] == [("cyan", "dotted"), ("blue", None)]
    assert p.relations == [(0, "above", 1)]
    assert objs("two crosses: the big one and the blue one") == [
        ("cross", None, "large", None, None), ("cross", "blue", None, None, None)]
    # no member list, another shape after the group, or members that do not match the count: copies
    assert objs("two red stars") == [("star", "red", None, None, None)] * 2
    assert [o.shape for o in pp.parse("two circles and a pink star").objects] == ["circle", "circle", "star"]
    assert objs("two big circles, a red one") == [("circle", None, "large", None, None),
                                                  ("circle", "red", None, None, None)]


def test_adjectives_listed_with_commas_after_a_determiner_and_beside_it_on_a_side() -> None:
    assert objs("a small ring, and a large, dotted blue cross") == [
        ("ring", None, "small", None, None), ("cross", "blue", "large", "dotted", None)]
    p = pp.parse("a red star and a blue ring beside it on the right")
    assert p.relations == [(1, "right of", 0)]
