"""Synthetic dataset generation, dataset loading (dir/zip, malformed) and a short reconstruction."""
from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from engines.base import EngineError
from engines.splat.reconstruct import DatasetError, ReconConfig, evaluate, load_dataset, psnr, reconstruct
from engines.splat.render import SplatTensors, render
from engines.splat.synthetic import room_scene, write_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(room_scene(spacing=0.12), tmp_path_factory.mktemp("ds"), n_train=8, n_test=2,
                         width=32, height=32)


def test_dataset_layout_and_cameras_round_trip(dataset: Path) -> None:
    doc = json.loads((dataset / "transforms_train.json").read_text())
    assert len(doc["frames"]) == 8 and doc["camera_angle_x"] > 0
    assert (dataset / "train" / "r_0.png").is_file()
    train, test = load_dataset(dataset, 32)
    assert len(train) == 8 and len(test) == 2 and train[0][1].shape == (32, 32, 3)
    # re-rendering the ground truth from the loaded (Blender -> OpenCV) cameras reproduces the images
    gt = SplatTensors.from_scene(room_scene(spacing=0.12))
    with torch.no_grad():
        for cam, img in train[:3]:
            assert psnr(render(gt, cam, "alpha")["rgb"], img) > 40


def test_zip_and_single_transforms_json(dataset: Path, tmp_path: Path) -> None:
    z = tmp_path / "set.zip"
    with zipfile.ZipFile(z, "w") as f:
        for p in dataset.rglob("*"):
            f.write(p, Path("scene") / p.relative_to(dataset))
    train, test = load_dataset(z, 16)
    assert len(train) == 8 and train[0][1].shape == (16, 16, 3)
    # a single transforms.json with hold-out every 8th frame
    flat = tmp_path / "flat"
    shutil.copytree(dataset, flat)
    tr = json.loads((flat / "transforms_train.json").read_text())
    te = json.loads((flat / "transforms_test.json").read_text())
    tr["frames"] += te["frames"] * 3  # 14 frames
    for f in ("transforms_train.json", "transforms_test.json"):
        (flat / f).unlink()
    (flat / "transforms.json").write_text(json.dumps(tr))
    a, b = load_dataset(flat, 16, holdout_every=7)
    assert len(a) + len(b) == 14 and len(b) == 2


@pytest.mark.parametrize("case,needle", [
    ("nojson", "no transforms"), ("badjson", "not valid JSON"), ("missing", "missing"),
    ("escape", "leaves the image set"), ("matrix", "4x4"), ("notzip", "directory or a .zip"),
])
def test_malformed_datasets(dataset: Path, tmp_path: Path, case: str, needle: str) -> None:
    d = tmp_path / "d"
    shutil.copytree(dataset, d)
    f = d / "transforms_train.json"
    doc = json.loads(f.read_text())
    target: Path = d
    if case == "nojson":
        f.unlink()
    elif case == "badjson":
        f.write_text("{not json")
    elif case == "missing":
        doc["frames"][0]["file_path"] = "./train/nope"
        f.write_text(json.dumps(doc))
    elif case == "escape":
        doc["frames"][0]["file_path"] = "../../etc/passwd"
        f.write_text(json.dumps(doc))
    elif case == "matrix":
        doc["frames"][0]["transform_matrix"] = [[1, 0], [0, 1]]
        f.write_text(json.dumps(doc))
    elif case == "notzip":
        target = d / "x.zip"
        target.write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match=needle) as ei:
        load_dataset(target, 16)
    assert isinstance(ei.value, EngineError)


@pytest.mark.parametrize("mode", ["alpha", "wsr"])
def test_short_reconstruction_improves_psnr(dataset: Path, mode: str) -> None:
    train, test = load_dataset(dataset, 32)
    cfg = ReconConfig(steps=60, mode=mode, n_init=600, densify_every=20, seed=0)
    init = reconstruct(train, ReconConfig(steps=0, mode=mode, n_init=600, seed=0))
    before = evaluate(init, test, cfg)
    losses: list[float] = []
    out = reconstruct(train, cfg, lambda s, t, l: losses.append(l))
    after = evaluate(out, test, cfg)
    assert len(losses) == 60 and np.mean(losses[-10:]) < 0.6 * np.mean(losses[:5])
    assert after > before + 4.0, (before, after)
    assert torch.isfinite(out.means).all()
    if mode == "wsr":
        assert set(out.meta) >= {"wsr_variant", "wsr_sigma", "wsr_bg_weight"} and out.vdo is not None
