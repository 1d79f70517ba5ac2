"""``studio bench layout`` at a tiny size: both Clockwork modes on the same prompts, the JSON keys,
and the Clockwork setting taken from the embedded model's profile."""
from __future__ import annotations

import json

from bench.layout import main


def test_bench_layout_json(capsys, tmp_path) -> None:  # noqa: ANN001
    pf = tmp_path / "p.json"
    pf.write_text(json.dumps({"pair": [{"prompt": "a red ring plus a blue star", "background": None,
                                        "objects": [{"shape": "ring", "color": "red"},
                                                    {"shape": "star", "color": "blue"}]}]}))
    assert main(["--json", "--threads", "1", "--steps", "8", "--n-per-prompt", "1", "--prompts", "1", "1", "1",
                 "1", "2", "--prompt-file", str(pf), "--clockwork", "off", "adaptor", "--time-images", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    off, ada = out["modes"]["off"], out["modes"]["adaptor"]
    assert off["setting"] is None and ada["setting"]["period"] == 4  # the profile's 8-step choice
    for m in (off, ada):
        assert 0 <= m["templates"]["attribute_binding_acc"] <= 1 and "relative_position_ci" in m["templates"]
        assert m["prompt_file"]["pair"]["n"] == 1 and m["seconds_per_image_two_objects"] > 0
