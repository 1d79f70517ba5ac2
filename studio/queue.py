"""The huey transport. It carries job ids only; the jobs table is the truth.

Default: one ``SqliteHuey`` file per data dir (kept apart from studio.db to avoid lock fights).
``STUDIO_QUEUE_URL=redis://…`` puts the same messages on Redis with ``PriorityRedisHuey``
(sorted set + BZPOPMIN: Redis ≥ 5, so Debian's 7.0 works; results are off, so nothing needs the
hash-field TTLs of Redis 7.4). A message is a doorbell: the worker that takes it claims the best
job it may run from the database (priority, fairness, its engines), so a message for a job is
not a promise that this worker runs that job, and a lost message loses nothing (idle workers
also look in the database, and recovery re-enqueues queued jobs that have no message).
The task body is bound at worker start (``bind``), so the web process can enqueue
without loading any engine code.
"""
from __future__ import annotations

import logging
from typing import Callable

from huey import PriorityRedisHuey, SqliteHuey

from studio.config import Settings

TASK_NAME = "studio.run_job"
log = logging.getLogger("studio.queue")


def make_huey(settings: Settings):  # noqa: ANN201
    url = settings.queue_url
    if not url or url.startswith("sqlite:///"):  # a huey SQLite file (default: queue.db in the data dir)
        path = url.removeprefix("sqlite:///") if url else str(settings.queue_path)
        return SqliteHuey(name="studio", filename=path, results=False, journal_mode="wal", timeout=30, utc=True)
    if url.startswith(("redis://", "rediss://", "unix://")):
        from redis import ConnectionPool

        # socket timeouts above huey's 1 s blocking read: a restarted or unreachable Redis raises
        # (the consumer backs off and reconnects) instead of hanging a worker thread
        pool = ConnectionPool.from_url(url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=10)
        return PriorityRedisHuey(name="studio", connection_pool=pool, results=False, utc=True, blocking=True,
                                 read_timeout=1)
    raise SystemExit(f"STUDIO_QUEUE_URL must be redis://… or sqlite:///PATH (unset: queue.db in the data dir); got {url.split(':')[0]}://…")


class JobQueue:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.huey = make_huey(settings)
        self.kind = "redis" if "redis" in settings.queue_url.split(":")[0] else "sqlite"
        self._runner: Callable[[str], None] | None = None

        @self.huey.task(name=TASK_NAME)
        def run_job(job_id: str) -> None:
            if self._runner is None:
                raise RuntimeError("job queue has no runner bound (not a worker process)")
            self._runner(job_id)

        self._task = run_job

    def bind(self, runner: Callable[[str], None]) -> None:
        self._runner = runner

    def enqueue(self, job_id: str, priority: int = 0) -> str:
        """Put a job id on the queue; returns the huey task id (for revoke)."""
        task = self._task.s(job_id, priority=priority)
        self.huey.enqueue(task)
        return task.id

    def revoke(self, task_id: str) -> None:
        self.huey.revoke_by_id(task_id, revoke_once=True)

    def pending_job_ids(self) -> set[str]:
        """Job ids whose message is still waiting in the queue."""
        return {t.args[0] for t in self.huey.pending() if t.name == self._task.name and t.args}

    def pending_count(self) -> int:
        return int(self.huey.pending_count())

    def consumer(self, workers: int):  # noqa: ANN201
        poll = self.settings.poll_s
        return self.huey.create_consumer(workers=workers, worker_type="thread", periodic=False,
                                         initial_delay=poll, backoff=1.0, max_delay=poll,
                                         check_worker_health=True)
