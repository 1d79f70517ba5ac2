"""Video tab: upload a clip or pick a demo world clip, type an instruction, set the two guidance
scales and consistency, edit through the job queue (progress, live last frame, cancel), then the
original and the edited clip side by side, with the edited mp4 to download."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from studio.catalog import engine_schema
from studio.demos import video_demo_path, video_demos
from studio.errors import StudioError
from studio.wiring import Services
from ui.common import asset_file, cancel_job, fmt_job_line, progress_bar

ENGINE = "video-edit"
NO_DEMO = ""


def demo_choices() -> list[tuple[str, str]]:
    return [("none: my own clip", NO_DEMO)] + [(f"{k}: {v}", k) for k, v in video_demos().items()]


def demo_path(services: Services, name: str) -> Path:
    """The demo clip file, made on first use inside the UI cache (a folder Gradio may serve).
    Only the known demo names are accepted: a client never names a file."""
    try:
        return video_demo_path(services.settings.data_dir, name)
    except StudioError as e:
        raise gr.Error(str(e)) from None


def build_tab(services: Services) -> None:
    if engine_schema(ENGINE) is None:
        return
    with gr.Tab("Video", id="video"):
        gr.Markdown("Edit a clip by **instruction** (“make the circle green”). Every frame goes through an "
                    "InstructPix2Pix-style model with the same noise; **consistency** lets each frame also look at "
                    "the first frame so the edit stays steady. The sound track is carried over. No clip at hand? "
                    "Pick a **demo** world clip (the embedded model edits those: colour, style, shape, background).")
        with gr.Row():
            demo = gr.Dropdown(demo_choices(), value=NO_DEMO, label="Demo clip", elem_id="vid-demo")
            instruction = gr.Textbox(label="Instruction", placeholder="make the circle green", elem_id="vid-instruction")
        with gr.Row():
            # the embedded model edits best at s_T 3, s_I 2.5 (docs/video.md); SD-based IP2P models: 7.5 / 1.5
            text_g = gr.Slider(0, 20, 3.0, step=0.5, label="Text guidance s_T (follow the instruction)",
                               info="embedded model: 3 · SD InstructPix2Pix: 7.5", elem_id="vid-text-guidance")
            image_g = gr.Slider(0, 5, 2.5, step=0.1, label="Image guidance s_I (keep the input)",
                                info="embedded model: 2.5 · SD InstructPix2Pix: 1.5", elem_id="vid-image-guidance")
            steps = gr.Slider(1, 50, 10, step=1, label="Steps per frame", elem_id="vid-steps")
        with gr.Row():
            consistency = gr.Checkbox(True, label="Consistency (cross-frame attention to the first frame)",
                                      elem_id="vid-consistency")
            max_frames = gr.Number(240, label="Max frames", precision=0, elem_id="vid-max-frames")
            model = gr.Textbox("embedded", label="Model (InstructPix2Pix format)", elem_id="vid-model")
            cfg_model = gr.Radio([("quality (teacher, 3 passes per step)", "teacher"),
                                  ("speed (CFG-distilled, 1 pass per step)", "distilled"),
                                  ("fastest (one-step student, 1 pass per frame)", "one-step"), ("auto", "auto")],
                                 value="auto", label="Model variant", elem_id="vid-cfg-model",
                                 info="embedded model only: the students are faster, their edits weaker "
                                      "(docs/video.md); the one-step student ignores Steps")
        with gr.Row():
            start = gr.Button("Edit video", variant="primary", elem_id="vid-submit")
            stop = gr.Button("Cancel", variant="stop", elem_id="vid-cancel")
        job_state = gr.State(None)
        shown = gr.State(None)  # the job whose result the players show (set once: no reload every tick)
        status = gr.Markdown("No job yet.", elem_id="vid-status")
        bar = gr.HTML(progress_bar(0), elem_id="vid-progress")
        with gr.Row():
            original = gr.Video(label="Original (upload a clip: mp4, webm, mov, gif)", sources=["upload"],
                                elem_id="vid-original", height=320)
            edited = gr.Video(label="Edited", interactive=False, elem_id="vid-edited", height=320)
        with gr.Row():
            preview = gr.Image(label="Last edited frame (live)", type="filepath", interactive=False, height=160,
                               elem_id="vid-preview", elem_classes=["studio-crisp"])
            download = gr.File(label="Download the edited mp4", interactive=False, elem_id="vid-download")

        def pick_demo(name: str) -> tuple[Any, Any]:
            if not name:
                return gr.update(), gr.update()
            return str(demo_path(services, name)), video_demos().get(name, "")

        demo.input(pick_demo, inputs=demo, outputs=[original, instruction])
        original.upload(lambda _v: NO_DEMO, inputs=original, outputs=demo)

        def submit(name: str, clip: str | None, instr: str, s_t: float, s_i: float, n_steps: float, steady: bool,
                   n_frames: float, m: str, cfg: str) -> tuple[Any, str]:
            if not (instr or "").strip():
                raise gr.Error("type an instruction, e.g. “make the circle green”")
            path = demo_path(services, name) if name else (Path(clip) if clip else None)
            if path is None:
                raise gr.Error("upload a clip or pick a demo clip")
            try:
                with open(path, "rb") as fh:
                    asset = services.assets.upload(fh, path.name)
                if asset.kind != "video":
                    raise gr.Error(f"{path.name} is a {asset.kind}, not a video")
                params = {"video": asset.id, "instruction": instr.strip(), "text_guidance": float(s_t),
                          "image_guidance": float(s_i), "steps": int(n_steps),
                          "consistency": "keyframes" if steady else "none",
                          "max_frames": int(n_frames or 240), "model": (m or "embedded").strip(),
                          "cfg_model": cfg or "auto"}
                job = services.jobs.submit(ENGINE, params, origin="ui")
            except StudioError as e:
                raise gr.Error(str(e)) from None
            return job.id, fmt_job_line(job)

        start.click(submit, inputs=[demo, original, instruction, text_g, image_g, steps, consistency, max_frames,
                                    model, cfg_model], outputs=[job_state, status], trigger_mode="once", api_name="video_submit")
        stop.click(lambda jid: cancel_job(services, jid), inputs=job_state, outputs=status)

        def poll(jid: str | None, done: str | None) -> tuple[Any, ...]:
            keep = gr.update()
            if not jid:
                return "No job yet.", progress_bar(0), None, keep, keep, done
            try:
                j = services.jobs.get(jid)
            except StudioError as e:
                return str(e), progress_bar(0), None, keep, keep, done
            pv = services.jobs.preview_path(jid)
            line = fmt_job_line(j)
            video = next((a for a in j.assets if a.kind == "video"), None)
            if j.status == "completed" and video is not None:
                path = asset_file(services, video)
                meta = j.result_meta
                line += (f"<br>{meta.get('frames')} frames at {meta.get('fps', 0):.3g} fps, edited at "
                         f"{meta.get('edit_fps')} frames/s · sound {'kept' if meta.get('audio') else 'none'}")
                if done == jid:
                    return line, progress_bar(100), None, keep, keep, done
                return line, progress_bar(100), None, path, path, jid
            return (line, progress_bar(j.progress * 100),
                    str(pv) if pv and pv.is_file() and j.status == "running" else None, keep, keep, done)

        gr.Timer(1.0).tick(poll, inputs=[job_state, shown], outputs=[status, bar, preview, edited, download, shown],
                           show_progress="hidden")
