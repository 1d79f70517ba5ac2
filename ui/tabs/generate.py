"""Generate tab: text-to-image with live preview, cancel, Clockwork, reproduce, model picker."""
from __future__ import annotations

from typing import Any

import gradio as gr

from studio.catalog import engine_schema
from studio.errors import StudioError
from studio.wiring import Services
from ui.common import cancel_job, fmt_job_line, job_outputs, uploader
from ui.forms import build_form, collect

ENGINE = "t2i"
LAYOUT_FIELDS = ["prompt", "negative_prompt", "scheduler", "steps", "guidance_scale", "seed", "batch_size",
                 "batch_count", "clockwork", "clock_period", "init_image", "strength", "preview_every", "adapters",
                 "adapter_mode"]


def model_choices(services: Services) -> list[tuple[str, str]]:
    return [("embedded (built-in world model)", "embedded")] + [
        (f"{m['name']} ({m['kind']})", m["name"]) for m in services.models.list() + services.models.in_folders()]


def adapter_choices(services: Services) -> list[tuple[str, str]]:
    return [(f"{a.meta.get('name') or a.filename} ({a.meta.get('method', '?')})", a.id)
            for a in services.assets.list(kind="adapter", limit=200)]


def build_tab(services: Services) -> None:
    schema = engine_schema(ENGINE)
    if schema is None:
        return
    with gr.Tab("Generate", id="generate"):
        gr.Markdown("With no model configured the Studio uses its **embedded world model**, a small SD-format "
                    "model trained offline on a procedural world: prompts like *a large red solid star in the "
                    "center on a navy background* (shapes, colours, sizes, positions, styles, backgrounds; "
                    "guidance ≈ 4). Pick or register your own SD1.x/2.x/SDXL model below.",
                    elem_id="gen-embedded-note")
        job_state = gr.State(None)
        assets_state = gr.State([])
        selected = gr.State(None)
        comps = build_form(schema, elem_prefix="gen-", render=False, only=LAYOUT_FIELDS)
        with gr.Row():
            with gr.Column(scale=5):
                comps["prompt"].render()
                comps["negative_prompt"].render()
                with gr.Row():
                    model = gr.Dropdown(model_choices(services), value="embedded", label="Model",
                                        allow_custom_value=True, elem_id="gen-model", scale=3,
                                        info="the embedded model, a registered model, or type a local path")
                    comps["scheduler"].render()
                with gr.Row():
                    comps["steps"].render()
                    comps["guidance_scale"].render()
                with gr.Row():
                    native = gr.Checkbox(True, label="Model's native size", elem_id="gen-native", scale=1)
                    width = gr.Slider(64, 2048, 512, step=8, label="Width", elem_id="gen-width", scale=2)
                    height = gr.Slider(64, 2048, 512, step=8, label="Height", elem_id="gen-height", scale=2)
                with gr.Row():
                    comps["seed"].render()
                    comps["batch_size"].render()
                    comps["batch_count"].render()
                with gr.Row():
                    comps["clockwork"].render()
                    comps["clock_period"].render()
                with gr.Accordion("Adapters (LoRA, SHiRA, FouRA)", open=False):
                    adapter_pick = gr.Dropdown(adapter_choices(services), multiselect=True, label="Add from library",
                                               elem_id="gen-adapter-pick")
                    comps["adapters"].render()
                    comps["adapter_mode"].render()
                with gr.Accordion("img2img", open=False):
                    comps["init_image"].render()
                    comps["strength"].render()
                comps["preview_every"].render()
                with gr.Row():
                    go = gr.Button("Generate", variant="primary", elem_id="gen-submit", scale=3)
                    cancel = gr.Button("Cancel", variant="stop", elem_id="gen-cancel", scale=1)
                with gr.Accordion("Register a model", open=False):
                    reg_name = gr.Textbox(label="Name", elem_id="gen-reg-name")
                    reg_path = gr.Textbox(label="Diffusers folder or .safetensors file inside the models directory, or a cached hub id",
                                          elem_id="gen-reg-path")
                    reg_btn = gr.Button("Register", elem_id="gen-reg-submit")
                    reg_msg = gr.Markdown()
            with gr.Column(scale=5):
                status = gr.Markdown("Ready.", elem_id="gen-status")
                progress = gr.Slider(0, 100, value=0, label="Progress %", interactive=False, elem_id="gen-progress")
                preview = gr.Image(label="Live preview", type="filepath", interactive=False, height=256,
                                   elem_id="gen-preview")
                gallery = gr.Gallery(label="Images", columns=4, height=360, elem_id="gen-gallery")
                info = gr.Textbox(label="Generation parameters", lines=4, interactive=False, elem_id="gen-info")
                with gr.Row():
                    reproduce = gr.Button("Reproduce selected", elem_id="gen-reproduce")
                    use_seed = gr.Button("Use its seed", elem_id="gen-use-seed")
                files = gr.File(label="Download originals", file_count="multiple", interactive=False)

        def submit(values: dict[Any, Any]) -> tuple[str, str]:
            try:
                params = collect(schema, comps, values, uploader(services))
                params["model"] = (values.get(model) or "embedded").strip()
                if not values.get(native):
                    params["width"], params["height"] = int(values[width]), int(values[height])
                if "init_image" not in params:
                    params.pop("strength", None)
                job = services.jobs.submit(ENGINE, params, origin="ui")
            except (StudioError, ValueError) as e:
                raise gr.Error(str(e)) from None
            return job.id, fmt_job_line(job)

        def pick_adapters(ids: list[str]) -> str:
            import json

            return json.dumps([{"adapter": i, "weight": 1.0} for i in ids or []])

        adapter_pick.change(pick_adapters, inputs=adapter_pick, outputs=comps["adapters"])
        inputs = set(comps.values()) | {model, native, width, height}
        go.click(submit, inputs=inputs, outputs=[job_state, status])
        comps["prompt"].submit(submit, inputs=inputs, outputs=[job_state, status])

        cancel.click(lambda jid: cancel_job(services, jid), inputs=job_state, outputs=status)

        def poll(job_id: str | None) -> tuple[Any, ...]:
            st, pct, pv, images, fls = job_outputs(services, job_id)
            ids = [a.id for a in services.jobs.get(job_id).assets if a.kind == "image"] if job_id else []
            return st, pct, pv, images, fls, ids

        gr.Timer(0.5).tick(poll, inputs=job_state, outputs=[status, progress, preview, gallery, files, assets_state],
                           show_progress="hidden")

        def pick(evt: gr.SelectData, ids: list[str]) -> tuple[str | None, str]:
            if evt.index is None or evt.index >= len(ids):
                return None, ""
            a = services.assets.get(ids[evt.index])
            return a.id, str(a.meta.get("parameters") or a.meta)

        gallery.select(pick, inputs=assets_state, outputs=[selected, info])

        def do_reproduce(asset_id: str | None) -> tuple[Any, str]:
            if not asset_id:
                raise gr.Error("select an image first")
            try:
                job = services.jobs.reproduce(asset_id)
            except StudioError as e:
                raise gr.Error(str(e)) from None
            return job.id, "Reproducing: " + fmt_job_line(job)

        reproduce.click(do_reproduce, inputs=selected, outputs=[job_state, status])

        def seed_of(asset_id: str | None) -> Any:
            if not asset_id:
                return gr.update()
            return services.assets.get(asset_id).meta.get("seed", -1)

        use_seed.click(seed_of, inputs=selected, outputs=comps["seed"])

        def register(name: str, path: str) -> tuple[str, Any]:
            from studio.auth import viewer

            if not viewer().is_admin:
                return "Not registered: only an admin can register models", gr.update()
            try:  # from the browser: only folders/files inside the models directory
                m = services.models.register(name, path, allow_paths=False)
            except Exception as e:  # ModelNotFound / ValueError: shown to the user
                return f"Not registered: {e}", gr.update()
            return f"Registered **{m['name']}** ({m['kind']})", gr.update(choices=model_choices(services),
                                                                            value=m["name"])

        reg_btn.click(register, inputs=[reg_name, reg_path], outputs=[reg_msg, model])
