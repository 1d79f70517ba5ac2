"""The worker supervisor: restart backoff that starts over after a healthy run, every exit in
the server log, and the worker's state in /healthz and the Queue tab (no real processes)."""
from __future__ import annotations

import logging
import signal

from studio.server import WorkerSupervisor, exit_reason


class FakeProc:
    """A worker process as the supervisor sees it: a pid and, once dead, a return code."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, sig: int) -> None:
        self.returncode = -sig

    def wait(self, timeout: float | None = None) -> int | None:
        return self.returncode


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def supervisor(settings):  # noqa: ANN001, ANN201
    pids = iter(range(100, 200))
    clock = Clock()
    sup = WorkerSupervisor(settings, 1, spawn=lambda: FakeProc(next(pids)), clock=clock, start=False)
    return sup, clock


def crash(sup: WorkerSupervisor, clock: Clock, up_s: float, code: int = -signal.SIGKILL) -> float:
    """The current worker dies after ``up_s`` seconds; returns the delay chosen, then restarts it."""
    clock.t += up_s
    sup.proc.returncode = code
    delay = sup.exited()
    clock.t += delay
    sup.restart()
    return delay


def test_backoff_grows_then_starts_over_after_a_healthy_run(settings) -> None:  # noqa: ANN001
    sup, clock = supervisor(settings)
    assert [crash(sup, clock, 2) for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert crash(sup, clock, WorkerSupervisor.HEALTHY_S) == 1  # up a minute: a fresh crash, not a loop
    assert crash(sup, clock, 2) == 2
    assert sup.restarts == 9


def test_every_restart_is_logged_with_the_signal_name(settings, caplog) -> None:  # noqa: ANN001
    sup, clock = supervisor(settings)
    with caplog.at_level(logging.WARNING, logger="studio.server"):
        crash(sup, clock, 5)
        crash(sup, clock, 5, code=3)
    text = caplog.text
    assert "pid 100 exited (SIGKILL)" in text and "pid 101 exited (exit 3)" in text
    assert "worker restarted (pid 101, restart 1)" in text and "restart 2" in text
    assert exit_reason(-signal.SIGSEGV) == "SIGSEGV" and exit_reason(None) == "running"


def test_healthz_and_queue_tab_show_the_worker(services) -> None:  # noqa: ANN001
    from starlette.testclient import TestClient

    from studio.server import create_app
    from ui.tabs.queue import worker_line

    app = create_app(services, with_ui=False)
    with TestClient(app) as client:
        assert "worker" not in client.get("/healthz").json()  # no supervised worker here
        assert worker_line(services) == ""
        sup, clock = supervisor(services.settings)
        services.jobs.worker_status = sup.status
        assert client.get("/healthz").json()["worker"] == {"alive": True, "restarts": 0, "last_exit": None,
                                                           "last_restart_at": None}
        crash(sup, clock, 3)
        w = client.get("/healthz").json()["worker"]
        assert w["alive"] and w["restarts"] == 1 and w["last_exit"] == "SIGKILL" and w["last_restart_at"]
        assert "restarted 1× (last exit SIGKILL" in worker_line(services)
        sup.proc.returncode = -signal.SIGTERM
        assert client.get("/healthz").json()["worker"]["alive"] is False
        assert "not running" in worker_line(services)
