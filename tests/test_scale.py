"""Scale-out: the job and recovery suite on both deployments (SQLite files; PostgreSQL + Redis
from the Debian packages, started here on loopback), and several worker processes sharing one
database, queue and asset root with separate scratch dirs.

Without the binaries the PostgreSQL/Redis cases skip with the command that installs them,
except in CI (CI=1, set by .ci/run), where they fail: there they must run.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy import func, select, update

from bench import backends
from bench.harness import studio_env, wait_for
from storage.models import Asset, Job, utcnow
from storage.db import head_revision

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ["sqlite", "postgres+redis"]


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[backends.Postgres, backends.Redis]]:
    miss = backends.missing()
    if miss:
        msg = f"{' and '.join(miss)} not installed: sudo apt-get install -y {' '.join(miss)}"
        if backends.in_ci():
            pytest.fail(f"CI must run the PostgreSQL/Redis tests: {msg}")
        pytest.skip(msg)
    pg = backends.Postgres()
    rd = backends.Redis()
    try:
        yield pg, rd
    finally:
        pg.close()
        rd.close()


@pytest.fixture(params=BACKENDS)
def urls(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """The shared parts of a deployment: database URL, queue URL, asset root."""
    shared = tmp_path / "shared"
    shared.mkdir()
    if request.param == "sqlite":
        return {"database_url": f"sqlite:///{shared / 'studio.db'}", "queue_url": f"sqlite:///{shared / 'queue.db'}",
                "assets_root": str(shared / "assets"), "kind": "sqlite"}
    pg, rd = request.getfixturevalue("servers")
    rd.flush()
    return {"database_url": pg.new_database(), "queue_url": rd.url, "assets_root": str(shared / "assets"),
            "kind": "postgres+redis"}


def _settings(urls: dict[str, str], data: Path, **kw: Any):  # noqa: ANN202
    from studio.config import load

    return load(data, poll_s=0.02, heartbeat_s=0.3, stale_after_s=3.0, database_url=urls["database_url"],
                queue_url=urls["queue_url"], assets_root=urls["assets_root"], **kw)


@pytest.fixture
def svc(urls: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    from studio.wiring import build

    s = build(_settings(urls, tmp_path / "web"))
    yield s
    s.close()


def _env(urls: dict[str, str], **extra: str) -> dict[str, str]:
    return studio_env({"STUDIO_DATABASE_URL": urls["database_url"], "STUDIO_QUEUE_URL": urls["queue_url"],
                       "STUDIO_ASSETS_DIR": urls["assets_root"], "STUDIO_HEARTBEAT_S": "0.3",
                       "STUDIO_STALE_AFTER_S": "3", "STUDIO_RECOVER_EVERY_S": "0.5", "STUDIO_CLAIM_POLL_S": "0.3",
                       "STUDIO_MAX_AUTO_RETRIES": "3", **extra})


def _runner(svc: Any, engines: tuple[str, ...] = ()) -> Any:
    from studio.wiring import build_runner

    r = build_runner(svc)
    r.engines = engines
    return r


# ----------------------------------------------------------------------------- in-process, both backends

def test_migrations_and_settings_select_the_backend(svc: Any, urls: dict[str, str]) -> None:
    from storage.db import current_revision

    assert current_revision(svc.db.engine) == head_revision()
    assert svc.db.engine.dialect.name == ("sqlite" if urls["kind"] == "sqlite" else "postgresql")
    assert svc.queue.kind == ("sqlite" if urls["kind"] == "sqlite" else "redis")
    assert svc.settings.assets_dir == Path(urls["assets_root"])


def test_submit_drain_complete_with_assets_in_the_shared_root(svc: Any) -> None:
    job = svc.jobs.submit("test-steps", {"steps": 2, "step_s": 0, "images": 2, "prompt": "shared root"})
    assert svc.queue.pending_job_ids() == {job.id}
    runner = _runner(svc)
    assert runner.drain(job.id) == 1
    done = svc.jobs.get(job.id)
    assert done.status == "completed" and len(done.assets) == 2
    for a in done.assets:
        assert svc.assets.path(a.id).is_file()
        assert Path(svc.settings.assets_dir) in svc.assets.path(a.id).parents
    assert runner.execute(job.id) == "skipped"
    assert svc.assets.list(query="shared root")[0].job_id == job.id  # JSON/text search works on both


def test_concurrent_claims_never_take_a_job_twice(svc: Any) -> None:
    ids = [svc.jobs.submit("test-steps", {"steps": 1, "step_s": 0, "prompt": str(i)}, enqueue=False).id
           for i in range(40)]
    got: list[tuple[str, str]] = []
    lock = threading.Lock()

    def claimer(n: int) -> None:
        while True:
            c = svc.jobs.claim_next(f"host:{n}:worker:t", None, 30.0)
            if c is None:
                return
            with lock:
                got.append((c[0], f"w{n}"))

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    claimed = [j for j, _ in got]
    assert sorted(claimed) == sorted(ids), "every job claimed exactly once"
    with svc.db.session() as s:
        assert s.scalar(select(func.max(Job.attempts))) == 1
        assert s.scalar(select(func.count()).select_from(Job).where(Job.status == "running")) == 40


def test_claim_order_priority_then_fairness_between_users_and_origins(svc: Any) -> None:
    a = [svc.jobs.submit("test-steps", {"steps": 1, "prompt": f"a{i}"}, enqueue=False, owner_id="alice",
                         origin="api").id for i in range(6)]
    time.sleep(0.01)
    b = [svc.jobs.submit("test-steps", {"steps": 1, "prompt": f"b{i}"}, enqueue=False, owner_id="bob",
                         origin="api").id for i in range(2)]
    ui = svc.jobs.submit("test-steps", {"steps": 1, "prompt": "alice ui"}, enqueue=False, owner_id="alice",
                         origin="ui").id
    urgent = svc.jobs.submit("test-steps", {"steps": 1, "prompt": "urgent"}, enqueue=False, owner_id="alice",
                             priority=5).id
    order = []
    while (c := svc.jobs.claim_next("h:1:worker:x", None, 30.0)) is not None:
        order.append(c[0])  # each stays running: the fewest-running group goes next
    assert order[0] == urgent
    # alice/api, bob/api and alice/ui each get a turn before alice/api gets a second one
    assert set(order[1:4]) == {a[0], b[0], ui}
    assert order[4:6] == [a[1], b[1]] or set(order[4:6]) == {a[1], b[1]}
    assert order[6:] == a[2:]


def test_a_worker_only_takes_engines_it_runs(svc: Any) -> None:
    job = svc.jobs.submit("test-steps", {"steps": 1, "step_s": 0}, enqueue=False)
    assert svc.jobs.claim_next("h:1:worker:x", ("t2i",), 30.0) is None
    assert svc.jobs.claimable(("t2i",)) is None and svc.jobs.claimable(("test-steps",))[0] == job.id
    assert _runner(svc, ("t2i",)).drain() == 0
    assert _runner(svc, ("test-steps",)).drain() == 1
    assert svc.jobs.get(job.id).status == "completed"


def test_expired_lease_is_taken_back_and_the_old_run_is_fenced(svc: Any) -> None:
    """Worker A claims a job and goes silent (network cut); its lease expires, recovery fails
    the job and queues a linked retry, worker B completes the retry. When A comes back, none of
    its writes land: no progress, no assets, no status; the retry's result stands."""
    job = svc.jobs.submit("test-steps", {"steps": 3, "step_s": 0.01, "images": 1, "prompt": "fenced"}, enqueue=False)
    a = _runner(svc)
    a.worker_id = "elsewhere:1:worker:aaaaaa"  # another machine: only its lease says it is alive
    assert a._claim(job.id)
    alive_everywhere = lambda wid: True  # noqa: E731
    assert svc.jobs.recover(alive=alive_everywhere, stale_after_s=3600)["interrupted"] == []  # lease still valid
    with svc.db.session() as s:
        s.execute(update(Job).where(Job.id == job.id).values(lease_expires_at=utcnow()))
    time.sleep(0.01)
    out = svc.jobs.recover(alive=alive_everywhere, stale_after_s=3600)
    assert out["interrupted"] == [job.id] and len(out["retried"]) == 1
    retry = out["retried"][0]
    b = _runner(svc)
    assert b.execute(retry) == "completed"
    assert a._run(job.id) == "lost"  # A wakes up and runs: its first progress write finds the lease gone
    assert a.beat() == set()
    old, new = svc.jobs.get(job.id), svc.jobs.get(retry)
    assert old.status == "failed" and old.error["type"] == "interrupted" and old.assets == []
    assert new.status == "completed" and len(new.assets) == 1
    with svc.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Asset).where(Asset.job_id == job.id)) == 0


