"""The huey transport. It carries job ids only; the jobs table is the truth.

One ``SqliteHuey`` file per data dir (kept apart from studio.db to avoid lock fights).
The task body is bound at worker start (``bind``), so the web process can enqueue
without loading any engine code.
"""
from __future__ import annotations

from typing import Callable

from huey import SqliteHuey

from studio.config import Settings

TASK_NAME = "studio.run_job"


class JobQueue:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.huey = SqliteHuey(name="studio", filename=str(settings.queue_path), results=False,
                               journal_mode="wal", timeout=30, utc=True)
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

    def consumer(self, workers: int):  # noqa: ANN201
        poll = self.settings.poll_s
        return self.huey.create_consumer(workers=workers, worker_type="thread", periodic=False,
                                         initial_delay=poll, backoff=1.0, max_delay=poll,
                                         check_worker_health=True)
