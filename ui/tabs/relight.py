"""Relight tab: describe the light ("sunset behind me on the left") → a 360° HDR panorama with a
draggable view and a lit sphere; pick a portrait photo or clip → relit by that panorama, with a
live in-browser preview whose yaw slider re-shades without a round trip (WebGL over the
server's image, normal and matte maps and the map's 9 SH coefficients), before/after and a
download of the server render."""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any
from urllib.parse import quote

import gradio as gr

from studio.catalog import engine_schema
from studio.demos import portrait_demo_path, portrait_demos
from studio.errors import StudioError
from studio.wiring import Services
from ui.common import asset_file, cancel_job, fmt_job_line, progress_bar

PREVIEW = "/static/relight/preview.html"
GENERATED = "generated"
UPLOADED = "uploaded"


def preview_frame(query: dict[str, Any], elem: str, height: int = 440) -> str:
    """The WebGL preview in an iframe (same origin; the page accepts only /api/v1/assets/ URLs)."""
    url = PREVIEW + "?" + "&".join(f"{k}={quote(str(v), safe='/,.-')}" for k, v in query.items() if v is not None)
    return (f"<iframe id='{elem}' src='{html.escape(url)}' title='relight preview' "
            f"style='width:100%;height:{height}px;border:0;background:#111'></iframe>")


def sh_query(sh: Any) -> str | None:
    try:
        flat = [float(v) for row in sh for v in row]
    except (TypeError, ValueError):
        return None
    return ",".join(f"{v:.6g}" for v in flat) if len(flat) == 27 else None


def builtin_choices() -> list[str]:
    schema = engine_schema("relight") or {}
    return list(schema.get("properties", {}).get("builtin", {}).get("enum", [])) or ["sunset-left"]


