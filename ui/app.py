"""Compose the Gradio Blocks from tabs. Each tab module exposes ``build_tab(services)``."""
from __future__ import annotations

import gradio as gr

from studio import __version__
from studio.wiring import Services
from ui.tabs import adapters, gallery, generate, queue, run, splat


def build(services: Services) -> gr.Blocks:
    with gr.Blocks(title="Studio", analytics_enabled=False) as demo:
        gr.Markdown(f"## Studio <small>v{__version__} · data: `{services.settings.data_dir}`</small>",
                    elem_id="studio-header")
        with gr.Tabs():
            generate.build_tab(services)
            adapters.build_tab(services)
            splat.build_tab(services)
            run.build_tab(services)
            queue.build_tab(services)
            gallery.build_tab(services, demo)
        _api_endpoints(services)
    demo.queue(default_concurrency_limit=8)
    return demo


def _api_endpoints(services: Services) -> None:
    """Named Gradio endpoints for gradio_client users (same services as the REST API)."""
    import json

    from studio.errors import StudioError

    def submit_job(engine: str, params_json: str) -> str:
        """Queue a job; returns its id."""
        try:
            params = json.loads(params_json or "{}")
            return services.jobs.submit(engine, params, origin="ui").id
        except (StudioError, ValueError) as e:
            raise gr.Error(str(e)) from None

    def job_status(job_id: str) -> dict:
        """The job as JSON (status, progress, error, assets)."""
        try:
            return services.jobs.get(job_id).to_json()
        except StudioError as e:
            raise gr.Error(str(e)) from None

    def cancel_job(job_id: str) -> dict:
        try:
            return services.jobs.cancel(job_id).to_json()
        except StudioError as e:
            raise gr.Error(str(e)) from None

    gr.api(submit_job, api_name="submit_job")
    gr.api(job_status, api_name="job_status")
    gr.api(cancel_job, api_name="cancel_job")
