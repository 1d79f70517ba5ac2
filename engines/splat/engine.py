"""The three splat engines: render, planes, reconstruct."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from engines.base import Artifact, Engine, EngineContext, EngineError, EngineResult
from engines.splat.params import CameraParams, PlanesParams, ReconstructParams, RenderParams

BACKGROUNDS = {"black": (0.0, 0.0, 0.0), "white": (1.0, 1.0, 1.0)}


def _device(ctx: EngineContext) -> str:
    import torch

    return ctx.device if ctx.device.startswith("cuda") and torch.cuda.is_available() else "cpu"


def _camera(p: CameraParams, scene: Any) -> Any:
    """Orbit camera from params, defaults fitted to the scene's robust bounds."""
    from engines.splat.render import UP_AXES, orbit_camera

    lo, hi = scene.bounds()
    target = p.target if p.target is not None else tuple(float(x) for x in (lo + hi) / 2)
    up = p.up if p.up != "auto" else str(scene.meta.get("up", "-y"))
    if up not in UP_AXES:
        up = "-y"
    radius = p.radius
    if radius is None:
        half = 0.5 * float(np.linalg.norm(hi - lo)) or 1.0
        fov = math.radians(min(p.fov, p.fov * p.height / p.width))
        radius = half / math.sin(fov / 2) * 1.05
    return orbit_camera(target, p.azimuth, p.elevation, radius * p.radius_scale, p.fov, p.width, p.height, up)


def _load(path_value: str, ctx: EngineContext, max_gaussians: int) -> Any:
    from engines.splat.formats import read_scene

    scene = read_scene(ctx.resolve_input(path_value), max_gaussians)
    if len(scene) == 0:
        raise EngineError("scene has no Gaussians")
    return scene


def _save_png(arr: np.ndarray, path: Path) -> Path:
    from PIL import Image

    Image.fromarray(arr).save(path)
    return path


class SplatRender(Engine):
    name = "splat-render"
    title = "Splat render"
    description = ("Render a 3DGS scene (.ply/.splat) from an orbit camera with sorted alpha blending or "
                   "sort-free weighted-sum rendering; colour, depth, normal or plane-instance output.")
    params_model = RenderParams
    idempotent = True

    def run(self, params: RenderParams, ctx: EngineContext) -> EngineResult:  # type: ignore[override]
        import torch

        from engines.splat.render import WSRConfig, colorize_depth, colorize_normal, render, to_uint8

        ctx.progress(0, 2, "loading scene")
        scene = _load(params.scene, ctx, params.max_gaussians)
        ctx.check_cancelled()
        cam = _camera(params, scene)
        colors = None
        meta: dict[str, Any] = {"n_gaussians": len(scene), "mode": params.mode, "output": params.output}
        if params.output == "planes":
            from engines.splat.planes import instance_colors, parse_planes

            res = parse_planes(scene, check=ctx.check_cancelled)
            colors = torch.from_numpy(instance_colors(res.labels, len(res.planes)))
            meta["n_planes"] = len(res.planes)
        wsr = None
        if params.mode == "wsr" and params.wsr_variant != "auto":
            wsr = WSRConfig(params.wsr_variant, scene.meta.get("wsr_sigma"), scene.meta.get("wsr_bg_weight", 0.02))
        ctx.check_cancelled()
        ctx.progress(1, 2, "rendering")
        dev = _device(ctx)
        from engines.splat.render import SplatTensors

        outputs = {"rgb": ("rgb",), "depth": ("depth",), "normal": ("normal",), "planes": ("planes",)}[params.output]
        with torch.no_grad():
            out = render(SplatTensors.from_scene(scene, dev), cam.to(dev), params.mode, outputs,
                         BACKGROUNDS[params.background], wsr, colors, use_gsplat=dev.startswith("cuda"))
        if params.output == "rgb":
            img = to_uint8(out["rgb"])
        elif params.output == "depth":
            img = colorize_depth(out["depth"], out["alpha"])
        elif params.output == "normal":
            img = colorize_normal(out["normal"], out["alpha"])
        else:
            img = to_uint8(out["planes"])
        path = _save_png(img, ctx.work_dir / f"splat_{params.mode}_{params.output}.png")
        ctx.progress(2, 2, "done")
        return EngineResult([Artifact(path, "image", "image/png", meta)], meta)


