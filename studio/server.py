"""Web process: FastAPI (REST + Gradio UI) under one access-control point, plus the
worker as a child process. Ctrl-C stops both cleanly."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from studio.access import AccessLayer, install
from studio.api import build_api
from studio.config import Settings
from studio.wiring import Services, build

log = logging.getLogger("studio.server")


def create_app(services: Services, with_ui: bool = True) -> AccessLayer:
    """The served ASGI app: REST + pages + Gradio, wrapped whole in the access layer
    (``.app`` is the inner FastAPI app, e.g. for its route list)."""
    app = build_api(services)
    if with_ui:
        import gradio as gr
        from fastapi.staticfiles import StaticFiles

        static = Path(__file__).resolve().parents[1] / "ui" / "static"
        for sub in sorted(p for p in static.iterdir() if p.is_dir()) if static.is_dir() else []:
            # the in-browser viewers (WebGL splat viewer); /static itself stays Gradio's (fonts, scripts)
            app.mount(f"/static/{sub.name}", StaticFiles(directory=sub), name=f"static-{sub.name}")

        from ui.app import CSS, KEYS_JS
        from ui.app import build as build_ui

        s = services.settings
        blocks = build_ui(services)
        app = gr.mount_gradio_app(app, blocks, path="/",
                                  allowed_paths=[str(s.data_dir / "ui-cache"), str(s.previews_dir)],
                                  auth_dependency=_gradio_user, max_file_size=s.max_upload_bytes,
                                  footer_links=["api"], show_error=True, js=KEYS_JS, css=CSS)
        # Mounted Blocks are never marked launched, and Gradio skips its check that inputs come
        # from its upload folder until they are: without this, any server path sent as a
        # FileData input would be read (and ingested as an asset).
        blocks.has_launched = True
    return install(app, services)


def _gradio_user(request) -> str | None:  # noqa: ANN001 - fastapi.Request
    """Gradio's own login check: the access layer has already identified the caller."""
    v = getattr(request.state, "studio_viewer", None)
    return (v.username or None) if v is not None and v.authenticated else None


def spawn_worker(settings: Settings, workers: int) -> subprocess.Popen:
    """Start ``studio worker`` for the same data dir; its log goes to logs/worker.log."""
    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    logf = open(settings.logs_dir / "worker.log", "ab")  # noqa: SIM115 - lives as long as the child
    cmd = [sys.executable, "-m", "studio", "worker", "--data-dir", str(settings.data_dir), "--workers", str(workers),
           "--parent-pid", str(os.getpid())]
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


def exit_reason(returncode: int | None) -> str:
    """'SIGKILL' for a process killed by a signal, 'exit 3' for one that exited by itself."""
    if returncode is None:
        return "running"
    if returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            return f"signal {-returncode}"
    return f"exit {returncode}"


class WorkerSupervisor:
    """Keeps one worker process alive: a crashed worker (OOM kill, segfault) is restarted,
    and its recovery pass fails/re-enqueues what it was running.

    Restarts back off (1 s, 2 s, … 30 s) so a worker that dies at start does not spin, and the
    backoff starts over once a worker has stayed up ``healthy_s``: a crash a week later is
    restarted in a second, not in the 30 s earned by crashes long ago. Every exit is logged to
    the server log and kept for ``/healthz`` and the Queue tab (``status()``).
    """

    FIRST_DELAY_S = 1.0
    MAX_DELAY_S = 30.0
    HEALTHY_S = 60.0

    def __init__(self, settings: Settings, workers: int, *, spawn=None, clock=time.monotonic,  # noqa: ANN001
                 start: bool = True) -> None:
        self.settings = settings
        self.workers = workers
        self._spawn = spawn or (lambda: spawn_worker(settings, workers))
        self._clock = clock
        self._stop = threading.Event()
        self.restarts = 0
        self.delay = self.FIRST_DELAY_S
        self.last_exit: str | None = None
        self.last_restart_at: str | None = None
        self.proc = self._spawn()
        self.started = clock()
        self._thread = threading.Thread(target=self._watch, name="worker-supervisor", daemon=True)
        if start:
            self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            if self.proc.poll() is None:
                continue
            delay = self.exited()
            if self._stop.wait(delay):
                return
            self.restart()

    def exited(self) -> float:
        """Record and log the exit of the current worker; returns the delay before the restart."""
        up = self._clock() - self.started
        if up >= self.HEALTHY_S:
            self.delay = self.FIRST_DELAY_S
        delay = self.delay
        self.delay = min(self.delay * 2, self.MAX_DELAY_S)
        self.last_exit = exit_reason(self.proc.returncode)
        log.warning("worker pid %s exited (%s) after %.0fs up; restart %d in %.0fs", self.proc.pid, self.last_exit,
                    up, self.restarts + 1, delay)
        return delay

    def restart(self) -> None:
        self.proc = self._spawn()
        self.started = self._clock()
        self.restarts += 1
        self.last_restart_at = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        log.warning("worker restarted (pid %s, restart %d)", self.proc.pid, self.restarts)

    def status(self) -> dict[str, object]:
        """What /healthz and the Queue tab say about the worker."""
        return {"alive": self.proc.poll() is None, "restarts": self.restarts,
                "last_exit": self.last_exit, "last_restart_at": self.last_restart_at}

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        stop_worker(self.proc)


def serve(settings: Settings, *, worker: bool = True, workers: int | None = None) -> int:
    import uvicorn

    settings.check_bind()
    share_url = None
    if settings.share:
        from studio.tunnel import check_share_client

        check_share_client(settings)  # exits with what to do when the client cannot be had offline
    services = build(settings)
    services.assets.sweep_orphans()
    from studio.auth import NOBODY, set_process_default

    if settings.auth_enabled:  # fail closed: work outside a request's context sees nothing
        set_process_default(NOBODY)
        pw = services.auth.ensure_admin()
        if pw:  # printed once, to the owner's terminal only (never logged to a file)
            print(f"Accounts are on. First start: created user 'admin' with password: {pw}\n"
                  "  (change it with `studio users passwd admin`; add users with `studio users add NAME`)", flush=True)
    app = create_app(services)
    sup = WorkerSupervisor(settings, workers or settings.workers) if worker else None
    if sup is not None:
        services.jobs.worker_status = sup.status
    where = f"http://{settings.host}:{settings.port}/"
    print(f"Studio on {where}  (data: {settings.data_dir}; accounts {'on' if settings.auth_enabled else 'off'})",
          flush=True)
    for u in settings.public_urls:
        print(f"  public URL: {u}/", flush=True)
    if settings.share:
        from studio.tunnel import open_share_tunnel

        share_url = open_share_tunnel(settings)
        app.allow_public_url(share_url)
        print(f"  share tunnel: {share_url}", flush=True)

    def on_term(*_: object) -> None:  # uvicorn re-raises SIGTERM after its shutdown: end via finally
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")
    except KeyboardInterrupt:
        pass
    finally:
        if sup is not None:
            sup.stop()
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
