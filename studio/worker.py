"""The worker process: registration, recovery, heartbeats (leases) and the huey consumer.

Run as its own process (``studio worker``), never inside the web server: huey's
consumer installs signal handlers. SIGINT/SIGTERM stop it cleanly: running jobs see
``is_cancelled()`` at their next step and are recorded as interrupted (and
re-enqueued when their engine is idempotent), so nothing is lost or left running.

Any number of workers, on any number of machines, may share one database, queue and asset
root (docs/deployment.md). Each registers itself (host, pid, devices, engines), claims jobs
atomically in the database under a lease it renews with every heartbeat, and runs a recovery
pass now and then that takes back the jobs of workers that died (same host: pid gone; any
host: lease expired).
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time

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


def check_engines(names: tuple[str, ...]) -> list[str]:
    """The engines this worker runs: ``--engines`` (each must exist here) or every registered one."""
    from engines import registry

    known = registry.names()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"studio worker: unknown engine(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return list(names) if names else sorted(known)


def devices(runner) -> list[str]:  # noqa: ANN001
    out = [runner.device]
    if runner.device.startswith("cuda"):
        try:
            import torch

            out.append(torch.cuda.get_device_name(runner.device))
        except Exception:  # noqa: BLE001 - a name is a nicety
            pass
    return out


def _start(settings: Settings, engines: list[str], threads: int, wait_s: float = 120.0):  # noqa: ANN202
    """Build, register and run the first recovery pass; a database server that is restarting
    (or not up yet) is waited for rather than ending the worker."""
    from sqlalchemy.exc import DBAPIError

    deadline = time.monotonic() + wait_s
    while True:
        services = None
        try:
            services = build(settings)
            runner = build_runner(services)
            runner.engines = tuple(engines)  # claim only what this process can run
            services.queue.bind(runner.drain)  # a message is a doorbell: claim the best job from the database
            services.jobs.register_worker(runner.worker_id, host=runner.worker_id.split(":")[0], pid=os.getpid(),
                                          devices=devices(runner), engines=engines, threads=threads)
            recover(services, runner.worker_id)
            services.assets.sweep_orphans()
            return services, runner
        except DBAPIError as e:
            if services is not None:
                services.close()
            if not settings.shared or time.monotonic() > deadline:
                raise
            log.warning("database not reachable (%s); retrying", type(e.orig).__name__)
            time.sleep(1.0)


def run_worker(settings: Settings, workers: int | None = None, parent_pid: int | None = None) -> int:
    """Run the consumer until SIGINT/SIGTERM (or until ``parent_pid``, the web process, is gone)."""
    engines = check_engines(tuple(settings.engines))
    threads = workers or settings.workers
    services, runner = _start(settings, engines, threads)

    stop = threading.Event()

    def heartbeat() -> None:
        last_beat = last_recover = time.monotonic()
        tick = min(settings.heartbeat_s, settings.claim_poll_s)
        while not stop.wait(tick):
            if parent_pid and os.getppid() != parent_pid:
                log.warning("parent process %s is gone; stopping", parent_pid)
                os.kill(os.getpid(), signal.SIGINT)
                return
            now = time.monotonic()
            try:
                if now - last_beat >= settings.heartbeat_s:
                    last_beat = now
                    runner.beat()
                    services.jobs.worker_beat(runner.worker_id)
                if now - last_recover >= settings.recover_every_s:  # catch jobs of workers that died
                    last_recover = now
                    recover(services, runner.worker_id, sweep_state=False)
                ring_if_idle()
            except Exception:  # a database or queue restart must not kill the heartbeat
                log.exception("heartbeat failed")

    def ring_if_idle() -> None:
        """A doorbell may be lost (taken by a worker that cannot run the job, or by a queue
        restart): an idle worker that sees a job it can run, and no message waiting, rings."""
        if runner.stopping.is_set() or len(runner.active) >= threads:
            return
        found = services.jobs.claimable(runner.engines or None)
        if found is not None and services.queue.pending_count() == 0:
            services.queue.enqueue(*found)

    hb = threading.Thread(target=heartbeat, name="heartbeat", daemon=True)
    hb.start()
    consumer = services.queue.consumer(threads)

    original_stop = consumer.stop

    def stop_consumer(graceful: bool = False) -> None:
        runner.stopping.set()  # running jobs stop at their next step
        original_stop(graceful=True)

    consumer.stop = stop_consumer  # type: ignore[method-assign]
    log.info("worker %s ready (%s, %s; engines %s)", runner.worker_id, runner.device, runner.dtype,
             ",".join(engines))
    print(f"worker ready {runner.worker_id}", flush=True)
    try:
        consumer.run()
    finally:
        stop.set()
        runner.stopping.set()
        try:
            services.jobs.worker_beat(runner.worker_id, stopped=True)
        except Exception:  # noqa: BLE001 - the database may be the reason we stop
            log.warning("could not mark worker %s stopped", runner.worker_id)
        services.close()
    return 0
