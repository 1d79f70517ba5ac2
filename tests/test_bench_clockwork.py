"""The Clockwork-vs-DeepCache bench's choices (pure parts: which settings, what the profile records)."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from bench.clockwork import Setting, best, settings, write_profile


def _row(method: str, period: int, loss: float, speed: float, mode: str | None = None, depth: int | None = None,
         adaptor: str | None = None) -> dict:
    return {"method": method, "period": period, "mode": mode, "depth": depth, "adaptor": adaptor,
            "loss": {"mean": loss}, "speedup": {"mean": speed}}


def test_adaptor_measured_only_at_its_step_counts() -> None:
    ads = {"s8": SimpleNamespace(config={"depth": 1}), "any": SimpleNamespace(config={"depth": 0})}
    at8 = settings([2, 3], [0], [2], [0], ads, 8, {"s8": {8}})
    at20 = settings([2, 3], [0], [2], [0], ads, 20, {"s8": {8}})
    names8, names20 = {s.name for s in at8}, {s.name for s in at20}
    assert "clockwork-s8-d1-p3" in names8 and "clockwork-s8-d1-p3" not in names20
    assert "clockwork-any-d0-p3" in names8 and "clockwork-any-d0-p3" in names20
    assert "clockwork-reuse-d0-p2" in names20 and "deepcache-i2-b0" in names20
    assert Setting("clockwork", 5, "adaptor", depth=0, adaptor="x").name == "clockwork-x-d0-p5"


def test_best_is_the_fastest_within_the_loss_budget() -> None:
    rows = {"base": _row("base", 1, 0, 1.0), "a": _row("clockwork", 2, 1.9, 1.5, "adaptor", 1, "x"),
            "b": _row("clockwork", 3, 2.1, 1.9, "adaptor", 1, "x"), "c": _row("deepcache", 2, 0.5, 1.6)}
    assert best(rows, "clockwork", 2.0) == "a" and best(rows, "deepcache", 2.0) == "c"
    assert best(rows, "clockwork", 1.0) == "base"


def test_profile_names_only_adaptors_beside_the_weights(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    local, far = model / "cw_s8.safetensors", tmp_path / "elsewhere.safetensors"
    run = {"steps": 8, "max_loss": 2.0, "settings": {
        "base": _row("base", 1, 0, 1.0),
        "clockwork-elsewhere-d0-p4": _row("clockwork", 4, 0.5, 2.5, "adaptor", 0, "elsewhere"),
        "clockwork-cw_s8-d1-p3": _row("clockwork", 3, 1.0, 1.8, "adaptor", 1, "cw_s8"),
        "clockwork-reuse-d0-p2": _row("clockwork", 2, 1.5, 1.7, "reuse", 0),
        "clockwork-reuse-d1-p3": _row("clockwork", 3, 4.0, 1.9, "reuse", 1)}}
    prof = model / "clockwork_profile.json"
    write_profile(prof, "h", "DPM++ 2M", [run], ["--json"], {"cw_s8": local, "elsewhere": far})
    entry = json.loads(prof.read_text())["choices"]["DPM++ 2M"]["8"]
    assert entry["adaptor"]["adaptor"] == "cw_s8.safetensors" and entry["adaptor"]["period"] == 3
    assert entry["reuse"] == entry["reuse"] | {"period": 2, "depth": 0}
    # a regional clock written by `studio bench layout` survives a new single-object measurement
    p = json.loads(prof.read_text())
    p["choices"]["DPM++ 2M"]["8"]["adaptor"]["layout"] = {"period": 2, "depth": 1}
    prof.write_text(json.dumps(p))
    write_profile(prof, "h", "DPM++ 2M", [run], ["--json"], {"cw_s8": local, "elsewhere": far})
    entry = json.loads(prof.read_text())["choices"]["DPM++ 2M"]["8"]
    assert entry["adaptor"]["layout"] == {"period": 2, "depth": 1} and "layout" not in entry["reuse"]
