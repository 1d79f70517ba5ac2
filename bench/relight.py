"""Relighting figures that exist so far: PQ round trip, SH irradiance against brute-force
integration, the speed of light-adding shading, and the metrics' own accuracy on the HDR
world's exact maps. Text→HDRI generation and portrait segmentation/normals are not built
yet: their figures are reported as null with the reason.

    studio bench relight --json [--maps 48 --width 256]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="studio bench relight")
    ap.add_argument("--maps", type=int, default=48, help="world maps (seeds 0..N-1)")
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from engines.relight import envworld as W
    from engines.relight import metrics as M
    from engines.relight import pq
    from engines.relight import shading as SH
    from engines.relight import sphere as S

    x = np.logspace(-3, 4, 10000)
    pq_err = float(np.abs(pq.decode(pq.encode(x)) / x - 1).max())
    rng = np.random.default_rng(0)
    normals = rng.normal(size=(256, 3))
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    sh_err, dir_err, col_err, dr_sun, seam, centre, render_s = [], [], [], [], [], [], []
    for seed in range(args.maps):
        t0 = time.perf_counter()
        env, meta, _ = W.sample(seed, width=args.width)
        render_s.append(time.perf_counter() - t0)
        e_sh = S.irradiance_sh(S.project_sh(env), normals)
        e_bf = S.irradiance_bruteforce(env, normals)
        sh_err.append(float(np.abs(e_sh - e_bf).mean() / np.abs(e_bf).mean()))
        seam.append(M.seam_error(env))
        centre.append(M.column_jump(env, args.width // 2))
        if meta["kind"] == "overcast":
            continue
        lt = meta["lights"][meta["dominant"]]
        dir_err.append(M.angle_deg(M.dominant_direction(env), np.array(lt["direction"])))
        col_err.append(M.color_error(env, np.array(lt["direction"]), np.array(lt["rgb"])))
        if meta["kind"] == "sun":
            dr_sun.append(M.dynamic_range(env))
    env, _, _ = W.sample(0, "studio", width=args.width)
    coeffs = S.project_sh(env)
    img = rng.integers(0, 256, (256, 256, 3)).astype(np.uint8)
    nc = rng.normal(size=(256, 256, 3))
    nc[..., 2] = -np.abs(nc[..., 2])
    nc /= np.linalg.norm(nc, axis=-1, keepdims=True)
    matte = np.ones((256, 256), np.float32)
    SH.shade(img, nc, matte, coeffs)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 2.0:
        SH.shade(img, nc, matte, coeffs, yaw=0.01 * n)
        n += 1
    shading_fps = n / (time.perf_counter() - t0)
    q = lambda v, p: float(np.percentile(v, p))  # noqa: E731
    out = {
        "maps": args.maps, "width": args.width,
        "pq_roundtrip_max_rel_error": pq_err,
        "sh_vs_bruteforce_error_median": round(statistics.median(sh_err), 4),
        "sh_vs_bruteforce_error_p90": round(q(sh_err, 90), 4),
        "shading_only_fps_256": round(shading_fps, 1),
        "world_gt": {"dir_error_deg_median": round(statistics.median(dir_err), 3),
                     "dir_error_deg_max": round(max(dir_err), 3),
                     "color_error_median": round(statistics.median(col_err), 4),
                     "sun_dynamic_range_median": round(statistics.median(dr_sun), 1) if dr_sun else None,
                     "seam_jump_mean": round(float(np.mean(seam)), 5),
                     "centre_column_jump_mean": round(float(np.mean(centre)), 5),
                     "render_ms_median": round(1000 * statistics.median(render_s), 1)},
        "hdri_light_dir_error_deg": None, "hdri_color_error": None, "hdri_dynamic_range": None, "seam_error": None,
        "hdri_seconds": None, "relight_fps_256": None,
        "not_measured": "no text-to-HDRI model and no portrait segmentation/normal model yet (issue 16 open)",
    }
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
