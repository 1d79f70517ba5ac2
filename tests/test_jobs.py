"""Job service and runner in-process, on a real SQLite file and a real huey queue file."""
from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import event, func, select, update

from storage.models import Asset, Job
from studio.errors import Conflict, InvalidParams
from studio.wiring import build_runner


def test_invalid_params_name_the_field_and_store_nothing(services) -> None:  # noqa: ANN001
    with pytest.raises(InvalidParams) as e:
        services.jobs.submit("test-steps", {"steps": 0})
    assert e.value.errors[0]["field"] == "steps"
    with pytest.raises(InvalidParams) as e:
        services.jobs.submit("test-steps", {"stpes": 3})
    assert "stpes" in str(e.value)
    with pytest.raises(InvalidParams) as e:
        services.jobs.submit("no-such-engine", {})
    assert e.value.errors[0]["field"] == "engine"
    with pytest.raises(InvalidParams) as e:
        services.jobs.submit("test-steps", {"source": "not-an-asset"})
    assert e.value.errors[0]["field"] == "source"
    with services.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 0
    assert services.queue.pending_job_ids() == set()


def test_submit_enqueues_only_the_job_id(services) -> None:  # noqa: ANN001
    job = services.jobs.submit("test-steps", {"steps": 2})
    assert job.status == "queued"
    assert services.queue.pending_job_ids() == {job.id}
    (task,) = services.queue.huey.pending()
    assert task.args == (job.id,) and not task.kwargs


def test_runner_completes_job_with_assets_and_metadata(services) -> None:  # noqa: ANN001
    runner = build_runner(services)
    job = services.jobs.submit("test-steps", {"steps": 3, "step_s": 0, "images": 2, "prompt": "a red star"},
                               enqueue=False)
    assert runner.execute(job.id) == "completed"
    done = services.jobs.get(job.id)
    assert done.status == "completed" and done.progress == 1.0 and done.finished_at
    assert len(done.assets) == 2 and all(a.mime == "image/png" and a.width == 16 for a in done.assets)
    assert services.assets.list(query="red star")[0].job_id == job.id
    assert runner.execute(job.id) == "skipped"  # a second delivery never re-runs a job
    assert not (services.settings.work_root / job.id).exists()


def test_engine_error_is_recorded_with_type(services) -> None:  # noqa: ANN001
    runner = build_runner(services)
    job = services.jobs.submit("test-steps", {"steps": 5, "step_s": 0, "fail_at": 2}, enqueue=False)
    assert runner.execute(job.id) == "failed"
    j = services.jobs.get(job.id)
    assert j.error["type"] == "engine_error" and "step 2" in j.error["message"]
    with services.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Asset)) == 0


def test_cancel_running_job_stops_within_one_step(services) -> None:  # noqa: ANN001
    runner = build_runner(services)
    job = services.jobs.submit("test-steps", {"steps": 1000, "step_s": 0.1}, enqueue=False)
    t = threading.Thread(target=runner.execute, args=(job.id,))
    t.start()
    from tests.conftest import wait_for

    wait_for(lambda: services.jobs.get(job.id).progress > 0.002, 20, what="job running")
    t0 = time.monotonic()
    services.jobs.cancel(job.id)
    t.join(10)
    elapsed = time.monotonic() - t0
    j = services.jobs.get(job.id)
    assert j.status == "canceled"
    assert elapsed < 2.0, elapsed  # one 0.1 s step + the 50 ms flag check, with room for a loaded 2-core box (ignored: 100 s)
    with pytest.raises(Conflict):
        services.jobs.cancel(job.id)


def test_cancel_queued_job_revokes_message(services) -> None:  # noqa: ANN001
    job = services.jobs.submit("test-steps", {"steps": 2})
    services.jobs.cancel(job.id)
    assert services.jobs.get(job.id).status == "canceled"
    runner = build_runner(services)
    assert runner.execute(job.id) == "skipped"
    # huey drops the revoked message when it dequeues it
    services.queue.bind(runner.execute)
    task = services.queue.huey.dequeue()
    assert task is None or services.queue.huey.is_revoked(task)


def test_retry_links_to_the_original(services) -> None:  # noqa: ANN001
    runner = build_runner(services)
    job = services.jobs.submit("test-steps", {"steps": 2, "step_s": 0, "fail_at": 0}, enqueue=False)
    runner.execute(job.id)
    with pytest.raises(Conflict):
        services.jobs.retry(services.jobs.submit("test-steps", {"steps": 1}).id)
    again = services.jobs.retry(job.id)
    assert again.retried_from == job.id and again.status == "queued" and again.params == job.params


def test_progress_writes_are_throttled(services) -> None:  # noqa: ANN001
    runner = build_runner(services)
    job = services.jobs.submit("test-steps", {"steps": 200, "step_s": 0.005}, enqueue=False)
    writes = []

    def count(conn, cursor, statement, params, context, executemany):  # noqa: ANN001
        if statement.startswith("UPDATE jobs SET progress"):
            writes.append(time.monotonic())

    event.listen(services.db.engine, "before_cursor_execute", count)
    try:
        t0 = time.monotonic()
        assert runner.execute(job.id) == "completed"
        elapsed = time.monotonic() - t0
    finally:
        event.remove(services.db.engine, "before_cursor_execute", count)
    assert elapsed > 1.0
    assert 1 <= len(writes) <= 4 * elapsed + 2, (len(writes), elapsed)


