"""World training, split by stage: tiny step counts into tmp dirs (the shipped weights are never
retrained here). Training writes only to its output dir unless asked to install; resume goes
through one helper and continues exactly; evaluation imports nothing from training."""
from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest
import torch

from engines.world import paths
from engines.world import train_common as C

WORLD = Path(paths.__file__).resolve().parent


def _snapshot(*dirs: Path) -> dict[str, tuple[int, int]]:
    return {str(f): (f.stat().st_size, f.stat().st_mtime_ns) for d in dirs if d.exists()
            for f in sorted(d.rglob("*")) if f.is_file()}


@pytest.fixture
def package_untouched():  # noqa: ANN201
    """The shipped weights and docs/img are the same before and after the test."""
    before = _snapshot(paths.WEIGHTS, paths.docs_img_dir())
    yield
    assert _snapshot(paths.WEIGHTS, paths.docs_img_dir()) == before


def test_eval_imports_nothing_from_training() -> None:
    tree = ast.parse((WORLD / "eval.py").read_text())
    mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    mods |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not [m for m in mods if m.startswith("engines.world.train")], mods


def test_each_stage_resumes_through_the_one_helper() -> None:
    """No stage loads state.pt itself: the resume block lives once, in train_common.Checkpoint."""
    for stage in ("judge", "vae", "text", "unet"):
        src = (WORLD / f"train_{stage}.py").read_text()
        assert "torch.load" not in src and "Checkpoint(" in src and src.count(".resume(") == 1, stage
    assert "torch.load" not in (WORLD / "train.py").read_text()


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    lin = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(lin.parameters(), 1e-2)
    lin(torch.ones(1, 3)).sum().backward()
    opt.step()
    ck = C.Checkpoint(tmp_path, model=lin, opt=opt)
    assert ck.resume(True) == {"step": 0}  # nothing saved yet: a fresh start
    ck.save(7, best=0.5)
    lin2 = torch.nn.Linear(3, 2)
    opt2 = torch.optim.AdamW(lin2.parameters(), 1e-2)
    assert C.Checkpoint(tmp_path, model=lin2, opt=opt2).resume(False) == {"step": 0}  # not asked to resume
    st = C.Checkpoint(tmp_path, model=lin2, opt=opt2).resume(True)
    assert st == {"step": 7, "best": 0.5}
    assert torch.equal(lin.weight, lin2.weight) and opt2.state_dict()["state"][0]["step"] == 1


def test_default_output_is_the_data_dir_not_the_package(monkeypatch, tmp_path) -> None:  # noqa: ANN001
    monkeypatch.setenv("STUDIO_DATA_DIR", str(tmp_path / "data"))
    assert paths.train_dir() == tmp_path / "data" / "world-train"
    monkeypatch.delenv("STUDIO_DATA_DIR")
    assert paths.train_dir() == Path.home() / ".studio" / "world-train"


def test_text_stage_resumed_equals_uninterrupted(tmp_path, package_untouched) -> None:  # noqa: ANN001
    from safetensors.torch import load_file

    from engines.world.train import main

    assert main(["text", "--steps", "3", "--out", str(tmp_path / "a")]) == 0
    assert main(["text", "--steps", "1", "--out", str(tmp_path / "b")]) == 0
    assert main(["text", "--steps", "3", "--resume", "--out", str(tmp_path / "b")]) == 0
    for d in ("a", "b"):
        assert {"state.pt", "log.csv", "loss.png", "result.json"} <= {f.name for f in (tmp_path / d / "text").iterdir()}
    a = load_file(str(tmp_path / "a" / "text" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "text" / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_judge_and_vae_stages_write_to_out(tmp_path, package_untouched) -> None:  # noqa: ANN001
    from engines.world.train_judge import train_judge
    from engines.world.train_vae import train_vae

    meta = train_judge(tmp_path, steps=2, n_data=64, n_eval=16)
    assert (tmp_path / "judge" / "model" / "judge.safetensors").is_file()
    assert set(meta["accuracy_fresh_16"]) == {"shape", "color", "size", "position", "style", "background"}
    assert C.trained_judge(tmp_path) == tmp_path / "judge" / "model"  # the run's own judge measures its VAE
    res = train_vae(tmp_path, steps=2, n_data=64, n_val=8, n_gate=8)
    assert (tmp_path / "vae" / "model" / "config.json").is_file() and (tmp_path / "vae" / "gate.json").is_file()
    assert res["gate"]["n"] == 8 and res["gate"]["passed"] is False  # two steps do not make an autoencoder


@pytest.mark.slow  # two quick WorldEvals: ~2 minutes on a loaded 2-core box
def test_install_goes_to_the_package_only_when_asked(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """The U-Net stage on the shipped VAE and text encoder, two steps: its best export lands in
    <out>/unet/best; with install it is swapped into (a stand-in for) the package and the loss
    curve into (a stand-in for) docs/img."""
    from engines.world import train_unet as U

    sd = paths.default_model_dir()
    for out in (tmp_path / "a", tmp_path / "b"):
        shutil.copytree(sd / "vae", out / "vae" / "model")
        shutil.copytree(sd / "text_encoder", out / "text" / "model")
        shutil.copytree(sd / "tokenizer", out / "text" / "tokenizer")
    monkeypatch.setattr(U, "vae_gate", lambda out, vae, n: {"passed": True, "n": n})  # measured in the vae test
    before = _snapshot(paths.WEIGHTS, paths.docs_img_dir())
    small = {"n_data": 64, "eval_prompts": (2, 1)}
    r = U.train_unet(tmp_path / "a", steps=2, **small)
    best = tmp_path / "a" / "unet" / "best"
    assert (best / "world_train.json").is_file() and (best / "unet").is_dir() and r["best_quick_eval_overall"] >= 0
    assert (tmp_path / "a" / "unet" / "loss.png").is_file()
    assert _snapshot(paths.WEIGHTS, paths.docs_img_dir()) == before

    monkeypatch.setattr(U, "default_model_dir", lambda: tmp_path / "pkg" / "sd")
    monkeypatch.setattr(C, "docs_img_dir", lambda: tmp_path / "docs")
    U.train_unet(tmp_path / "b", steps=2, install=True, **small)
    assert (tmp_path / "pkg" / "sd" / "world_train.json").is_file()
    assert (tmp_path / "pkg" / "sd" / "model_index.json").is_file()
    assert (tmp_path / "docs" / "world-unet-loss.png").is_file()