class SplatPlanes(Engine):
    name = "splat-planes"
    title = "Splat planes"
    description = ("Find plane instances in a 3DGS scene (PGS-style, robust to real captures): planes.json, a "
                   "plane-coloured render and the planes as a mesh.")
    params_model = PlanesParams
    idempotent = True

    def run(self, params: PlanesParams, ctx: EngineContext) -> EngineResult:  # type: ignore[override]
        import torch

        from engines.splat.planes import PlaneConfig, instance_colors, parse_planes, write_plane_mesh
        from engines.splat.render import SplatTensors, render, to_uint8

        ctx.progress(0, 3, "loading scene")
        scene = _load(params.scene, ctx, params.max_gaussians)
        ctx.check_cancelled()
        ctx.progress(1, 3, "parsing planes")
        cfg = PlaneConfig(params.min_opacity, params.max_flatness, params.angle_deg, params.dist_rel,
                          min_count=params.min_count, max_planes=params.max_planes)
        res = parse_planes(scene, cfg, check=ctx.check_cancelled)
        ctx.check_cancelled()
        ctx.progress(2, 3, "rendering")
        jpath = ctx.work_dir / "planes.json"
        jpath.write_text(json.dumps(res.planes, indent=1))
        labels_path = ctx.work_dir / "plane_labels.json"
        labels_path.write_text(json.dumps([int(x) for x in res.labels]))
        cam = _camera(params, scene)
        dev = _device(ctx)
        colors = torch.from_numpy(instance_colors(res.labels, len(res.planes)))
        with torch.no_grad():
            out = render(SplatTensors.from_scene(scene, dev), cam.to(dev), params.mode, ("rgb", "planes"),
                         BACKGROUNDS[params.background], None, colors)
        img = np.concatenate([to_uint8(out["rgb"]), to_uint8(out["planes"])], 1)
        ipath = _save_png(img, ctx.work_dir / "planes.png")
        mpath = write_plane_mesh(res.planes, ctx.work_dir / f"planes.{params.mesh_format}")
        meta = {"n_planes": len(res.planes), "n_gaussians": len(scene),
                "assigned": int((res.labels >= 0).sum())}
        ctx.progress(3, 3, "done")
        mime = "application/x-ply" if params.mesh_format == "ply" else "model/obj"
        return EngineResult([
            Artifact(jpath, "json", "application/json", {"planes": len(res.planes)}),
            Artifact(ipath, "image", "image/png", {"layout": "rgb | plane instances"}),
            Artifact(mpath, "mesh", mime, {"planes": len(res.planes)}),
            Artifact(labels_path, "json", "application/json", {"what": "plane id per Gaussian, -1 = none"}),
        ], meta)


class SplatReconstruct(Engine):
    name = "splat-reconstruct"
    title = "Splat reconstruct"
    description = ("Optimise a 3DGS scene from posed images (NeRF-synthetic transforms.json) with sorted-alpha "
                   "or weighted-sum rendering in the loop; CPU-feasible for small scenes.")
    params_model = ReconstructParams
    idempotent = True

    def run(self, params: ReconstructParams, ctx: EngineContext) -> EngineResult:  # type: ignore[override]
        import torch

        from engines.splat.formats import write_ply
        from engines.splat.reconstruct import ReconConfig, evaluate, load_dataset, reconstruct
        from engines.splat.render import render, to_uint8

        ctx.progress(0, params.steps, "loading images")
        bg = BACKGROUNDS[params.background]
        if params.demo == "room":
            from engines.splat.synthetic import room_scene, write_dataset

            source = write_dataset(room_scene(seed=params.seed), ctx.work_dir / "demo-room")
        else:
            source = ctx.resolve_input(params.images)
        train, test = load_dataset(source, params.max_side, bg)
        ctx.check_cancelled()
        cfg = ReconConfig(steps=params.steps, mode=params.mode, wsr_variant=params.wsr_variant, n_init=params.n_init,
                          max_gaussians=params.max_gaussians, sh_degree=params.sh_degree, background=bg,
                          seed=params.seed)  # reconstruct draws from its own torch.Generator(cfg.seed):
        # no process-global seeding here (the worker runs engines on threads side by side)
        every = max(1, params.steps // 20)
        preview_every = max(1, params.steps // 5)
        preview = ctx.work_dir / "preview.png"
        state: dict[str, Any] = {}

        def on_step(step: int, total: int, loss: float) -> None:
            ctx.check_cancelled()
            if step % every == 0 or step == total:
                shown = None
                if step % preview_every == 0 and "model" in state:
                    cam0, img0 = train[0]
                    with torch.no_grad():
                        r0 = render(state["model"](), cam0, params.mode, ("rgb",), bg)["rgb"]
                    shown = _save_png(np.concatenate([to_uint8(r0), to_uint8(img0)], 1), preview)
                ctx.progress(step, total, f"step {step}/{total} L1 {loss:.4f}", shown)

        result = reconstruct(train, cfg, on_step, state)
        ctx.check_cancelled()
        psnr_test = evaluate(result, test, cfg)
        psnr_train = evaluate(result, train[:8], cfg)
        scene = result.to_scene()
        scene.meta.setdefault("up", "z")  # NeRF-synthetic worlds (Blender) are z-up
        ply = write_ply(scene, ctx.work_dir / "reconstruction.ply")
        cam, img = (test or train)[0]
        with torch.no_grad():
            r = render(result, cam, params.mode, ("rgb",), bg)["rgb"]
        prev = _save_png(np.concatenate([to_uint8(r), to_uint8(img)], 1), ctx.work_dir / "reconstruction.png")
        meta = {"n_gaussians": len(scene), "mode": params.mode, "steps": params.steps,
                "psnr_train": round(psnr_train, 3),
                "psnr_test": None if math.isnan(psnr_test) else round(psnr_test, 3),
                "n_train": len(train), "n_test": len(test)}
        return EngineResult([
            Artifact(ply, "splat", "application/x-ply", meta),
            Artifact(prev, "image", "image/png", {"layout": "render | ground truth", **meta}),
        ], meta)
