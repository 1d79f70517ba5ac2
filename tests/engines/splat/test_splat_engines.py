"""The three engines through their public contract: params model, run(), artifacts, cancel, errors."""
from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engines import registry
from engines.base import Cancelled, EngineContext, EngineError
from engines.splat.formats import read_scene, write_ply
from engines.splat.synthetic import room_scene, two_plane_scene, write_dataset

DATA = Path(__file__).resolve().parents[2] / "data" / "splats"


def ctx_for(tmp_path: Path, cancelled: bool = False, events: list | None = None) -> EngineContext:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return EngineContext(work_dir=work, is_cancelled=lambda: cancelled,
                         report=(events.append if events is not None else (lambda ev: None)))


def run(name: str, ctx: EngineContext, **params):  # noqa: ANN003, ANN201
    eng = registry.get(name)
    return eng().run(eng.params_model(**params), ctx)


def test_registered_with_light_params_schemas() -> None:
    for name in ("splat-render", "splat-planes", "splat-reconstruct"):
        eng = registry.get(name)
        schema = eng.params_model.model_json_schema()
        for field, spec in schema["properties"].items():
            assert spec.get("description"), (name, field)
    assert registry.get("splat-reconstruct").idempotent


@pytest.mark.parametrize("mode", ["alpha", "wsr"])
@pytest.mark.parametrize("output", ["rgb", "depth", "normal", "planes"])
def test_render_engine_outputs(tmp_path: Path, mode: str, output: str) -> None:
    scene = tmp_path / "room.ply"
    write_ply(room_scene(spacing=0.12), scene)
    events: list = []
    res = run("splat-render", ctx_for(tmp_path, events=events), scene=str(scene), mode=mode, output=output,
              width=48, height=40, azimuth=-45, elevation=30)
    (art,) = res.artifacts
    assert art.kind == "image" and art.mime == "image/png" and art.path.parent == tmp_path / "work"
    im = np.asarray(Image.open(art.path))
    assert im.shape == (40, 48, 3) and im.std() > 5
    assert events and events[-1].step == events[-1].total


def test_render_engine_real_sample_and_splat(tmp_path: Path) -> None:
    for f in ("fruit_drops_minimal.ply", "minimal.splat"):
        res = run("splat-render", ctx_for(tmp_path), scene=str(DATA / f), width=32, height=32)
        assert np.asarray(Image.open(res.artifacts[0].path)).std() > 2
        assert res.meta["n_gaussians"] == (4721 if f.endswith(".ply") else 4)


def test_render_engine_zoom(tmp_path: Path) -> None:
    """radius_scale < 1 moves the camera closer: the scene covers more of the frame."""
    cover = []
    for z in (1.0, 0.5):
        res = run("splat-render", ctx_for(tmp_path), scene=str(DATA / "fruit_drops_minimal.ply"), width=48, height=48,
                  radius_scale=z, output="depth")
        im = np.asarray(Image.open(res.artifacts[0].path))
        cover.append((im.sum(-1) > 0).mean())
    assert cover[1] > cover[0] + 0.05


def test_render_engine_rejects_malformed_scenes(tmp_path: Path) -> None:
    bad = tmp_path / "bad.ply"
    bad.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 2\nproperty float x\nend_header\n"
                    + b"\0" * 8)
    with pytest.raises(EngineError, match="plain mesh|lacks"):
        run("splat-render", ctx_for(tmp_path), scene=str(bad))
    with pytest.raises(EngineError, match="cap"):
        run("splat-render", ctx_for(tmp_path), scene=str(DATA / "fruit_drops_minimal.ply"), max_gaussians=100)
    assert not any((tmp_path / "work").iterdir())  # nothing stored


def test_render_engine_cancel(tmp_path: Path) -> None:
    with pytest.raises(Cancelled):
        run("splat-render", ctx_for(tmp_path, cancelled=True), scene=str(DATA / "minimal.splat"))


def test_planes_engine(tmp_path: Path) -> None:
    scene, _, gt = two_plane_scene()
    write_ply(scene, tmp_path / "two.ply")
    res = run("splat-planes", ctx_for(tmp_path), scene=str(tmp_path / "two.ply"), up="z", width=48, height=48)
    kinds = {a.path.name: a.kind for a in res.artifacts}
    assert kinds == {"planes.json": "json", "planes.png": "image", "planes.ply": "mesh", "plane_labels.json": "json"}
    planes = json.loads((tmp_path / "work" / "planes.json").read_text())
    assert len(planes) == 2
    for p in planes:
        assert set(p) >= {"normal", "offset", "count", "extent"} and len(p["normal"]) == 3
    normals = np.array([p["normal"] for p in planes])
    for gn, _ in gt:
        assert np.abs(normals @ gn).max() > np.cos(np.radians(2))
    labels = json.loads((tmp_path / "work" / "plane_labels.json").read_text())
    assert len(labels) == len(scene)
    assert read_scene  # noqa: B018 - module import is used elsewhere


