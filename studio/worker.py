"""The worker process: recovery, heartbeats and the huey consumer.

Run as its own process (``studio worker``), never inside the web server: huey's
consumer installs signal handlers. SIGINT/SIGTERM stop it cleanly: running jobs see
``is_cancelled()`` at their next step and are recorded as interrupted (and
re-enqueued when their engine is idempotent), so nothing is lost or left running.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import threading

from studio.config import Settings
from studio.runner import sweep_job_files
from studio.wiring import Services, build, build_runner

log = logging.getLogger("studio.worker")


def worker_alive(worker_id: str, self_id: str = "") -> bool:
    """True unless we can prove the worker is dead (same host, pid gone or reused)."""
    if self_id and worker_id == self_id:
        return True
    parts = worker_id.split(":")
    if len(parts) < 2 or parts[0] != socket.gethostname():
        return True
    try:
        pid = int(parts[1])
    except ValueError:
        return True
    if pid == os.getpid():
        return False  # an earlier incarnation with a recycled pid cannot be us
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover(services: Services, self_id: str = "", *, sweep_state: bool = True) -> dict[str, list[str]]:
    """Fail the jobs of dead workers (retrying or re-enqueueing what can be), then delete the
    files only those jobs used: a SIGKILLed worker leaves its work dirs and previews behind.
    ``sweep_state=False`` skips the checkpoint sweep (it hashes params; the start pass does it)."""
    out = services.jobs.recover(alive=lambda wid: worker_alive(wid, self_id),
                                stale_after_s=services.settings.stale_after_s)
    if any(out.values()):
        log.warning("recovery: %s", out)
    try:
        swept = sweep_job_files(services.settings, services.db, state=sweep_state)
    except Exception:  # a locked DB or an odd file must not stop the worker; the next pass retries
        log.exception("sweeping job files failed")
    else:
        if any(swept.values()):
            log.info("removed files of finished jobs: %s", swept)
    return out


def run_worker(settings: Settings, workers: int | None = None, parent_pid: int | None = None) -> int:
    """Run the consumer until SIGINT/SIGTERM (or until ``parent_pid``, the web process, is gone)."""
    services = build(settings)
    runner = build_runner(services)
    services.queue.bind(runner.execute)
    recover(services, runner.worker_id)
    services.assets.sweep_orphans()

    stop = threading.Event()

    def heartbeat() -> None:
        n = 0
        while not stop.wait(settings.heartbeat_s):
            if parent_pid and os.getppid() != parent_pid:
                log.warning("parent process %s is gone; stopping", parent_pid)
                os.kill(os.getpid(), signal.SIGINT)
                return
            try:
                runner.beat()
                n += 1
                if n % 5 == 0:  # catch jobs of workers that died while we run
                    recover(services, runner.worker_id, sweep_state=False)
            except Exception:  # a locked DB must not kill the heartbeat
                log.exception("heartbeat failed")

    hb = threading.Thread(target=heartbeat, name="heartbeat", daemon=True)
    hb.start()
    consumer = services.queue.consumer(workers or settings.workers)

    original_stop = consumer.stop

    def stop_consumer(graceful: bool = False) -> None:
        runner.stopping.set()  # running jobs stop at their next step
        original_stop(graceful=True)

    consumer.stop = stop_consumer  # type: ignore[method-assign]
    log.info("worker %s ready (%s, %s)", runner.worker_id, runner.device, runner.dtype)
    print(f"worker ready {runner.worker_id}", flush=True)
    try:
        consumer.run()
    finally:
        stop.set()
        runner.stopping.set()
        services.close()
    return 0

