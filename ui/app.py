"""Compose the Gradio Blocks from tabs. Each tab module exposes ``build_tab(services)``."""
from __future__ import annotations

from typing import Any

import gradio as gr

from studio import __version__
from studio.wiring import Services
from ui.tabs import adapters, gallery, generate, personalize, queue, relight, run, splat, video


# Ctrl/Cmd+Enter in a prompt box presses that tab's Generate/Run button (Enter alone adds a line).
KEYS_JS = """() => {
  document.addEventListener('keydown', (e) => {
    if (e.key !== 'Enter' || !(e.ctrlKey || e.metaKey)) return;
    const box = e.target.closest('#gen-prompt, #gen-negative_prompt, #run-p-prompt, #ad-prompt');
    if (!box) return;
    const id = box.id.startsWith('gen-') ? 'gen-submit' : box.id.startsWith('run-') ? 'run-submit' : 'ad-grid';
    const btn = document.getElementById(id);
    if (btn && btn.offsetParent !== null) { e.preventDefault(); btn.click(); }
  });
}"""
# Small results are upscaled crisply (pixel art, 64-px world images), never blurred or cropped.
CSS = """.studio-crisp img { image-rendering: pixelated; object-fit: contain !important; }"""


def build(services: Services) -> gr.Blocks:
    with gr.Blocks(title="Studio", analytics_enabled=False) as demo:
        with gr.Row():
            gr.Markdown(f"## Studio <small>v{__version__} · data: `{services.settings.data_dir}`</small>",
                        elem_id="studio-header")
            who = gr.HTML(elem_id="studio-user")
        # Gallery → Generate: the asset whose parameters to load (a hidden bridge between tabs)
        bridge = gr.Textbox(visible=False, elem_id="gen-bridge")
        with gr.Tabs() as tabs:
            generate.build_tab(services, bridge)
            adapters.build_tab(services)
            personalize.build_tab(services, bridge, tabs)
            video.build_tab(services)
            relight.build_tab(services)
            splat.build_tab(services)
            run.build_tab(services)
            queue.build_tab(services)
            gallery.build_tab(services, demo, bridge, tabs)
        _api_endpoints(services)
        demo.load(lambda: _user_box(services), outputs=who)
    demo.queue(default_concurrency_limit=8)
    _run_events_as_caller(demo)
    return demo


def _user_box(services: Services) -> str:
    """Who is signed in, with a sign-out button (a same-origin form POST; the session cookie is HttpOnly)."""
    import html

    from studio.auth import viewer

    if not services.settings.auth_enabled:
        return "<div style='text-align:right'><small>single user (loopback, accounts off)</small></div>"
    v = viewer()
    return (f"<form method='post' action='/logout' style='text-align:right'><small>signed in as "
            f"<b>{html.escape(v.username)}</b>{' (admin)' if v.is_admin else ''}</small> "
            "<button type='submit' id='studio-logout'>Sign out</button></form>")


def _viewer_of(request: Any) -> Any:
    """The caller the access layer identified for this event's HTTP request (fail closed)."""
    from studio.auth import NOBODY

    r = getattr(request, "request", None) if request is not None else None
    state = getattr(r, "scope", {}).get("state", {}) if r is not None else {}
    return state.get("studio_viewer") or NOBODY


def _run_events_as_caller(demo: gr.Blocks) -> None:
    """Run every Gradio event as the user whose request triggered it.

    Gradio runs handlers on its own queue tasks and worker threads, so the access layer's
    per-request context does not reach them. Every event — including those of components
    made later by ``gr.render`` — goes through ``Blocks.call_function`` with the triggering
    request; we set the caller there, and the thread that runs a sync handler (or each step
    of a generator) inherits it, since anyio copies the context into worker threads."""
    from studio.auth import acting_as

    original = demo.call_function

    async def call_function(block_fn: Any, processed_input: list[Any], iterator: Any = None,
                            requests: Any = None, *args: Any, **kwargs: Any) -> Any:
        req = requests[0] if isinstance(requests, list) and requests else requests
        with acting_as(_viewer_of(req)):
            return await original(block_fn, processed_input, iterator, requests, *args, **kwargs)

    demo.call_function = call_function  # type: ignore[method-assign]


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
