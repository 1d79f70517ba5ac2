"""``studio bench layout`` at a tiny size: both Clockwork modes on the same prompts, the JSON keys,
and the Clockwork setting taken from the embedded model's profile."""
from __future__ import annotations

import json

import pytest

from bench.layout import main


def test_bench_layout_json(capsys, tmp_path) -> None:  # noqa: ANN001
    pf = tmp_path / "p.json"
    pf.write_text(json.dumps({"pair": [{"prompt": "a red ring plus a blue star", "background": None,
                                        "objects": [{"shape": "ring", "color": "red"},
                                                    {"shape": "star", "color": "blue"}]}]}))
    assert main(["--json", "--threads", "1", "--steps", "8", "--n-per-prompt", "1", "--prompts", "1", "1", "1",
                 "1", "2", "--prompt-file", str(pf), str(pf), "--clockwork", "off", "adaptor", "--time-images", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    off, ada = out["modes"]["off"], out["modes"]["adaptor"]
    assert off["setting"] is None and ada["setting"]["period"] == 4  # the profile's 8-step choice
    for m in (off, ada):
        assert 0 <= m["templates"]["attribute_binding_acc"] <= 1 and "relative_position_ci" in m["templates"]
        assert m["prompt_files"][str(pf)]["pair"]["n"] == 1 and m["seconds_per_image_two_objects"] > 0
        assert 0 <= m["templates"]["all_correct"] <= 1 and "all_correct_primary_judge" in m["templates"]
    with pytest.raises(SystemExit, match="no such prompt file"):
        main(["--json", "--prompt-file", str(tmp_path / "missing.json")])


def test_choose_holding_takes_the_fastest_setting_that_keeps_each_kind_of_image() -> None:
    from bench.layout import choose_holding, parse_candidate

    def r(mode, b, rel, single, secs2, secs1, **setting):  # noqa: ANN001, ANN003, ANN202
        return {"mode": mode, "setting": setting, "seconds_per_image_two_objects": secs2,
                "seconds_per_image_single": secs1,
                "templates": {"attribute_binding_acc": b, "relative_position_acc": rel,
                              "single_objjudge_all_correct": single, "all_correct": single,
                              "all_correct_primary_judge": 0.6}}

    d0 = {"depth": 0, "warmup": 0, "adaptor": "d0.safetensors"}
    modes = {"off": r("off", 0.82, 0.78, 0.95, 1.3, 1.1),
             "adaptor": r("adaptor", 0.57, 0.62, 0.86, 0.7, 0.4, period=5, **d0),
             "a:p4": r("adaptor", 0.70, 0.70, 0.93, 0.8, 0.5, period=4, **d0),
             "a:p3": r("adaptor", 0.80, 0.75, 0.95, 0.9, 0.6, period=3, **d0),
             "a:p2": r("adaptor", 0.83, 0.79, 0.95, 1.0, 0.8, period=2, **d0),
             "reuse": r("reuse", 0.70, 0.78, 0.80, 0.8, 0.5, period=4, depth=1, warmup=0)}
    out = choose_holding(modes, 0.05)
    # regional images: p5 and p4 lose binding, p2 is slower; one object: p5 loses 0.09, p4 holds
    assert out["adaptor"]["layout"]["candidate"] == "a:p3" and out["adaptor"]["layout"]["period"] == 3
    assert out["adaptor"]["layout"]["speedup"] == round(1.3 / 0.9, 3) and "single" not in out["adaptor"]["layout"]
    assert out["adaptor"]["holding"]["candidate"] == "a:p4" and out["adaptor"]["holding"]["speedup"] == 2.2
    assert out["adaptor"]["holding"]["single"] == 0.93 and "binding" not in out["adaptor"]["holding"]
    assert out["reuse"]["layout"]["period"] == 1 and out["reuse"]["holding"]["period"] == 1  # in full
    # prompt files: each must hold (single objects on the file count for holding, pairs for layout)
    for label, fb, fs in (("off", 0.80, 0.9), ("adaptor", 0.5, 0.8), ("a:p4", 0.6, 0.8), ("a:p3", 0.70, 0.9),
                          ("a:p2", 0.79, 0.9), ("reuse", 0.8, 0.9)):
        modes[label]["prompt_files"] = {"a.json": {"pair": {"attribute_binding_acc": fb},
                                                   "single": {"all_named_correct": fs}},
                                        "b.json": {"relation": {"relative_position_acc": 0.9}}}
    out = choose_holding(modes, 0.05)
    assert out["adaptor"]["layout"]["candidate"] == "a:p2" and out["adaptor"]["layout"]["file_binding"] == 0.79
    assert out["adaptor"]["holding"]["candidate"] == "a:p3"  # p4 lost 0.1 on the file's single objects
    modes["a:p2"]["prompt_files"]["b.json"]["relation"]["relative_position_acc"] = 0.8
    assert choose_holding(modes, 0.05)["adaptor"]["layout"]["period"] == 1  # p2 lost 0.1 on the second file
    modes["a:p2"]["prompt_files"]["b.json"]["relation"]["relative_position_acc"] = 0.88
    assert choose_holding(modes, 0.05)["adaptor"]["layout"]["file2_relations"] == 0.88
    # an old run (one "prompt_file", primary judge's reading as all_correct) still reads
    old = {k: {kk: vv for kk, vv in v.items() if kk != "prompt_files"} |
           {"prompt_file": v["prompt_files"]["a.json"],
            "templates": {kk: vv for kk, vv in v["templates"].items() if kk != "all_correct_primary_judge"}}
           for k, v in modes.items()}
    assert choose_holding(old, 0.05)["adaptor"]["holding"]["candidate"] == "a:p3"
    assert parse_candidate("adaptor:p3:d0:w4:x.safetensors") == ("adaptor", {
        "period": 3, "depth": 0, "warmup": 4, "adaptor": "x.safetensors"})
    for bad in ("off:p3", "adaptor:q3", "reuse:../x.safetensors", "reuse:p0"):
        with pytest.raises(SystemExit):
            parse_candidate(bad)


def test_choose_from_a_saved_run_writes_the_profile(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    import shutil

    from engines.world import paths

    model = tmp_path / "sd"
    shutil.copytree(paths.default_model_dir(), model)
    monkeypatch.setattr(paths, "default_model_dir", lambda: model)
    saved = {"steps": 20, "command": "studio bench layout --steps 20", "modes": {
        "off": {"mode": "off", "setting": None, "seconds_per_image_two_objects": 1.5, "seconds_per_image_single": 1.2,
                "templates": {"attribute_binding_acc": 0.8, "relative_position_acc": 0.8,
                              "single_objjudge_all_correct": 0.9, "all_correct": 0.9}},
        "adaptor:p3": {"mode": "adaptor", "seconds_per_image_two_objects": 0.8, "seconds_per_image_single": 0.6,
                       "setting": {"period": 3, "depth": 0, "warmup": 0, "adaptor": "clockwork_adaptor_d0.safetensors"},
                       "templates": {"attribute_binding_acc": 0.82, "relative_position_acc": 0.78,
                                     "single_objjudge_all_correct": 0.7, "all_correct": 0.7}}}}
    (tmp_path / "run.json").write_text(json.dumps(saved))
    assert main(["--choose-from", str(tmp_path / "run.json")]) == 0
    entry = json.loads((model / "clockwork_profile.json").read_text())["choices"]["DPM++ 2M"]["20"]["adaptor"]
    assert entry["layout"]["period"] == 3 and "--choose-from" in entry["layout"]["measured_by"]
    assert entry["holding"]["period"] == 1  # single objects fell 0.2: auto runs them in full
    assert entry["period"] == 5  # the single-object setting is untouched
    (tmp_path / "bad.json").write_text(json.dumps({"steps": 20, "modes": {}}))
    with pytest.raises(SystemExit):
        main(["--choose-from", str(tmp_path / "bad.json")])
