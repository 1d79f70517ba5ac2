"""The adapter-quality bench: its world data and prompts, and one end-to-end run at toy sizes."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from bench import adapter_quality as q


def test_concept_data_and_prompts_use_the_new_word_for_the_colour() -> None:
    items = q.concept_images("zindle", "cyan", 6, seed=11)
    assert len(items) == 6
    for _, cap, lab in items:
        assert " zindle " in cap and "cyan" not in cap and lab["color"] == "cyan"
    ps = q.eval_prompts("plome", "pink", 9, seed=3)
    assert [lab["shape"] for _, lab in ps][2::3] == ["triangle"] * 3  # (triangle, pink) is held out
    assert all(" plome " in p and "pink" not in p and lab["color"] == "pink" for p, lab in ps)
    assert q.eval_prompts("plome", "pink", 9, seed=3) == ps  # fixed


def test_style_demo_sets_leave_the_style_to_the_trigger() -> None:
    from engines.adapters.data import demo_dataset

    items = demo_dataset("dotted-style", "", n=4)
    assert all(c.endswith(", in dotz style") and "dotted" not in c and "solid" not in c for _, c in items)


def test_matched_density_gives_shira_the_lora_parameter_count(tiny_model: Path) -> None:
    from diffusers import UNet2DConditionModel

    from engines.adapters.shira import target_linears

    unet = UNet2DConditionModel.from_pretrained(tiny_model / "unet")
    d = q.matched_density(unet, 4, ["to_q", "to_v"])
    lins = target_linears(unet, ["to_q", "to_v"]).values()
    assert sum(round(d * m.weight.numel()) for m in lins) == pytest.approx(
        sum(4 * (m.in_features + m.out_features) for m in lins), rel=0.01)


def test_bench_runs_end_to_end_on_a_tiny_model(tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Every method trains through the adapter-train engine, mixes through apply_adapters and
    is judged; random tiny weights learn nothing, so retention may be null — the run must say so."""
    monkeypatch.setattr(q, "CACHE", tmp_path / "cache")
    ap = argparse.ArgumentParser()
    q.add_args(ap)
    args = ap.parse_args(["--model", str(tiny_model), "--steps", "2", "--n-prompts", "2", "--sample-steps", "2",
                          "--div-prompts", "1", "--div-seeds", "2", "--q-targets", "to_q", "to_v"])
    res = q.run(args)
    json.dumps(res)
    assert set(res["concept_retention"]) == {"lora", "shira", "foura"}
    for m in ("lora", "shira", "foura"):
        for word in ("zindle", "plome"):
            d = res["retention_detail"][m][word]
            assert 0 <= d["alone"]["concept"] <= 1 and 0 <= d["mixed"]["content_acc"] <= 1
            gain = d["alone"]["concept"] - res["base"][word]["concept"]
            assert (d["retention"] is None) == (gain < q.MIN_GAIN)
        hs = res["high_strength"][m]
        assert hs["real_nn_rms"] > 0 and set(hs) == {"real_nn_rms", "1.0", "2.0"}
    assert res["train"]["shira/zindle"]["params"] == pytest.approx(res["train"]["lora/zindle"]["params"], rel=0.01)
    # cached: asking again trains nothing
    data = q.write_dataset("zindle", "cyan")
    from diffusers import UNet2DConditionModel

    density = q.matched_density(UNet2DConditionModel.from_pretrained(tiny_model / "unet"), args.q_rank, args.targets)
    path, info = q.train_adapter(tiny_model, "lora", data, "zindle", 1, args, density, res["model_key"])
    assert info == res["train"]["lora/zindle"] and path.is_file()


def test_timing_then_quality_in_one_process(tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """`studio bench adapters --json` runs the timing stage and then trains adapters in the same
    process (as a worker runs jobs one after another): the timing stage must leave no state behind
    (it used to switch grad mode off globally: 'element 0 of tensors does not require grad')."""
    import torch

    from bench import adapters as bench

    monkeypatch.setattr(q, "CACHE", tmp_path / "cache")
    assert torch.is_grad_enabled()
    assert bench.main(["--json", "--unet", "tiny", "--latent", "8", "--rounds", "1", "--model", str(tiny_model),
                       "--methods", "lora", "--steps", "2", "--n-prompts", "2", "--sample-steps", "2", "--high", "0",
                       "--q-targets", "to_q", "to_v"]) == 0
    assert torch.is_grad_enabled()
    res = json.loads(capsys.readouterr().out)
    assert res["unet"] == "tiny" and res["shira_switch_ms"] > 0 and "lora" in res["concept_retention"]