def test_recovery_fails_dead_workers_jobs_and_requeues_lost_messages(services) -> None:  # noqa: ANN001
    import socket

    dead_worker = f"{socket.gethostname()}:999999:worker:dead00"
    idem = services.jobs.submit("test-steps", {"steps": 2}, enqueue=False)
    with services.db.session() as s:
        s.execute(update(Job).where(Job.id == idem.id).values(status="running", worker_id=dead_worker))
    lost = services.jobs.submit("test-steps", {"steps": 1}, enqueue=False)  # queued, no message
    from studio.worker import recover

    out = recover(services, "self")
    assert out["interrupted"] == [idem.id]
    j = services.jobs.get(idem.id)
    assert j.status == "failed" and j.error["type"] == "interrupted"
    (retry_id,) = out["retried"]
    assert services.jobs.get(retry_id).retried_from == idem.id
    assert lost.id in out["requeued"]
    assert {lost.id, retry_id} <= services.queue.pending_job_ids()
    # a retry that is itself interrupted is not retried again (no crash loops)
    with services.db.session() as s:
        s.execute(update(Job).where(Job.id == retry_id).values(status="running", worker_id=dead_worker))
    out2 = recover(services, "self")
    assert out2["interrupted"] == [retry_id] and out2["retried"] == []


def test_live_worker_jobs_are_left_alone(services) -> None:  # noqa: ANN001
    import os
    import socket

    me = f"{socket.gethostname()}:{os.getppid()}:worker:alive0"  # parent process: alive
    job = services.jobs.submit("test-steps", {"steps": 2}, enqueue=False)
    with services.db.session() as s:
        s.execute(update(Job).where(Job.id == job.id).values(status="running", worker_id=me,
                                                             heartbeat_at=func.datetime("now")))
    from studio.worker import recover

    assert recover(services, "self")["interrupted"] == []
    assert services.jobs.get(job.id).status == "running"


def test_previews_stay_bounded_after_many_jobs(services) -> None:  # noqa: ANN001
    """Every job writes a preview while it runs; whatever its end, the file goes with it."""
    runner = build_runner(services)
    ends = []
    for i in range(12):
        params = {"steps": 2, "step_s": 0, "images": 0, "prompt": str(i)} | ({"fail_at": 1} if i % 3 == 2 else {})
        job = services.jobs.submit("test-steps", params, enqueue=False)
        ends.append(runner.execute(job.id))
        assert not services.jobs.get(job.id).has_preview
    assert set(ends) == {"completed", "failed"}
    assert list(services.settings.previews_dir.iterdir()) == []


def test_kill_drill_leaves_no_work_dirs_and_keeps_resumable_checkpoints(services, tmp_path) -> None:  # noqa: ANN001
    """SIGKILL a real worker process mid-job, then recover: the dead job's work dir and preview
    are gone, its checkpoints stay for the linked retry, checkpoints no job can resume are gone,
    and nothing outside the work area is touched (a link there is removed, not followed)."""
    import os
    import signal
    from datetime import timedelta

    from storage.models import utcnow
    from studio.runner import state_key
    from studio.server import spawn_worker, stop_worker
    from studio.worker import recover
    from tests.conftest import wait_for

    s = services.settings
    outside = tmp_path / "outside"
    (outside / "keep").mkdir(parents=True)
    (s.work_root / "stray-link").symlink_to(outside, target_is_directory=True)
    (s.work_root / "finished-long-ago").mkdir()
    old = services.jobs.submit("test-steps", {"steps": 3, "prompt": "old"}, enqueue=False)
    with services.db.session() as sess:
        sess.execute(update(Job).where(Job.id == old.id).values(status="failed", finished_at=utcnow()
                                                                - timedelta(days=30)))
    old_state = s.data_dir / "state" / "test-steps" / state_key("test-steps", old.params)
    old_state.mkdir(parents=True)

    victim = services.jobs.submit("test-steps", {"steps": 2000, "step_s": 0.05})
    proc = spawn_worker(s, 1)
    try:
        wait_for(lambda: services.jobs.get(victim.id).has_preview, 60, 0.1, "victim running with a preview")
        work = s.work_root / victim.id
        state = s.data_dir / "state" / "test-steps" / state_key("test-steps", victim.params)
        assert work.is_dir() and state.is_dir()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        stop_worker(proc)
    assert work.is_dir()  # what a SIGKILL leaves behind

    out = recover(services, "self")
    assert out["interrupted"] == [victim.id] and len(out["retried"]) == 1
    assert list(s.work_root.iterdir()) == []
    assert list(s.previews_dir.iterdir()) == [] and not services.jobs.get(victim.id).has_preview
    assert state.is_dir(), "the queued retry resumes from these checkpoints"
    assert not old_state.exists()
    assert (outside / "keep").is_dir()
