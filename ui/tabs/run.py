"""Run tab: any engine, with a form generated from its params schema, live progress,
preview and cancel. Engine-specific tabs (Generate, Splat, …) build on the same parts."""
from __future__ import annotations

from typing import Any

import gradio as gr

from studio.catalog import engine_list
from studio.errors import StudioError
from studio.wiring import Services
from ui.common import cancel_job, fmt_job_line, job_outputs, progress_bar, uploader
from ui.forms import build_form, collect


def build_tab(services: Services) -> None:
    catalog = {e["name"]: e for e in engine_list()}
    names = list(catalog)
    with gr.Tab("Run", id="run"):
        gr.Markdown("Run any engine. The form is generated from the engine's parameters; "
                    "jobs go to the queue and survive restarts.")
        job_state = gr.State(None)
        status = gr.Markdown("No job yet.", elem_id="run-status", render=False)
        progress = gr.HTML(progress_bar(0), elem_id="run-progress", render=False)
        preview = gr.Image(label="Live preview", type="filepath", interactive=False, render=False, height=256)
        gallery = gr.Gallery(label="Outputs", elem_id="run-gallery", render=False, height=320)
        files = gr.File(label="Download", file_count="multiple", interactive=False, render=False)
        with gr.Row():
            with gr.Column(scale=1):
                engine_dd = gr.Dropdown(choices=names, value=names[0] if names else None, label="Engine",
                                        elem_id="run-engine")

                @gr.render(inputs=engine_dd)
                def form(name: str | None) -> None:
                    if not name or name not in catalog:
                        gr.Markdown("No engine selected.")
                        return
                    entry = catalog[name]
                    schema = entry["params_schema"]
                    if entry["description"]:
                        gr.Markdown(entry["description"])
                    comps = build_form(schema, elem_prefix="run-p-")
                    submit_btn = gr.Button("Run", variant="primary", elem_id="run-submit")

                    def submit(values: dict[Any, Any]) -> tuple[str, str]:
                        try:
                            params = collect(schema, comps, values, uploader(services))
                            job = services.jobs.submit(name, params, origin="ui")
                        except (StudioError, ValueError) as e:
                            raise gr.Error(str(e)) from None
                        return job.id, fmt_job_line(job)

                    submit_btn.click(submit, inputs=set(comps.values()), outputs=[job_state, status])
            with gr.Column(scale=1):
                status.render()
                progress.render()
                cancel_btn = gr.Button("Cancel", variant="stop", elem_id="run-cancel")
                preview.render()
                gallery.render()
                files.render()

        cancel_btn.click(lambda jid: cancel_job(services, jid), inputs=job_state, outputs=status)
        timer = gr.Timer(0.5)
        def poll(jid: str | None) -> tuple[Any, ...]:
            st, pct, pv, images, fls = job_outputs(services, jid)
            return st, progress_bar(pct), pv, images, fls

        timer.tick(poll, inputs=job_state,
                   outputs=[status, progress, preview, gallery, files], show_progress="hidden")
