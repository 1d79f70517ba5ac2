"""Shared fixtures: a real SQLite data dir, real services, and a launched Studio
(web + huey consumer process) on a free loopback port."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from bench.harness import StudioProcess as HarnessProcess
from bench.harness import TEST_ENGINES, free_port, studio_env, wait_for  # noqa: F401 - one copy, shared with benches

ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ["STUDIO_EXTRA_ENGINES"] = TEST_ENGINES
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _loopback_testclient() -> None:
    """Starlette's TestClient calls itself host 'testserver' from client 'testclient'; the access
    layer refuses both (foreign Host, non-loopback client). Tests talk like a browser on this
    machine instead: Host 127.0.0.1, client 127.0.0.1."""
    import starlette.testclient as tc

    orig = tc.TestClient.__init__
    if getattr(orig, "_studio_loopback", False):
        return

    def init(self, app, base_url: str = "http://127.0.0.1:7860", *args, **kwargs):  # noqa: ANN001
        kwargs.setdefault("client", ("127.0.0.1", 50000))
        orig(self, app, base_url, *args, **kwargs)

    init._studio_loopback = True  # type: ignore[attr-defined]
    tc.TestClient.__init__ = init  # type: ignore[method-assign]


_loopback_testclient()


@pytest.fixture
def settings(tmp_path: Path):  # noqa: ANN201
    from studio.config import load

    return load(tmp_path / "data", poll_s=0.02, heartbeat_s=0.5, stale_after_s=5.0)


@pytest.fixture
def services(settings) -> Iterator[Any]:  # noqa: ANN001
    from studio.wiring import build

    svc = build(settings)
    yield svc
    svc.close()


class StudioProcess(HarnessProcess):
    """``launch.py`` from this checkout, as a user runs it, with short heartbeats so crash
    recovery is quick to test; stopped with SIGINT like Ctrl-C."""

    def __init__(self, data_dir: Path, port: int, extra_args: list[str] | None = None) -> None:
        super().__init__(data_dir, port, extra_args, env={"STUDIO_STALE_AFTER_S": "5", "STUDIO_HEARTBEAT_S": "0.5"})

    def program(self) -> list[str]:
        return [sys.executable, str(ROOT / "launch.py")]

    def cwd(self) -> Path:
        return ROOT


@pytest.fixture(scope="module")
def studio_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StudioProcess]:
    srv = StudioProcess(tmp_path_factory.mktemp("studio") / "data", free_port())
    srv.worker_ready()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny real SD pipeline folder (random weights) for tests that generate."""
    from tests.tiny_sd import make_tiny_sd

    return make_tiny_sd(tmp_path_factory.mktemp("models") / "tiny-sd")
