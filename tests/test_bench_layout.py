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


def test_choose_regional_takes_the_fastest_setting_that_keeps_binding() -> None:
    from bench.layout import choose_regional, parse_candidate

    def r(mode, b, rel, secs, **setting):  # noqa: ANN001, ANN003, ANN202
        return {"mode": mode, "setting": setting, "seconds_per_image_two_objects": secs,
                "templates": {"attribute_binding_acc": b, "relative_position_acc": rel}}

    modes = {"off": r("off", 0.82, 0.78, 1.3),
             "adaptor": r("adaptor", 0.57, 0.62, 0.7, period=5, depth=0, warmup=0, adaptor="d0.safetensors"),
             "a:p3": r("adaptor", 0.80, 0.75, 0.9, period=3, depth=0, warmup=0, adaptor="d0.safetensors"),
             "a:p2": r("adaptor", 0.83, 0.79, 1.0, period=2, depth=0, warmup=0, adaptor="d0.safetensors"),
             "reuse": r("reuse", 0.70, 0.78, 0.8, period=4, depth=1, warmup=0)}
    out = choose_regional(modes, 0.05)
    assert out["adaptor"]["period"] == 3 and out["adaptor"]["candidate"] == "a:p3"  # p5 too lossy, p2 slower
    assert out["adaptor"]["speedup_two_objects"] == round(1.3 / 0.9, 3)
    assert out["reuse"]["period"] == 1  # binding 0.70 < 0.82 - 0.05: regional images run in full
    # with a prompt file scored, its binding and relations must hold too
    for label, fb in (("off", 0.80), ("adaptor", 0.5), ("a:p3", 0.70), ("a:p2", 0.79), ("reuse", 0.8)):
        modes[label]["prompt_file"] = {"pair": {"attribute_binding_acc": fb}, "relation": {"relative_position_acc": 0.9}}
    out = choose_regional(modes, 0.05)
    assert out["adaptor"]["candidate"] == "a:p2" and out["adaptor"]["file_binding"] == 0.79
    # several files (prompt_files): each must hold; so must single objects where measured
    for label in modes:
        pf = modes[label].pop("prompt_file")
        modes[label]["prompt_files"] = {"a.json": pf, "b.json": {"relation": {"relative_position_acc": 0.9}}}
    modes["a:p2"]["prompt_files"]["b.json"]["relation"]["relative_position_acc"] = 0.8
    assert choose_regional(modes, 0.05)["adaptor"]["period"] == 1  # p2 lost 0.1 on the second file
    modes["a:p2"]["prompt_files"]["b.json"]["relation"]["relative_position_acc"] = 0.88
    assert choose_regional(modes, 0.05)["adaptor"]["file2_relations"] == 0.88
    for label, single in (("off", 0.95), ("a:p2", 0.89)):
        modes[label]["templates"] |= {"single_objjudge_all_correct": single, "all_correct": single}
    assert choose_regional(modes, 0.05)["adaptor"]["period"] == 1  # p2 lost 0.06 on single objects
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
        "off": {"mode": "off", "setting": None, "seconds_per_image_two_objects": 1.5,
                "templates": {"attribute_binding_acc": 0.8, "relative_position_acc": 0.8}},
        "adaptor:p3": {"mode": "adaptor", "seconds_per_image_two_objects": 0.8,
                       "setting": {"period": 3, "depth": 0, "warmup": 0, "adaptor": "clockwork_adaptor_d0.safetensors"},
                       "templates": {"attribute_binding_acc": 0.82, "relative_position_acc": 0.78}}}}
    (tmp_path / "run.json").write_text(json.dumps(saved))
    assert main(["--choose-from", str(tmp_path / "run.json")]) == 0
    entry = json.loads((model / "clockwork_profile.json").read_text())["choices"]["DPM++ 2M"]["20"]["adaptor"]
    assert entry["layout"]["period"] == 3 and "--choose-from" in entry["layout"]["measured_by"]
    assert entry["period"] == 5  # the single-object setting is untouched
    (tmp_path / "bad.json").write_text(json.dumps({"steps": 20, "modes": {}}))
    with pytest.raises(SystemExit):
        main(["--choose-from", str(tmp_path / "bad.json")])
