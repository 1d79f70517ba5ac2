"""WorldEval plumbing: the fixed prompt set, scoring, and one tiny end-to-end run."""
from __future__ import annotations

import numpy as np

from engines.world import eval as E
from engines.world import generator as g


def test_prompt_set_is_fixed_and_has_unseen_pairs() -> None:
    a, b = E.prompt_set(), E.prompt_set()
    assert a == b and len(a) == 48
    unseen = [lab for _, lab, u in a if u]
    seen = [lab for _, lab, u in a if not u]
    assert len(unseen) == 16
    assert all((lab["shape"], lab["color"]) in g.HELDOUT for lab in unseen)
    assert all((lab["shape"], lab["color"]) not in g.HELDOUT for lab in seen)
    for p, lab, _ in a:
        assert lab["color"] in p and lab["shape"] in p and lab["background"] in p


def test_score_counts_mistakes() -> None:
    labels = [{"shape": "star", "color": "red", "background": "white", "position": "top", "style": "solid",
               "size": "small"}] * 4
    preds = {k: [labels[0][k]] * 4 for k in labels[0]}
    assert E._score(preds, labels, [True] * 4)["overall"] == 1.0
    preds["color"] = ["red", "blue", "blue", "red"]
    r = E._score(preds, labels, [True] * 4)
    assert r["color_acc"] == 0.5 and r["shape_acc"] == 1.0 and r["all_correct"] == 0.5
    assert E._score(preds, labels, [True, False, False, False])["color_acc"] == 1.0


def test_headline_all_correct_is_the_per_object_judges_and_keeps_the_primary() -> None:
    res = {"all_correct": 0.25, "unseen": {"all_correct": 0.0}, "seen": {"all_correct": 0.5}}
    E._headline_all_correct(res, [True, True, False, True], [False, False, True, True])
    assert res == {"all_correct": 0.75, "all_correct_primary_judge": 0.25,
                   "unseen": {"all_correct": 0.5, "all_correct_primary_judge": 0.0},
                   "seen": {"all_correct": 1.0, "all_correct_primary_judge": 0.5}}


def test_judge_audit_compares_a_person_with_both_judges() -> None:
    from bench.judge_audit import compare

    rows = [{"i": i, "primary_ok": p, "objjudge_ok": o} for i, (p, o) in
            enumerate([(True, True), (False, True), (False, False), (True, True)])]
    r = compare(rows, {"wrong": {"2": "x", "3": "y"}, "borderline": {"1": "z"}})
    assert (r["person_all_correct_strict"], r["person_all_correct_lenient"]) == (0.25, 0.5)
    assert r["objjudge_all_correct"] == 0.75 and r["primary_all_correct"] == 0.5
    # image 1 (borderline) is left out of agreement; 0 agrees for both; 2 both agree; 3 both pass a wrong one
    assert r["objjudge_agrees_with_person"] == round(2 / 3, 4) and r["primary_passes_person_calls_wrong"] == [3]
    assert r["primary_fails_person_calls_right"] == [] and r["objjudge_passes_person_calls_wrong"] == [3]


def test_evaluate_pipeline_end_to_end() -> None:
    from engines.world.models import load_judge
    from engines.world.paths import judge_dir

    pipe = E.load_pipeline()
    res = E.evaluate_pipeline(pipe, load_judge(judge_dir()), steps=2, prompts=E.prompt_set(2, 2),
                              batch=4, time_images=1)
    for k in ("shape_acc", "color_acc", "background_acc", "position_acc", "style_acc", "overall", "n",
              "seconds_per_image"):
        assert k in res
    assert res["n"] == 4 and res["unseen"]["n"] == 2
    assert 0.0 <= res["overall"] <= 1.0 and res["seconds_per_image"] > 0