def build_tab(services: Services) -> None:
    if engine_schema("relight") is None:
        return
    with gr.Tab("Relight", id="relight"):
        gr.Markdown("**1. The light.** Describe it (“sunset behind me on the left”, “a blue studio light on my "
                    "right”) and generate a 360° HDR environment, pick a built-in one, or upload an .hdr/.exr. "
                    "**2. The portrait.** Upload a photo or clip of a person (or use the sample) and relight it; "
                    "turn the light with the yaw slider — the preview re-shades live in your browser — then "
                    "download the full-quality render.")
        env_state = gr.State({"source": "builtin", "asset": None})
        hdri_job = gr.State(None)
        hdri_shown = gr.State(None)
        with gr.Row():
            with gr.Column(scale=3):
                prompt = gr.Textbox(label="Describe the light", placeholder="sunset behind me on the left",
                                    elem_id="rl-prompt")
                with gr.Row():
                    seed = gr.Number(0, label="Seed", precision=0, elem_id="rl-seed")
                    steps = gr.Slider(1, 50, 20, step=1, label="Steps", elem_id="rl-steps")
                    gen = gr.Button("Generate environment", variant="primary", elem_id="rl-generate")
                with gr.Accordion("Place the main light yourself", open=False, elem_id="rl-place"):
                    place = gr.Checkbox(False, label="Use these angles instead of the words' direction",
                                        elem_id="rl-place-on")
                    with gr.Row():
                        light_az = gr.Slider(-180, 180, 90, step=1, label="Azimuth (°; 0 front, 90 your left, "
                                             "−90 your right, ±180 behind)", elem_id="rl-place-az")
                        light_el = gr.Slider(-10, 90, 20, step=1, label="Elevation (°)", elem_id="rl-place-el")
                with gr.Row():
                    builtin = gr.Dropdown(builtin_choices(), value="sunset-left", label="…or a built-in environment",
                                          elem_id="rl-builtin")
                    env_file = gr.File(label="…or upload an environment (.hdr, .exr)", file_types=[".hdr", ".exr"],
                                       elem_id="rl-env-upload", height=90)
                env_status = gr.Markdown("Environment: built-in **sunset-left**.", elem_id="rl-env-status")
                env_bar = gr.HTML(progress_bar(0), elem_id="rl-env-progress")
            with gr.Column(scale=2):
                pano_img = gr.Image(label="Panorama (tone-mapped)", type="filepath", interactive=False, height=160,
                                    elem_id="rl-pano")
                ball_img = gr.Image(label="Mirror ball", type="filepath", interactive=False, height=140,
                                    elem_id="rl-ball")
        pano_view = gr.HTML("", elem_id="rl-pano-view")
        with gr.Row():
            with gr.Column():
                sample = gr.Dropdown([("none: my own photo or clip", "")] + [(n, n) for n in portrait_demos()], value="",
                                     label="Sample portrait", elem_id="rl-sample")
                portrait = gr.File(label="Portrait photo or clip (png, jpeg, webp, mp4, webm)",
                                   file_types=["image", "video"], elem_id="rl-portrait", height=90)
                before = gr.Image(label="Before", type="filepath", interactive=False, height=300, elem_id="rl-before")
                before_video = gr.Video(label="Original clip", interactive=False, height=300, elem_id="rl-before-video")
            with gr.Column():
                yaw = gr.Slider(-180, 180, 0, step=1, label="Yaw: turn the light around the subject (°)",
                                elem_id="rl-yaw")
                strength = gr.Slider(0, 3, 0.8, step=0.05, label="Strength", elem_id="rl-strength")
                mode = gr.Radio([("light adding", "add"), ("re-shade", "mul")], value="add", label="Mode",
                                elem_id="rl-mode")
                smoothing = gr.Slider(0, 0.95, 0.4, step=0.05, label="Video: temporal smoothing", elem_id="rl-smooth")
                with gr.Row():
                    go = gr.Button("Relight", variant="primary", elem_id="rl-submit")
                    stop = gr.Button("Cancel", variant="stop", elem_id="rl-cancel")
        job_state = gr.State(None)
        shown = gr.State(None)
        status = gr.Markdown("No job yet.", elem_id="rl-status")
        bar = gr.HTML(progress_bar(0), elem_id="rl-progress")
        live = gr.HTML("", elem_id="rl-live")
        with gr.Row():
            after = gr.Image(label="After (server render)", type="filepath", interactive=False, height=360,
                             elem_id="rl-after")
            after_video = gr.Video(label="Relit clip", interactive=False, height=360, elem_id="rl-after-video")
        download = gr.File(label="Download", interactive=False, elem_id="rl-download")

        # -- environment ---------------------------------------------------------------------
        def submit_hdri(text: str, s: float, n: float, own: bool, az: float, el: float) -> tuple[Any, str]:
            if not (text or "").strip():
                raise gr.Error("describe the light, e.g. “sunset behind me on the left”")
            params: dict[str, Any] = {"prompt": text.strip(), "seed": int(s or 0), "steps": int(n)}
            if own:
                params |= {"light_azimuth": float(az), "light_elevation": float(el)}
            try:
                job = services.jobs.submit("hdri", params, origin="ui")
            except StudioError as e:
                raise gr.Error(str(e)) from None
            return job.id, fmt_job_line(job)

        gen.click(submit_hdri, inputs=[prompt, seed, steps, place, light_az, light_el], outputs=[hdri_job, env_status], trigger_mode="once",
                  api_name="relight_hdri")

        def pick_builtin(name: str) -> tuple[dict[str, Any], str, Any, Any, str]:
            return ({"source": "builtin", "asset": None, "builtin": name}, f"Environment: built-in **{name}**.",
                    None, None, "")

        builtin.input(pick_builtin, inputs=builtin, outputs=[env_state, env_status, pano_img, ball_img, pano_view])

        def upload_env(path: str | None) -> tuple[Any, str]:
            if not path:
                return gr.update(), gr.update()
            try:
                with open(path, "rb") as fh:
                    a = services.assets.upload(fh, Path(path).name)
            except StudioError as e:
                raise gr.Error(str(e)) from None
            if a.kind != "hdr":
                raise gr.Error(f"{Path(path).name} is a {a.kind}, not an .hdr/.exr environment map")
            return {"source": UPLOADED, "asset": a.id}, f"Environment: uploaded **{html.escape(a.filename)}**."

        env_file.upload(upload_env, inputs=env_file, outputs=[env_state, env_status])

        def poll_hdri(jid: str | None, done: str | None) -> tuple[Any, ...]:
            """The HDRI job's progress; once it completes, its map becomes the environment (one write
            of ``env_state``, the transition; every other tick leaves it alone, so a built-in or an
            upload picked meanwhile is never put back by a tick that read the old one)."""
            keep = gr.update()
            if not jid:
                return keep, keep, keep, keep, keep, keep, keep
            try:
                j = services.jobs.get(jid)
            except StudioError as e:
                return str(e), progress_bar(0), keep, keep, keep, keep, keep
            line = fmt_job_line(j)
            if j.status != "completed":
                return line, progress_bar(j.progress * 100), keep, keep, keep, keep, keep
            if done == jid:
                return keep, keep, keep, keep, keep, keep, keep
            hdr = next((a for a in j.assets if a.kind == "hdr" and a.meta.get("format") == "hdr"), None)
            pano = next((a for a in j.assets if a.meta.get("role") == "panorama_preview"), None)
            ball = next((a for a in j.assets if a.meta.get("role") == "mirror_ball"), None)
            light = (pano.meta.get("light") if pano else None) or {}
            placed = (j.result_meta or {}).get("light_placed")
            if isinstance(placed, dict):
                line += (f"<br>Main light placed at azimuth {placed.get('azimuth_deg')}°, elevation "
                         f"{placed.get('elevation_deg')}° (from the {html.escape(str(placed.get('from')))}).")
            line += (f"<br>Dominant light: **{html.escape(str(light.get('where', '?')))}** (elevation "
                     f"{light.get('elevation_deg')}°, azimuth {light.get('azimuth_deg')}°), dynamic range "
                     f"{light.get('dynamic_range')}×.")
            view = preview_frame({"pano": f"/api/v1/assets/{pano.id}", "sh": sh_query(pano.meta.get("sh"))},
                                 "rl-pano-frame", 320) if pano else ""
            env = {"source": GENERATED, "asset": hdr.id if hdr else None}
            return (line, progress_bar(100), asset_file(services, pano) if pano else None,
                    asset_file(services, ball) if ball else None, view, env, jid)

        gr.Timer(1.0).tick(poll_hdri, inputs=[hdri_job, hdri_shown],
                           outputs=[env_status, env_bar, pano_img, ball_img, pano_view, env_state, hdri_shown],
                           show_progress="hidden")

        # -- portrait --------------------------------------------------------------------------
        def pick_sample(name: str) -> tuple[Any, Any]:
            if not name:
                return gr.update(), gr.update()
            try:
                p = portrait_demo_path(services.settings.data_dir, name)
            except StudioError as e:
                raise gr.Error(str(e)) from None
            return (str(p), None) if p.suffix == ".png" else (None, str(p))

        def show_upload(p: str | None) -> tuple[str, Any, Any]:
            still = bool(p) and Path(p).suffix.lower() in (".png", ".jpg", ".jpeg", ".webp")
            return "", (p if still else None), (p if p and not still else None)

        sample.input(pick_sample, inputs=sample, outputs=[before, before_video])
        portrait.upload(show_upload, inputs=portrait, outputs=[sample, before, before_video])

        def submit(name: str, path: str | None, env: dict[str, Any], bname: str, y: float, s: float, m: str,
                   sm: float) -> tuple[Any, str]:
            try:
                src = portrait_demo_path(services.settings.data_dir, name) if name else (Path(path) if path else None)
            except StudioError as e:
                raise gr.Error(str(e)) from None
            if src is None:
                raise gr.Error("upload a portrait photo or clip, or pick the sample")
            try:
                if env.get("asset"):  # checked before anything is stored: a bad reference changes nothing
                    if services.assets.get(str(env["asset"])).kind != "hdr":
                        raise gr.Error("the chosen environment is not an .hdr/.exr map")
                with open(src, "rb") as fh:
                    a = services.assets.upload(fh, src.name)
                if a.kind not in ("image", "video"):
                    raise gr.Error(f"{src.name} is a {a.kind}, not a photo or a clip")
                params: dict[str, Any] = {"portrait": a.id, "yaw": float(y), "strength": float(s), "mode": m,
                                          "temporal_smoothing": float(sm)}
                if env.get("asset"):
                    params["environment"] = env["asset"]
                else:
                    params["builtin"] = env.get("builtin") or bname or "sunset-left"
                job = services.jobs.submit("relight", params, origin="ui")
            except StudioError as e:
                raise gr.Error(str(e)) from None
            return job.id, fmt_job_line(job)

        go.click(submit, inputs=[sample, portrait, env_state, builtin, yaw, strength, mode, smoothing],
                 outputs=[job_state, status], trigger_mode="once", api_name="relight_submit")
        stop.click(lambda jid: cancel_job(services, jid), inputs=job_state, outputs=status)
        # the live preview follows the sliders in the browser: no server round trip
        send = ("(y, s) => { for (const f of document.querySelectorAll('#rl-live-frame, #rl-pano-frame')) "
                "{ try { f.contentWindow.postMessage({yaw: Number(y), strength: Number(s)}, location.origin); } "
                "catch (e) {} } return []; }")
        yaw.input(None, inputs=[yaw, strength], outputs=None, js=send)
        strength.input(None, inputs=[yaw, strength], outputs=None, js=send)

        def poll(jid: str | None, done: str | None, y: float, s: float) -> tuple[Any, ...]:
            keep = gr.update()
            if not jid:
                return "No job yet.", progress_bar(0), keep, keep, keep, keep, done
            try:
                j = services.jobs.get(jid)
            except StudioError as e:
                return str(e), progress_bar(0), keep, keep, keep, keep, done
            line = fmt_job_line(j)
            if j.status != "completed":
                return line, progress_bar(j.progress * 100), keep, keep, keep, keep, done
            if done == jid:
                return keep, keep, keep, keep, keep, keep, done
            main = j.assets[0] if j.assets else None
            role = {a.meta.get("role"): a for a in j.assets}
            meta = j.result_meta
            sh = sh_query(meta.get("sh"))
            src_id = j.params.get("portrait")
            if main is None:
                return line, progress_bar(100), keep, keep, keep, keep, jid
            files = [asset_file(services, a) for a in j.assets]
            face = "face found" if meta.get("face_found", True) else "no face found: body normals only"
            if main.kind == "video":
                line += f"<br>{meta.get('frames')} frames relit at {meta.get('relight_fps')} frames/s."
                img_src = f"/api/v1/assets/{role['source_frame'].id}" if "source_frame" in role else None
                video = asset_file(services, main)
                img = None
            else:
                line += f"<br>{face}; the preview below re-shades live — its yaw is the slider above."
                img_src, video, img = f"/api/v1/assets/{src_id}", None, asset_file(services, main)
            live_html = ""
            if img_src and "normals" in role and "matte" in role and sh:
                live_html = preview_frame({"image": img_src, "normals": f"/api/v1/assets/{role['normals'].id}",
                                           "matte": f"/api/v1/assets/{role['matte'].id}", "sh": sh,
                                           "yaw": meta.get("yaw", y), "strength": meta.get("strength", s),
                                           "mode": meta.get("mode", "add")}, "rl-live-frame", 480)
            return line, progress_bar(100), live_html, img, video, files, jid

        gr.Timer(1.0).tick(poll, inputs=[job_state, shown, yaw, strength],
                           outputs=[status, bar, live, after, after_video, download, shown], show_progress="hidden")
