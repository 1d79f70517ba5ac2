"""Splat tab: load a 3DGS scene, orbit it with server renders (sorted alpha next to
sort-free WSR), depth/normal/plane views, planar parsing with a plane list, the in-browser
WebGL viewer, and reconstruction of a posed image set as a job."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gradio as gr

from studio.catalog import engine_schema, sample_scenes
from studio.errors import StudioError
from studio.wiring import Services
from ui.common import asset_file, fmt_job_line

VIEWER = "/static/splat/viewer.html"


def scene_choices(services: Services) -> list[tuple[str, str]]:
    return [(f"{a.filename or a.id} ({a.meta.get('n_gaussians', a.meta.get('gaussians', '?'))} splats)", a.id)
            for a in services.assets.list(kind="splat", limit=200)]


def viewer_link(scene_id: str | None, mode: str = "alpha", planes_id: str | None = None) -> str:
    if not scene_id:
        return "Load a scene to open the 3D viewer."
    url = f"{VIEWER}?url=/api/v1/assets/{scene_id}&mode={mode}&w=800&h=600"
    if planes_id:
        url += f"&planes=/api/v1/assets/{planes_id}&color=planes"
    return (f'<a href="{url}" target="_blank" id="splat-viewer-link">Open the WebGL viewer ({mode}) ↗</a> · '
            f'<a href="/api/v1/assets/{scene_id}" download>download scene</a>')


def build_tab(services: Services) -> None:
    if engine_schema("splat-render") is None:
        return
    with gr.Tab("Splat", id="splat") as tab:
        jobs_state = gr.State({})  # role -> job id; written by the buttons only
        rec_selected = gr.State([])  # reconstructions whose scene was selected; written by the timer only
        with gr.Row():
            with gr.Column(scale=4):
                upload = gr.File(label="Drop a .ply or .splat scene", file_types=[".ply", ".splat"],
                                 elem_id="splat-upload")
                scene = gr.Dropdown(scene_choices(services), label="Scene", elem_id="splat-scene",
                                    allow_custom_value=False)
                with gr.Row():
                    az = gr.Slider(-180, 180, 30, step=1, label="Azimuth °", elem_id="splat-az")
                    el = gr.Slider(-89, 89, 20, step=1, label="Elevation °", elem_id="splat-el")
                with gr.Row():
                    zoom = gr.Slider(0.2, 4.0, 1.0, step=0.05, label="Zoom (× fitted distance)", elem_id="splat-zoom")
                    fov = gr.Slider(10, 120, 50, step=1, label="FOV °")
                with gr.Row():
                    output = gr.Radio(["rgb", "depth", "normal", "planes"], value="rgb", label="View")
                    size = gr.Radio(["256", "384", "512"], value="256", label="Size")
                render_btn = gr.Button("Render alpha vs WSR", variant="primary", elem_id="splat-render")
                planes_btn = gr.Button("Find planes", elem_id="splat-planes")
                link = gr.HTML(viewer_link(None), elem_id="splat-link")
            with gr.Column(scale=6):
                status = gr.Markdown("No scene.", elem_id="splat-status")
                with gr.Row():
                    alpha_img = gr.Image(label="Sorted alpha", type="filepath", interactive=False, elem_id="splat-alpha")
                    wsr_img = gr.Image(label="Weighted sum (sort-free)", type="filepath", interactive=False,
                                       elem_id="splat-wsr")
                planes_img = gr.Image(label="Plane instances", type="filepath", interactive=False)
                planes_table = gr.Dataframe(headers=["#", "normal", "offset", "count", "extent"], interactive=False,
                                            label="Planes", elem_id="splat-plane-list")
                downloads = gr.File(label="Downloads (planes.json, mesh)", file_count="multiple", interactive=False)
        with gr.Accordion("Reconstruct from posed images", open=False):
            gr.Markdown("A .zip with `transforms.json` (NeRF-synthetic layout) and its images. "
                        "The result is a .ply scene that appears in the scene list.")
            rec_file = gr.File(label="Posed image set (.zip)", file_types=[".zip"], elem_id="splat-rec-upload")
            with gr.Row():
                rec_mode = gr.Radio(["alpha", "wsr"], value="alpha", label="Renderer in the loop")
                rec_steps = gr.Slider(50, 5000, 300, step=50, label="Steps")
            with gr.Row():
                rec_btn = gr.Button("Reconstruct my images", elem_id="splat-rec-submit")
                demo_btn = gr.Button("Reconstruct the demo room", elem_id="splat-rec-demo")

        def on_upload(file: Any) -> tuple[Any, str]:
            if not file:
                return gr.update(), "No scene."
            path = file if isinstance(file, str) else file.name
            try:
                with open(path, "rb") as f:
                    a = services.assets.upload(f, Path(path).name)
            except StudioError as e:
                raise gr.Error(str(e)) from None
            if a.kind != "splat":
                raise gr.Error(f"{Path(path).name} is a {a.kind}, not a Gaussian-splat scene")
            return gr.update(choices=scene_choices(services), value=a.id), f"Loaded {Path(path).name}."

        upload.upload(on_upload, inputs=upload, outputs=[scene, status])

        def on_open(current: str | None) -> tuple[Any, str]:
            """The list always shows what exists now; a new user starts on a shipped sample scene."""
            choices = scene_choices(services)
            if not choices:
                for path in sample_scenes():
                    with open(path, "rb") as f:
                        services.assets.upload(f, f"sample-{path.name}")
                choices = scene_choices(services)
            ids = [c[1] for c in choices]
            value = current if current in ids else (ids[0] if ids else None)
            note = "Sample scene loaded: orbit it, find planes, or drop your own .ply/.splat." \
                if value and value != current else gr.update()
            return gr.update(choices=choices, value=value), note

        tab.select(on_open, inputs=scene, outputs=[scene, status])

        def submit_render(scene_id: str | None, az_: float, el_: float, zoom_: float, fov_: float, out: str,
                          sz: str, jobs: dict) -> tuple[dict, str, str]:
            if not scene_id:
                raise gr.Error("load or pick a scene first")
            jobs = dict(jobs)
            cam = {"azimuth": az_, "elevation": el_, "fov": fov_, "width": int(sz), "height": int(sz)}
            if zoom_ != 1.0:
                cam["radius_scale"] = zoom_
            try:
                for mode in ("alpha", "wsr"):
                    p = {"scene": scene_id, "mode": mode, "output": out} | _camera(cam, services)
                    jobs[mode] = services.jobs.submit("splat-render", p, priority=10, origin="ui").id
            except StudioError as e:
                raise gr.Error(str(e)) from None
            return jobs, "Rendering…", viewer_link(scene_id)

        cam_inputs = [scene, az, el, zoom, fov, output, size, jobs_state]
        render_btn.click(submit_render, inputs=cam_inputs, outputs=[jobs_state, status, link])
        for s in (az, el, zoom, fov):
            s.release(submit_render, inputs=cam_inputs, outputs=[jobs_state, status, link])
        output.change(submit_render, inputs=cam_inputs, outputs=[jobs_state, status, link])
        scene.change(submit_render, inputs=cam_inputs, outputs=[jobs_state, status, link])

        def submit_planes(scene_id: str | None, az_: float, el_: float, sz: str, jobs: dict) -> tuple[dict, str]:
            if not scene_id:
                raise gr.Error("load or pick a scene first")
            try:
                jid = services.jobs.submit("splat-planes", {"scene": scene_id, "azimuth": az_, "elevation": el_,
                                                            "width": int(sz), "height": int(sz)}, origin="ui").id
            except StudioError as e:
                raise gr.Error(str(e)) from None
            return dict(jobs) | {"planes": jid}, "Finding planes…"

        planes_btn.click(submit_planes, inputs=[scene, az, el, size, jobs_state], outputs=[jobs_state, status])

        def submit_rec(file: Any, mode: str, steps: float, jobs: dict) -> tuple[dict, str]:
            if not file:
                raise gr.Error("upload a .zip of posed images first")
            path = file if isinstance(file, str) else file.name
            try:
                with open(path, "rb") as f:
                    a = services.assets.upload(f, Path(path).name)
                jid = services.jobs.submit("splat-reconstruct", {"images": a.id, "mode": mode, "steps": int(steps)},
                                           origin="ui").id
            except StudioError as e:
                raise gr.Error(str(e)) from None
            return dict(jobs) | {"reconstruct": jid}, f"Reconstruction queued ({jid[:8]}); see the Queue tab."

        rec_btn.click(submit_rec, inputs=[rec_file, rec_mode, rec_steps, jobs_state], outputs=[jobs_state, status])

        def submit_demo(mode: str, steps: float, jobs: dict) -> tuple[dict, str]:
            try:
                jid = services.jobs.submit("splat-reconstruct", {"demo": "room", "mode": mode, "steps": int(steps)},
                                           origin="ui").id
            except StudioError as e:
                raise gr.Error(str(e)) from None
            return dict(jobs) | {"reconstruct": jid}, f"Demo reconstruction queued ({jid[:8]})."

        demo_btn.click(submit_demo, inputs=[rec_mode, rec_steps, jobs_state], outputs=[jobs_state, status])

        def poll(jobs: dict, scene_id: str | None, selected: list[str]) -> tuple[Any, ...]:
            """Every 0.5 s: the tab's jobs. Only the buttons write ``jobs_state`` and only this timer
            writes ``rec_selected`` (reconstructions whose scene it already selected): a tick that
            read the jobs before a click stored new ones can then never put the old ones back."""
            upd: list[Any] = [gr.update()] * 6
            lines = []
            selected = list(selected or [])
            for role, jid in jobs.items():
                if role == "reconstruct" and jid in selected:
                    continue
                try:
                    j = services.jobs.get(jid)
                except StudioError:
                    continue
                lines.append(f"{role}: " + fmt_job_line(j))
                if j.status != "completed":
                    continue
                imgs = [a for a in j.assets if a.kind == "image"]
                if role == "alpha" and imgs:
                    upd[0] = asset_file(services, imgs[0])
                elif role == "wsr" and imgs:
                    upd[1] = asset_file(services, imgs[0])
                elif role == "planes":
                    if imgs:
                        upd[2] = asset_file(services, imgs[0])
                    js = [a for a in j.assets if a.filename.endswith("planes.json")]
                    if js:
                        planes = json.loads(services.assets.path(js[0].id).read_text())
                        planes = planes.get("planes", planes) if isinstance(planes, dict) else planes
                        upd[3] = [[i, [round(x, 3) for x in p["normal"]], round(p["offset"], 3), p["count"],
                                   [round(x, 3) for x in p["extent"]] if isinstance(p["extent"], list)
                                   else round(p["extent"], 3)] for i, p in enumerate(planes)]
                        lines[-1] += f" — {len(planes)} plane{'s' if len(planes) != 1 else ''} found" + (
                            " (no flat surface big enough in this scene)" if not planes else "")
                    upd[4] = [asset_file(services, a) for a in j.assets if a.kind != "image"]
                elif role == "reconstruct":  # select (and so render) the new scene, once
                    made = next((a.id for a in j.assets if a.kind == "splat"), None)
                    if made:
                        upd[5] = gr.update(choices=scene_choices(services), value=made)
                        lines[-1] += " — the new scene is selected"
                    selected.append(jid)
            return (*upd, "\n\n".join(lines) or gr.update(), selected)

        gr.Timer(0.5).tick(poll, inputs=[jobs_state, scene, rec_selected],
                           outputs=[alpha_img, wsr_img, planes_img, planes_table, downloads, scene, status,
                                    rec_selected],
                           show_progress="hidden")


def _camera(cam: dict[str, Any], services: Services) -> dict[str, Any]:
    """Camera params for the render engine (zoom is applied by the engine's fitted radius when supported)."""
    schema = engine_schema("splat-render") or {}
    props = schema.get("properties", {})
    out = {k: v for k, v in cam.items() if k in props}
    if "radius_scale" in cam and "radius_scale" in props:
        out["radius_scale"] = cam["radius_scale"]
    return out
