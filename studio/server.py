"""Web process: FastAPI (REST + Gradio UI) under one access-control point, plus the
worker as a child process. Ctrl-C stops both cleanly."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from fastapi import FastAPI

from studio.access import AccessPolicy, install
from studio.api import build_api
from studio.config import Settings
from studio.wiring import Services, build

log = logging.getLogger("studio.server")


def create_app(services: Services, with_ui: bool = True) -> FastAPI:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    app = build_api(services)
    install(app, AccessPolicy(allow_remote=services.settings.insecure_listen))
    if with_ui:
        import gradio as gr

        from ui.app import build as build_ui

        s = services.settings
        app = gr.mount_gradio_app(app, build_ui(services), path="/",
                                  allowed_paths=[str(s.data_dir / "ui-cache"), str(s.previews_dir)],
                                  footer_links=["api"], show_error=True)
    return app


def spawn_worker(settings: Settings, workers: int) -> subprocess.Popen:
    """Start ``studio worker`` for the same data dir; its log goes to logs/worker.log."""
    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    logf = open(settings.logs_dir / "worker.log", "ab")  # noqa: SIM115 - lives as long as the child
    cmd = [sys.executable, "-m", "studio", "worker", "--data-dir", str(settings.data_dir), "--workers", str(workers)]
    return subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True,
                            cwd=str(Path(__file__).resolve().parents[1]))


def stop_worker(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGINT = graceful: running jobs stop at their next step and are recorded as interrupted."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def serve(settings: Settings, *, worker: bool = True, workers: int | None = None) -> int:
    import uvicorn

    settings.check_bind()
    services = build(settings)
    services.assets.sweep_orphans()
    app = create_app(services)
    proc = spawn_worker(settings, workers or settings.workers) if worker else None
    print(f"Studio on http://{settings.host}:{settings.port}/  (data: {settings.data_dir})", flush=True)
    try:
        uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")
    finally:
        if proc is not None:
            stop_worker(proc)
        services.close()
    return 0


def wait_http(url: str, timeout: float = 60.0) -> None:
    """Block until ``url`` answers 200 (used by tests and scripts)."""
    import urllib.request

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except Exception as e:  # noqa: BLE001 - keep polling
            last = e
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout}s: {last}")