def test_planes_engine_obj_and_cancel(tmp_path: Path) -> None:
    write_ply(room_scene(spacing=0.12), tmp_path / "room.ply")
    res = run("splat-planes", ctx_for(tmp_path), scene=str(tmp_path / "room.ply"), mesh_format="obj",
              width=32, height=32)
    assert any(a.path.suffix == ".obj" and a.mime == "model/obj" for a in res.artifacts)
    assert res.meta["n_planes"] == 8
    with pytest.raises(Cancelled):
        run("splat-planes", ctx_for(tmp_path, cancelled=True), scene=str(tmp_path / "room.ply"))


class CancelAfter:
    """is_cancelled that turns true after n calls: cancel lands inside the optimisation loop."""

    def __init__(self, n: int) -> None:
        self.n, self.calls = n, 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.calls > self.n


@pytest.fixture(scope="module")
def image_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = write_dataset(room_scene(spacing=0.12), tmp_path_factory.mktemp("ds") / "set", n_train=6, n_test=2,
                      width=24, height=24)
    z = d.parent / "set.zip"
    with zipfile.ZipFile(z, "w") as f:
        for p in d.rglob("*"):
            f.write(p, p.relative_to(d))
    return z


@pytest.mark.parametrize("mode", ["alpha", "wsr"])
def test_reconstruct_engine(tmp_path: Path, image_zip: Path, mode: str) -> None:
    events: list = []
    res = run("splat-reconstruct", ctx_for(tmp_path, events=events), images=str(image_zip), mode=mode, steps=12,
              n_init=300, max_side=24)
    ply = next(a for a in res.artifacts if a.kind == "splat")
    s = read_scene(ply.path)
    assert len(s) == res.meta["n_gaussians"] > 0
    assert res.meta["psnr_test"] is not None and res.meta["n_test"] == 2
    if mode == "wsr":
        assert s.meta["wsr_variant"] == "lc" and s.vdo is not None
    assert events[-1].step == 12 and events[-1].total == 12
    previews = [ev.preview for ev in events if ev.preview is not None]
    assert previews and previews[0].parent == tmp_path / "work" and previews[0].is_file()


def test_reconstruct_engine_cancels_within_one_step(tmp_path: Path, image_zip: Path) -> None:
    chk = CancelAfter(3)
    ctx = ctx_for(tmp_path)
    ctx.is_cancelled = chk
    with pytest.raises(Cancelled):
        run("splat-reconstruct", ctx, images=str(image_zip), steps=1000, n_init=100, max_side=16)
    assert chk.calls == 4  # one check before training, then one per optimisation step


def test_reconstruct_engine_bad_input(tmp_path: Path, image_zip: Path) -> None:
    with pytest.raises(EngineError, match="directory or a .zip"):
        run("splat-reconstruct", ctx_for(tmp_path), images=str(DATA / "minimal.splat"), steps=1)
    broken = tmp_path / "broken"
    with zipfile.ZipFile(image_zip) as z:
        z.extractall(broken)
    shutil.rmtree(broken / "train")
    with pytest.raises(EngineError, match="missing"):
        run("splat-reconstruct", ctx_for(tmp_path), images=str(broken), steps=1)


def test_reconstruct_demo_room_needs_no_input(tmp_path) -> None:  # noqa: ANN001
    from engines.base import EngineContext
    from engines.splat.engine import SplatReconstruct
    from engines.splat.params import ReconstructParams

    with pytest.raises(ValueError, match="exactly one"):
        ReconstructParams()
    res = SplatReconstruct().run(ReconstructParams(demo="room", steps=5, n_init=200, max_side=32),
                                 EngineContext(work_dir=tmp_path))
    assert res.artifacts[0].path.suffix == ".ply" and res.meta["n_train"] == 12


@pytest.mark.parametrize("mode", ["alpha", "wsr"])
def test_reconstruct_engine_leaves_the_global_rng_alone(tmp_path: Path, image_zip: Path, mode: str) -> None:
    """The worker runs engines on threads side by side: reconstruction draws from its own
    generator (params.seed), never reseeds torch's process-global RNG, and does not depend on it."""
    import torch

    def once(sub: str, global_seed: int) -> tuple[bytes, torch.Tensor, torch.Tensor]:
        torch.manual_seed(global_seed)  # a different global state each time: the result must not care
        before = torch.get_rng_state()
        res = run("splat-reconstruct", ctx_for(tmp_path / sub), images=str(image_zip), mode=mode, steps=12,
                  n_init=200, max_side=16, seed=5)
        after = torch.get_rng_state()
        ply = next(a for a in res.artifacts if a.kind == "splat")
        return ply.path.read_bytes(), before, after

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "c").mkdir()
    a, before, after = once("a", 1)
    assert torch.equal(before, after), "splat-reconstruct changed torch's global RNG state"
    b, _, _ = once("b", 2)
    assert a == b  # same seed, whatever the global RNG holds: the same scene, byte for byte
    c = run("splat-reconstruct", ctx_for(tmp_path / "c"), images=str(image_zip), mode=mode, steps=12,
            n_init=200, max_side=16, seed=6)
    assert next(x for x in c.artifacts if x.kind == "splat").path.read_bytes() != a  # the seed is used
