"""A launched Studio for benches: ``python -m studio serve`` on a scratch data dir with the
test engine registered, plus the small helpers around it.

Benches import this, never tests/: tests/ is not installed, and ``studio bench queue`` must run
from an installed package. The child runs outside the source tree (its cwd is the scratch dir)
and finds ``studio`` where this process found it.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

TEST_ENGINES = "test-steps=bench.fake_engines:StepEngine"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll ``pred`` until it returns something truthy (returned) or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def studio_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment plus the test engine, offline, unbuffered; the code root goes last on
    PYTHONPATH so a source checkout that is not installed works too."""
    import studio

    code_root = str(Path(studio.__file__).resolve().parents[1])
    env = dict(os.environ)
    path = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env.update({"STUDIO_EXTRA_ENGINES": TEST_ENGINES, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1",
                "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(path + [code_root])})
    env.update(extra or {})
    return env


class StudioProcess:
    """``studio serve`` as a user runs it (web + supervised worker); stopped with SIGINT like Ctrl-C."""

    def __init__(self, data_dir: Path, port: int, extra_args: list[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = data_dir.parent / f"serve-{port}.log"
        data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [*self.program(), "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir),
                 *(extra_args or [])],
                cwd=self.cwd(), env=studio_env(env), stdout=out, stderr=subprocess.STDOUT)
        from studio.server import wait_http

        try:
            wait_http(self.url + "/healthz", timeout=120)
        except TimeoutError:
            self.stop()
            raise AssertionError(f"Studio did not start:\n{self.log.read_text()[-3000:]}") from None

    def program(self) -> list[str]:
        """The command line that starts the Studio (subclasses: ``launch.py`` from a checkout)."""
        return [sys.executable, "-m", "studio", "serve"]

    def cwd(self) -> Path:
        return self.data_dir.parent  # outside the source tree: the installed package is what runs

    def worker_ready(self, timeout: float = 60.0) -> None:
        log = self.data_dir / "logs" / "worker.log"
        wait_for(lambda: log.exists() and "worker ready" in log.read_text(), timeout, 0.2, "worker ready")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
