"""End to end through launch.py: web process + huey consumer process + SQLite file."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, StudioProcess, free_port, studio_env, wait_for
from storage.db import head_revision


def job(srv: StudioProcess, jid: str) -> dict:
    return httpx.get(f"{srv.url}/api/v1/jobs/{jid}").json()


def submit(srv: StudioProcess, **params) -> str:  # noqa: ANN003
    r = httpx.post(f"{srv.url}/api/v1/jobs", json={"engine": "test-steps", "params": params})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def wait_status(srv: StudioProcess, jid: str, statuses: set[str], timeout: float = 60) -> dict:
    return wait_for(lambda: (j := job(srv, jid))["status"] in statuses and j, timeout, 0.1, f"{jid} in {statuses}")


def test_job_runs_through_the_worker_process(studio_server) -> None:  # noqa: ANN001
    jid = submit(studio_server, steps=3, step_s=0.01, images=2, prompt="queue test")
    j = wait_status(studio_server, jid, {"completed", "failed"})
    assert j["status"] == "completed", j
    assert len(j["assets"]) == 2
    a = j["assets"][0]
    body = httpx.get(studio_server.url + a["url"]).content
    assert body[:8] == b"\x89PNG\r\n\x1a\n"
    meta = httpx.get(f"{studio_server.url}{a['url']}/meta").json()
    assert meta["meta"]["prompt"] == "queue test" and meta["job_id"] == jid
    assert httpx.get(f"{studio_server.url}/api/v1/jobs/{jid}/preview").status_code == 404  # dropped when the job ended


def test_cancel_running_job(studio_server) -> None:  # noqa: ANN001
    jid = submit(studio_server, steps=2000, step_s=0.05)
    wait_for(lambda: job(studio_server, jid)["progress"] > 0.001, 30, 0.05, "running")
    t0 = time.monotonic()
    assert httpx.post(f"{studio_server.url}/api/v1/jobs/{jid}/cancel").status_code == 200
    j = wait_status(studio_server, jid, {"canceled", "failed", "completed"}, 10)
    assert j["status"] == "canceled"
    assert time.monotonic() - t0 < 8.0  # stops within a step; the bound only catches a cancel that is ignored


def test_gradio_client_submits_and_cancels(studio_server) -> None:  # noqa: ANN001
    from gradio_client import Client

    client = Client(studio_server.url + "/", verbose=False)
    jid = client.predict("test-steps", json.dumps({"steps": 2, "step_s": 0.01}), api_name="/submit_job")
    st = wait_for(lambda: (s := client.predict(jid, api_name="/job_status"))["status"] == "completed" and s, 60, 0.2,
                  "gradio job done")
    assert st["assets"][0]["mime"] == "image/png"
    long_id = client.predict("test-steps", json.dumps({"steps": 2000, "step_s": 0.05}), api_name="/submit_job")
    wait_for(lambda: client.predict(long_id, api_name="/job_status")["status"] == "running", 30, 0.1, "running")
    client.predict(long_id, api_name="/cancel_job")
    wait_for(lambda: client.predict(long_id, api_name="/job_status")["status"] == "canceled", 10, 0.1, "canceled")
    with pytest.raises(Exception, match="steps"):
        client.predict("test-steps", json.dumps({"steps": -5}), api_name="/submit_job")


def test_worker_sigkill_mid_job_is_recovered(tmp_path: Path) -> None:
    """Kill -9 the worker mid-job: the supervisor restarts it, the job becomes failed
    'interrupted' and (idempotent engine) a linked retry runs to completion; queued jobs
    behind it still run. Nothing stays 'running', the killed job's work dir and preview are
    gone, and the restart is in the server log and /healthz."""
    srv = StudioProcess(tmp_path / "data", free_port())
    try:
        srv.worker_ready()
        victim = submit(srv, steps=400, step_s=0.05)
        behind = submit(srv, steps=1, step_s=0)
        j = wait_for(lambda: (x := job(srv, victim))["status"] == "running" and x["progress"] > 0 and x, 30, 0.05, "running")
        pid = int(j["worker_id"].split(":")[1])
        os.kill(pid, signal.SIGKILL)
        failed = wait_status(srv, victim, {"failed"}, 60)
        assert failed["error"]["type"] == "interrupted"
        assert wait_status(srv, behind, {"completed"}, 60)["status"] == "completed"
        retries = [x for x in httpx.get(f"{srv.url}/api/v1/jobs").json() if x["retried_from"] == victim]
        assert len(retries) == 1
        done = wait_status(srv, retries[0]["id"], {"completed", "failed"}, 90)
        assert done["status"] == "completed"
        assert httpx.get(f"{srv.url}/api/v1/jobs", params={"status": "running"}).json() == []
        data = srv.data_dir
        assert list((data / "work").iterdir()) == [] and list((data / "previews").iterdir()) == []
        w = httpx.get(f"{srv.url}/healthz").json()["worker"]
        assert w["alive"] and w["restarts"] == 1 and w["last_exit"] == "SIGKILL" and w["last_restart_at"]
        log = srv.log.read_text()
        assert f"worker pid {pid} exited (SIGKILL)" in log and "worker restarted" in log, log[-2000:]
    finally:
        assert srv.stop() == 0


def test_queued_jobs_survive_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    srv = StudioProcess(data, free_port(), ["--no-worker"])
    ids = [submit(srv, steps=1, step_s=0) for _ in range(3)]
    assert srv.stop() == 0
    srv2 = StudioProcess(data, free_port())
    try:
        for jid in ids:
            assert wait_status(srv2, jid, {"completed", "failed"}, 60)["status"] == "completed"
    finally:
        srv2.stop()


def test_refuses_open_network_without_accounts(tmp_path: Path) -> None:
    """Off loopback accounts are on by themselves; they cannot be switched off, and the old
    --insecure-listen escape hatch is gone with a message saying so."""
    for extra, said in ((["--host", "0.0.0.0", "--auth", "off"], "accounts off"),
                        (["--public-url", "https://studio.example.com", "--auth", "off"], "accounts off"),
                        (["--host", "0.0.0.0", "--insecure-listen"], "insecure-listen is gone")):
        r = subprocess.run([sys.executable, "launch.py", "--port", str(free_port()), "--data-dir", str(tmp_path),
                            *extra], cwd=ROOT, env=studio_env(), capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and said in r.stderr, (extra, r.stderr[-500:])


def test_cli_run_writes_files_and_rejects_bad_params(tmp_path: Path) -> None:
    env = studio_env({"STUDIO_DATA_DIR": str(tmp_path / "data")})
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "studio", "run", "test-steps", "--set", "steps=2", "--set", "step_s=0",
                        "--set", "prompt=seven 7", "--out", str(out)], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    files = [Path(p) for p in r.stdout.split()]
    assert files and all(f.exists() and f.parent == out for f in files)
    # a local path for an input field is ingested as an asset
    r = subprocess.run([sys.executable, "-m", "studio", "run", "test-steps", "--set", f"source={files[0]}",
                        "--set", "images=0", "--set", "step_s=0", "--out", str(out / "echo")], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for bad in (["--set", "steps=zero"], ["--set", "nope=1"], ["--set", "source=/no/such.png"], ["--set", "oops"]):
        r = subprocess.run([sys.executable, "-m", "studio", "run", "test-steps", *bad, "--out", str(out)], cwd=ROOT,
                           env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, (bad, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "studio", "run", "test-steps", "--set", "fail_at=0", "--out", str(out)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "failed on purpose" in r.stderr
    r = subprocess.run([sys.executable, "-m", "studio", "jobs"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stdout.count("test-steps") == 3
    r = subprocess.run([sys.executable, "-m", "studio", "db", "upgrade"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and f"revision {head_revision()}" in r.stdout


def test_worker_exits_when_the_web_process_dies(tmp_path: Path) -> None:
    srv = StudioProcess(tmp_path / "data", free_port())
    srv.worker_ready()
    log = (tmp_path / "data" / "logs" / "worker.log").read_text()
    wpid = int(log.split("worker ready ")[-1].split(":")[1])
    srv.proc.kill()
    srv.proc.wait()

    def gone() -> bool:
        try:
            os.kill(wpid, 0)
        except ProcessLookupError:
            return True
        return Path(f"/proc/{wpid}/status").read_text().find("zombie") >= 0

    wait_for(gone, 20, 0.2, "orphaned worker to exit")


def test_gradio_client_generates_and_cancels_t2i(studio_server, tiny_model) -> None:  # noqa: ANN001
    from gradio_client import Client

    from tests.test_browser import served_model

    client = Client(studio_server.url + "/", verbose=False)
    p = {"model": served_model(studio_server, tiny_model), "prompt": "a green heart", "steps": 4, "seed": 7}
    jid = client.predict("t2i", json.dumps(p), api_name="/submit_job")
    st = wait_for(lambda: (s := client.predict(jid, api_name="/job_status"))["status"] in ("completed", "failed") and s,
                  120, 0.2, "t2i done")
    assert st["status"] == "completed", st["error"]
    png = httpx.get(studio_server.url + st["assets"][0]["url"]).content
    from io import BytesIO

    from PIL import Image

    assert "Seed: 7" in Image.open(BytesIO(png)).text["parameters"]
    long_id = client.predict("t2i", json.dumps(p | {"steps": 150}), api_name="/submit_job")
    wait_for(lambda: client.predict(long_id, api_name="/job_status")["progress"] > 0.01, 60, 0.1, "t2i running")
    client.predict(long_id, api_name="/cancel_job")
    wait_for(lambda: client.predict(long_id, api_name="/job_status")["status"] == "canceled", 20, 0.1, "canceled")


def test_cli_run_t2i_writes_pngs_with_parameters(tmp_path: Path, tiny_model: Path) -> None:
    env = studio_env({"STUDIO_DATA_DIR": str(tmp_path / "data")})
    r = subprocess.run([sys.executable, "-m", "studio", "run", "t2i", "--set", f"model={tiny_model}",
                        "--set", "prompt=a blue ring", "--set", "seed=7", "--set", "steps=3", "--out",
                        str(tmp_path / "out")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    from PIL import Image

    (png,) = [Path(p) for p in r.stdout.split()]
    text = Image.open(png).text["parameters"]
    assert text.startswith("a blue ring\n") and "Seed: 7" in text
    r = subprocess.run([sys.executable, "-m", "studio", "run", "t2i", "--set", "prompt=x", "--set",
                        "model=/no/such/model", "--out", str(tmp_path / "o2")], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "model: " in r.stderr and "not found" in r.stderr and "Traceback" not in r.stderr