def test_completion_under_a_lost_lease_writes_no_rows(svc: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lease is taken back between the engine's last step and the result commit."""
    job = svc.jobs.submit("test-steps", {"steps": 1, "step_s": 0, "images": 2}, enqueue=False)
    a = _runner(svc)
    real = a._complete

    def late(job_id: str, *args: Any) -> str:
        with svc.db.session() as s:  # recovery got there first
            s.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow()))
        svc.jobs.recover(alive=lambda wid: True, stale_after_s=3600)
        return real(job_id, *args)

    monkeypatch.setattr(a, "_complete", late)
    assert a.execute(job.id) == "lost"
    assert svc.jobs.get(job.id).status == "failed"
    with svc.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Asset)) == 0


def test_heartbeat_renews_the_lease_and_reports_lost_ones(svc: Any) -> None:
    job = svc.jobs.submit("test-steps", {"steps": 1}, enqueue=False)
    a = _runner(svc)
    assert a._claim(job.id)
    a.active.add(job.id)
    with svc.db.session() as s:
        before = s.get(Job, job.id).lease_expires_at
    time.sleep(0.05)
    assert a.beat() == set()
    with svc.db.session() as s:
        assert s.get(Job, job.id).lease_expires_at > before
        s.execute(update(Job).where(Job.id == job.id).values(lease_token="someone-else"))
    assert a.beat() == {job.id} and job.id in a.lost


