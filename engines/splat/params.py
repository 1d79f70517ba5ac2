"""Params models of the splat engines. Import-light on purpose (no torch/numpy/open3d):
listing engine schemas must stay fast."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from engines.base import Params, input_field

SCENE_KINDS = ("splat",)


class CameraParams(Params):
    """Orbit camera shared by the render and planes engines."""

    azimuth: float = Field(30.0, ge=-360.0, le=360.0, description="orbit azimuth in degrees, about the up axis")
    elevation: float = Field(20.0, ge=-89.0, le=89.0, description="orbit elevation in degrees above the horizon")
    radius: float | None = Field(None, gt=0.0, le=1e6,
                                 description="camera distance from the target; empty = fit the scene bounds")
    radius_scale: float = Field(1.0, ge=0.05, le=20.0,
                                description="zoom: multiplies the camera distance (fitted or given); <1 is closer")
    fov: float = Field(50.0, ge=5.0, le=150.0, description="horizontal field of view in degrees")
    target: tuple[float, float, float] | None = Field(None, description="look-at point; empty = scene centre")
    up: Literal["auto", "y", "-y", "z", "-z"] = Field(
        "auto", description="world up axis; auto = the scene's own hint, else -y (COLMAP/INRIA captures)")
    width: int = Field(256, ge=16, le=2048, description="image width in pixels")
    height: int = Field(256, ge=16, le=2048, description="image height in pixels")
    background: Literal["black", "white"] = Field("black", description="background colour")


class RenderParams(CameraParams):
    scene: str = input_field("3DGS scene (.ply or .splat)", kinds=SCENE_KINDS)
    mode: Literal["alpha", "wsr"] = Field(
        "alpha", description="alpha = sorted alpha blending (3DGS); wsr = sort-free weighted-sum rendering")
    wsr_variant: Literal["auto", "dir", "exp", "lc"] = Field(
        "auto", description="WSR weight: dir (constant), exp (exp(-d/sigma)), lc (max(0,1-d/sigma)); auto = scene's")
    output: Literal["rgb", "depth", "normal", "planes"] = Field(
        "rgb", description="what to draw: colour, depth, normals, or plane instances")
    max_gaussians: int = Field(5_000_000, ge=1, le=50_000_000, description="refuse scenes with more Gaussians")


class PlanesParams(CameraParams):
    scene: str = input_field("3DGS scene (.ply or .splat)", kinds=SCENE_KINDS)
    angle_deg: float = Field(10.0, ge=0.5, le=45.0, description="max normal disagreement within a plane (degrees)")
    dist_rel: float = Field(0.01, ge=1e-4, le=0.2,
                            description="max distance to a plane, as a fraction of the scene diagonal")
    min_opacity: float = Field(0.3, ge=0.0, le=1.0, description="ignore Gaussians more transparent than this")
    max_flatness: float = Field(0.25, ge=0.01, le=1.0,
                                description="Gaussians with smallest/middle scale below this also vote with their own shortest axis")
    min_count: int = Field(30, ge=3, le=1_000_000, description="smallest plane instance, in Gaussians")
    max_planes: int = Field(64, ge=1, le=1024, description="keep at most this many planes (largest first)")
    mode: Literal["alpha", "wsr"] = Field("alpha", description="renderer for the coloured plane render")
    mesh_format: Literal["ply", "obj"] = Field("ply", description="file format of the plane mesh")
    max_gaussians: int = Field(5_000_000, ge=1, le=50_000_000, description="refuse scenes with more Gaussians")


class ReconstructParams(Params):
    images: str | None = input_field(
        "posed image set: a folder or .zip with transforms.json (NeRF-synthetic layout) and images",
        kinds=("archive",), default=None)
    demo: Literal["none", "room"] = Field(
        "none", description="instead of images: render the built-in synthetic room with known cameras")
    mode: Literal["alpha", "wsr"] = Field("alpha", description="renderer in the training loop")
    wsr_variant: Literal["dir", "exp", "lc"] = Field("lc", description="WSR weight variant when mode=wsr")
    steps: int = Field(300, ge=1, le=100_000, description="optimisation steps (one image per step)")
    max_side: int = Field(64, ge=16, le=1024, description="downscale images so the longer side is at most this")
    n_init: int = Field(2000, ge=16, le=1_000_000, description="random initial Gaussians")
    max_gaussians: int = Field(20000, ge=16, le=5_000_000, description="densification budget")
    sh_degree: int = Field(0, ge=0, le=3, description="spherical-harmonics degree of the colours")
    background: Literal["black", "white"] = Field("black", description="background the images are composited on")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="random seed")

    @model_validator(mode="after")
    def _one_source(self) -> "ReconstructParams":
        if (self.images is None) == (self.demo == "none"):
            raise ValueError("give exactly one of images (a posed image set) or demo")
        return self
