"""The bench prints exactly one JSON object with the documented keys (quick sizes)."""
from __future__ import annotations

import json

import pytest


def test_bench_quick_prints_one_json_object(capsys: pytest.CaptureFixture[str]) -> None:
    from bench.splat import main

    assert main(["--quick", "--skip", "browser"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    doc = json.loads(out[0])
    for k in ("sample", "synthetic"):
        r = doc["render"][k]
        assert r["n_gaussians"] > 0 and r["alpha_ms"] > 0 and r["wsr_ms"] > 0
        assert abs(r["speedup"] - r["alpha_ms"] / r["wsr_ms"]) < 0.01
    assert doc["planes"]["ours"]["planes_found"] == 2
    assert set(doc["reconstruct"]) >= {"alpha", "wsr"} and doc["reconstruct"]["alpha"]["psnr_test"] > 0
    assert doc["targets_met"]["sample_256_lt_200ms"] is None  # not measured at 256 in quick mode
    dev = doc["planes_dev"]  # quick: one tiny reconstruction, a smoke test of the dev-set plumbing
    cell = dev["scenes"]["corner-0"]
    assert set(cell) >= {"recon", "noisy", "floaters", "scaled"}
    for v in ("recon", "scaled"):
        assert set(cell[v]) >= {"ours", "open3d_ransac", "open3d_patches", "ahead_of_open3d"}
        assert {"goals_met", "worst_err_deg", "max_instances", "assigned_on_big"} <= set(cell[v]["ours"])
    assert dev["summary"]["cells"] == 4
