"""Compose the Gradio Blocks from tabs. Each tab module exposes ``build_tab(services)``."""
from __future__ import annotations

import functools
import inspect
import typing
from typing import Any, Callable, Optional

import gradio as gr

from studio import __version__
from studio.wiring import Services
from ui.tabs import adapters, gallery, generate, queue, run, splat


def build(services: Services) -> gr.Blocks:
    with gr.Blocks(title="Studio", analytics_enabled=False) as demo:
        with gr.Row():
            gr.Markdown(f"## Studio <small>v{__version__} · data: `{services.settings.data_dir}`</small>",
                        elem_id="studio-header")
            who = gr.HTML(elem_id="studio-user")
        with gr.Tabs():
            generate.build_tab(services)
            adapters.build_tab(services)
            splat.build_tab(services)
            run.build_tab(services)
            queue.build_tab(services)
            gallery.build_tab(services, demo)
        _api_endpoints(services)
        demo.load(lambda: _user_box(services), outputs=who)
    demo.queue(default_concurrency_limit=8)
    for block_fn in demo.fns.values():
        if block_fn.fn is not None:
            block_fn.fn = as_caller(block_fn.fn)
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


def as_caller(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a Gradio event handler as the user whose request triggered it.

    Gradio runs handlers on its own queue tasks and threads, so the access layer's
    per-request context does not reach them. Gradio injects a ``gr.Request`` into any
    positional parameter annotated with it; we add one such parameter at the end of the
    handler's positional parameters and set the caller around each call (and around each
    step of a generator, which Gradio advances from different threads)."""
    from studio.auth import acting_as

    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return fn
    params = list(sig.parameters.values())
    hints = {}
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - unresolvable hints: treat as unannotated
        pass
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    existing = next((i for i, p in enumerate(positional) if hints.get(p.name) in (gr.Request, Optional[gr.Request])),
                    None)
    def split(args: tuple[Any, ...]) -> tuple[tuple[Any, ...], Any]:
        """Take out the request Gradio injected (found by type: robust to optional inputs)."""
        for i in range(len(args) - 1, -1, -1):
            if isinstance(args[i], gr.Request):
                return (args if existing is not None else args[:i] + args[i + 1:]), args[i]
        return args, None

    if inspect.isgeneratorfunction(fn):
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            args, req = split(args)
            v = _viewer_of(req)
            with acting_as(v):
                gen = fn(*args, **kwargs)
            while True:
                with acting_as(v):
                    try:
                        item = next(gen)
                    except StopIteration:
                        return
                yield item
    elif inspect.isasyncgenfunction(fn):
        async def wrapper(*args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
            args, req = split(args)
            v = _viewer_of(req)
            with acting_as(v):
                agen = fn(*args, **kwargs)
            while True:
                with acting_as(v):
                    try:
                        item = await agen.__anext__()
                    except StopAsyncIteration:
                        return
                yield item
    elif inspect.iscoroutinefunction(fn):
        async def wrapper(*args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
            args, req = split(args)
            with acting_as(_viewer_of(req)):
                return await fn(*args, **kwargs)
    else:
        def wrapper(*args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
            args, req = split(args)
            with acting_as(_viewer_of(req)):
                return fn(*args, **kwargs)

    functools.update_wrapper(wrapper, fn)
    del wrapper.__wrapped__  # gradio must see the new signature, not the original's
    if existing is None:
        extra = inspect.Parameter("_studio_request", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                  default=None, annotation=gr.Request)
        rest = [p for p in params if p not in positional]
        # a parameter with a default may not precede one without: give every positional one a default
        pos = [p if p.default is not p.empty else p.replace(default=None) for p in positional] \
            if any(p.default is not p.empty for p in positional) else positional
        wrapper.__signature__ = sig.replace(parameters=[*pos, extra, *rest])  # type: ignore[attr-defined]
        wrapper.__annotations__ = {**getattr(fn, "__annotations__", {}), **hints, "_studio_request": gr.Request}
    else:
        wrapper.__signature__ = sig  # type: ignore[attr-defined]
        wrapper.__annotations__ = {**getattr(fn, "__annotations__", {}), **hints}
    return wrapper


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