def test_recovery_requeues_queued_jobs_whose_message_is_gone(svc: Any) -> None:
    lost = svc.jobs.submit("test-steps", {"steps": 1}, enqueue=False)
    out = svc.jobs.recover(alive=lambda wid: True, stale_after_s=3600)
    assert lost.id in out["requeued"] and lost.id in svc.queue.pending_job_ids()


def test_submit_survives_an_unreachable_queue(svc: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The row is the truth: with the transport down a submit still stores the job; a worker finds it."""
    def down(*a: Any, **k: Any) -> str:
        raise ConnectionError("queue down")

    monkeypatch.setattr(svc.queue, "enqueue", down)
    job = svc.jobs.submit("test-steps", {"steps": 1, "step_s": 0})
    assert svc.jobs.get(job.id).status == "queued" and svc.jobs.claimable(None)[0] == job.id
    assert _runner(svc).drain() == 1


def test_status_lists_workers_engines_jobs_and_queue_depth(svc: Any) -> None:
    a = _runner(svc)
    svc.jobs.register_worker(a.worker_id, host="gpu-1", pid=os.getpid(), devices=["cpu"], engines=["test-steps"],
                             threads=2)
    running = svc.jobs.submit("test-steps", {"steps": 1}, enqueue=False)
    svc.jobs.submit("test-steps", {"steps": 1}, enqueue=False)
    assert a._claim(running.id)
    info = svc.jobs.cluster(svc.settings.lease_seconds)
    (w,) = info["workers"]
    assert w["host"] == "gpu-1" and w["engines"] == ["test-steps"] and w["state"] == "alive"
    assert w["running"][0]["id"] == running.id and w["heartbeat_age_s"] < 5
    assert info["queue"]["test-steps"] == {"queued": 1, "running": 1}
    from ui.tabs.queue import cluster_markdown

    md = cluster_markdown(svc)
    assert "gpu-1" in md and running.id in md and "test-steps" in md


# ----------------------------------------------------------------------------- worker processes

def _chains(svc: Any, roots: list[str]) -> dict[str, list[Job]]:
    with svc.db.session() as s:
        rows = s.scalars(select(Job)).all()
    kids: dict[str, list[Job]] = {}
    for j in rows:
        if j.retried_from:
            kids.setdefault(j.retried_from, []).append(j)
    by_id = {j.id: j for j in rows}
    out = {}
    for r in roots:
        chain, todo = [], [by_id[r]]
        while todo:
            j = todo.pop()
            chain.append(j)
            todo += kids.get(j.id, [])
        out[r] = chain
    return out


def test_worker_processes_share_a_queue_and_survive_kill_9(svc: Any, urls: dict[str, str], tmp_path: Path) -> None:
    """Three `studio worker` processes (separate scratch dirs) share the database, queue and asset
    root; one is killed -9 mid-job twice and restarted. Every job ends completed exactly once,
    nothing stays running, and the killed runs' work dirs are swept."""
    env = _env(urls)
    procs = [backends.WorkerProcess(tmp_path / f"host{i}", env) for i in range(3)]
    try:
        for p in procs:
            p.ready()
        ids: list[str] = []
        killed: list[str] = []
        for wave in range(2):  # a wave of jobs, then kill -9 the victim mid-job and restart it
            ids += [svc.jobs.submit("test-steps", {"steps": 8, "step_s": 0.05, "images": 1,
                                                   "prompt": f"w{wave} j{i}"}).id for i in range(12)]
            victim = procs[0]
            wid = victim.worker_id
            wait_for(lambda: any(w["id"] == wid and w["running"] for w in svc.jobs.cluster(30)["workers"]), 60, 0.05,
                     "victim running a job")
            victim.kill()
            killed.append(wid)
            procs[0] = backends.WorkerProcess(tmp_path / "host0", env).ready()

        def settled() -> bool:
            chains = _chains(svc, ids)
            return all(any(j.status == "completed" for j in c) for c in chains.values())

        wait_for(settled, 120, 0.2, "every job completed")
        chains = _chains(svc, ids)
        assert all(sum(j.status == "completed" for j in c) == 1 for c in chains.values()), "no duplicates"
        interrupted = [j for c in chains.values() for j in c if j.error_type == "interrupted"]
        assert len(interrupted) <= 2  # a kill may land just after a job ended
        with svc.db.session() as s:
            assert s.scalar(select(func.count()).select_from(Job).where(Job.status == "running")) == 0
            assert s.scalar(select(func.max(Job.attempts))) == 1
            for root in ids:
                done = next(j for j in chains[root] if j.status == "completed")
                assert s.scalar(select(func.count()).select_from(Asset).where(Asset.job_id == done.id)) == 1
        hosts = {j.worker_id.split(":")[1] for c in chains.values() for j in c if j.status == "completed"}
        assert len(hosts) >= 2, "the queue was shared"
        wait_for(lambda: not list((tmp_path / "host0" / "work").iterdir()), 30, 0.2, "killed runs' work dirs swept")
        r = subprocess.run([sys.executable, "-m", "studio", "status", "--json", "--data-dir", str(tmp_path / "cli")],
                           env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
        info = json.loads(r.stdout)
        state = {w["id"]: w["state"] for w in info["workers"]}
        assert all(state[p.worker_id] == "alive" for p in procs), state
        assert all(state[k] in ("alive", "lost") for k in killed) and len(state) == 5, state  # lost once silent
        assert all(w["engines"] for w in info["workers"])
    finally:
        for p in procs:
            p.stop()


def test_a_frozen_worker_loses_its_lease_and_cannot_overwrite(svc: Any, urls: dict[str, str], tmp_path: Path) -> None:
    """A worker on 'another machine' is frozen (SIGSTOP: a network cut, a stalled VM) mid-job.
    Its lease expires, another worker takes the job back and runs the retry. Thawed, the frozen
    worker finds its lease gone and stops; it writes no result over the retry's."""
    env = _env(urls)
    far = backends.WorkerProcess(tmp_path / "far", env | {"STUDIO_WORKER_HOST": "far-away"}).ready()
    near = None
    try:
        job = svc.jobs.submit("test-steps", {"steps": 40, "step_s": 0.1, "images": 1, "prompt": "frozen"})
        wait_for(lambda: svc.jobs.get(job.id).status == "running" and svc.jobs.get(job.id).progress > 0, 60, 0.05,
                 "far worker running the job")
        assert svc.jobs.get(job.id).worker_id.startswith("far-away:")
        os.kill(far.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        near = backends.WorkerProcess(tmp_path / "near", env).ready()
        failed = wait_for(lambda: (j := svc.jobs.get(job.id)).status == "failed" and j, 30, 0.1, "lease expiry")
        requeue_s = time.monotonic() - t0
        assert failed.error["type"] == "interrupted" and "lease" in failed.error["message"]
        assert requeue_s < 3.0 + 2 + 5, requeue_s  # lease (3 s) + a recovery pass + start-up slack
        # the retry row follows the failure (its own commit on PostgreSQL): wait for it, briefly
        retry = wait_for(lambda: (c := _chains(svc, [job.id])[job.id])[1:] and c[1].id, 10, 0.05, "retry queued")
        done = wait_for(lambda: (j := svc.jobs.get(retry)).status in ("completed", "failed") and j, 60, 0.1, "retry")
        assert done.status == "completed" and done.worker_id.split(":")[0] != "far-away"
        os.kill(far.pid, signal.SIGCONT)  # thawed after the retry's result is stored
        wait_for(lambda: "lease lost" in far.log.read_text(), 20, 0.2, "the thawed worker notices")
        time.sleep(1.0)
        again, retried = svc.jobs.get(job.id), svc.jobs.get(retry)
        assert again.status == "failed" and again.assets == [] and again.finished_at == failed.finished_at
        assert retried.status == "completed" and retried.assets == done.assets
        assert retried.finished_at == done.finished_at and retried.worker_id == done.worker_id
    finally:
        far.stop()
        if near is not None:
            near.stop()


def test_cancel_and_retry_work_on_the_backend(svc: Any) -> None:
    queued = svc.jobs.submit("test-steps", {"steps": 1, "step_s": 0})
    assert svc.jobs.cancel(queued.id).status == "canceled"
    assert _runner(svc).drain() == 0
    again = svc.jobs.retry(queued.id)
    assert again.retried_from == queued.id and _runner(svc).drain() == 1
    assert svc.jobs.get(again.id).status == "completed"


def test_cli_db_upgrade_and_worker_engine_check(urls: dict[str, str], tmp_path: Path) -> None:
    env = _env(urls)
    r = subprocess.run([sys.executable, "-m", "studio", "db", "upgrade", "--data-dir", str(tmp_path / "d")], env=env,
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and f"revision {head_revision()}" in r.stdout, r.stderr
    r = subprocess.run([sys.executable, "-m", "studio", "worker", "--engines", "t2i,no-such", "--data-dir",
                        str(tmp_path / "d")], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "unknown engine(s) no-such" in r.stderr


def test_the_default_stays_the_sqlite_files_in_the_data_dir(services: Any) -> None:
    s = services.settings
    assert s.db_url == f"sqlite:///{s.data_dir / 'studio.db'}" and not s.shared
    assert services.db.path == s.data_dir / "studio.db" and (s.data_dir / "queue.db").exists()
    assert s.assets_dir == s.data_dir / "assets" and services.queue.kind == "sqlite"
