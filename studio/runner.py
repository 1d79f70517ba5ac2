"""Runs one job: claim it, give the engine a narrow context, store its artifacts.

The same runner serves the huey worker and ``studio run`` (in-process), so a CLI
job and a queued job take the same path from params to assets.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import threading
import time
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, TypeVar

from pydantic import ValidationError
from sqlalchemy import or_, select, update
from sqlalchemy.exc import DBAPIError

from engines import registry
from engines.base import Cancelled, EngineContext, EngineError, ProgressEvent, Throttle
from storage.files import atomic_write_bytes
from storage.models import Job, utcnow
from studio.assets import AssetService
from studio.config import Settings
from studio.jobs import JobService
from studio.model_manager import ModelManager

log = logging.getLogger("studio.runner")
T = TypeVar("T")


class Shutdown(Exception):
    """The worker is stopping; the job is interrupted, not canceled by the user."""


def resolve_device(pref: str) -> str:
    if pref != "auto":
        return pref
    try:
        import torch

        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
    except ImportError:
        pass
    return "cpu"


def resolve_dtype(pref: str, device: str) -> str:
    if pref != "auto":
        return pref
    return "float16" if device.startswith("cuda") else "float32"


class JobRunner:
    def __init__(self, settings: Settings, jobs: JobService, assets: AssetService, models: ModelManager,
                 worker_id: str, library: Any = None) -> None:
        self.library = library
        self.settings = settings
        self.jobs = jobs
        self.assets = assets
        self.models = models
        self.db = jobs.db
        self.worker_id = worker_id
        self.stopping = threading.Event()
        self.active: set[str] = set()
        self.leases: dict[str, str] = {}  # job id -> lease token: every write of a run names it (fencing)
        self.lost: set[str] = set()  # runs whose lease was taken back: they stop and write nothing
        self._lock = threading.Lock()
        self.device = resolve_device(settings.device)
        self.dtype = resolve_dtype(settings.dtype, self.device)
        self.engines: tuple[str, ...] = tuple(settings.engines)  # () = every engine

    # -- claim ---------------------------------------------------------------------------
    def _claim(self, job_id: str) -> bool:
        token = self.jobs.claim(job_id, self.worker_id, self.settings.lease_seconds)
        if token is None:
            return False
        with self._lock:
            self.leases[job_id] = token
        return True

    def _fence(self, job_id: str) -> list[Any]:
        """The WHERE clause of every write a run makes: its job, still under its lease."""
        token = self.leases.get(job_id)
        return [Job.id == job_id, Job.lease_token == token] if token else [Job.id == job_id]

    def _set(self, job_id: str, **values: Any) -> bool:
        with self.db.session() as s:
            return s.execute(update(Job).where(*self._fence(job_id)).values(**values)).rowcount == 1

    def _db_retry(self, fn: Callable[[], T], what: str) -> T:
        """Run a database write, retrying while the database is unreachable (a restart) for up
        to most of a lease; after that recovery owns the job anyway."""
        deadline = time.monotonic() + max(self.settings.lease_seconds * 0.8, 2.0)
        while True:
            try:
                return fn()
            except DBAPIError as e:
                if not (e.connection_invalidated or "connect" in str(e).lower() or "terminat" in str(e).lower()
                        or "closed" in str(e).lower()) or time.monotonic() > deadline:
                    raise
                log.warning("%s: database unavailable (%s); retrying", what, type(e.orig).__name__)
                time.sleep(0.5)

    # -- execute -------------------------------------------------------------------------
    def execute(self, job_id: str) -> str:
        """Run a queued job to a terminal status; returns that status ('skipped' if not claimable,
        'lost' if its lease was taken back while it ran: then it wrote nothing)."""
        if self.stopping.is_set() or not self._db_retry(lambda: self._claim(job_id), "claim"):
            return "skipped"
        return self._run(job_id)

    def run_next(self) -> tuple[str, str] | None:
        """Claim the best job this worker may run (priority, fairness, engines) and run it:
        (job id, final status), or None when there is nothing to claim."""
        if self.stopping.is_set():
            return None
        got = self._db_retry(lambda: self.jobs.claim_next(self.worker_id, self.engines or None,
                                                          self.settings.lease_seconds), "claim")
        if got is None:
            return None
        job_id, token = got
        with self._lock:
            self.leases[job_id] = token
        return job_id, self._run(job_id)

    def drain(self, _hint: str | None = None) -> int:
        """Run claimable jobs until there are none (a queue message is a doorbell). Returns how many ran."""
        n = 0
        while not self.stopping.is_set() and self.run_next() is not None:
            n += 1
        return n

    def _run(self, job_id: str) -> str:
        with self._lock:
            self.active.add(job_id)
        work = self.settings.work_root / job_id
        try:
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            return self._execute(job_id, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
            self._drop_preview(job_id)
            with self._lock:
                self.active.discard(job_id)
                self.leases.pop(job_id, None)
                self.lost.discard(job_id)

    def _drop_preview(self, job_id: str) -> None:
        """A preview only shows a running job (UI and /progress stop showing it at the end; the
        assets are the result), so it goes with the job: one file per job forever is unbounded."""
        try:
            (self.settings.previews_dir / f"{job_id}.png").unlink(missing_ok=True)
            if job_id not in self.lost:
                self._set(job_id, preview_path=None)
        except Exception:  # noqa: BLE001 - the job's verdict stands; the recovery sweep retries
            log.warning("could not drop the preview of job %s", job_id, exc_info=True)

    def _execute(self, job_id: str, work: Path) -> str:
        job = self.jobs.get(job_id)
        try:
            engine_cls = registry.get(job.engine)
            params = engine_cls.params_model.model_validate(job.params)
            ctx = self._context(job_id, work)
            t0 = time.perf_counter()
            result = engine_cls().run(params, ctx)
            ctx.check_cancelled()
            elapsed = time.perf_counter() - t0
        except Cancelled:
            if job_id in self.lost:
                log.warning("job %s: lease lost (recovery took it back); its run stopped and wrote nothing", job_id)
                return "lost"
            if self.stopping.is_set() and not self._cancel_requested(job_id):
                self._interrupt(job_id)
                return "failed"
            self._finish(job_id, "canceled", message="canceled")
            return "canceled"
        except EngineError as e:
            self._finish(job_id, "failed", error_type=e.error_type, error_message=_one_line(e))
            return "failed"
        except ValidationError as e:
            self._finish(job_id, "failed", error_type="invalid_params", error_message=_one_line(e))
            return "failed"
        except Exception as e:  # an engine bug or resource failure: keep the traceback
            etype = "out_of_memory" if "out of memory" in str(e).lower() else "exception"
            log.exception("job %s failed", job_id)
            self._finish(job_id, "failed", error_type=etype, error_message=f"{type(e).__name__}: {_one_line(e)}",
                         error_traceback=traceback.format_exc())
            return "failed"

        return self._db_retry(lambda: self._complete(job_id, job, work, result, elapsed), "completion")

    def _complete(self, job_id: str, job: Any, work: Path, result: Any, elapsed: float) -> str:
        """Files first (content-addressed, atomic), then rows and status in one transaction, under
        the lease: a run whose lease was taken back writes no rows and changes no status."""
        if job_id in self.lost or self.jobs.renew({job_id: self.leases[job_id]}, self.settings.lease_seconds):
            self.lost.add(job_id)
            log.warning("job %s: lease lost before its results were stored; dropping them", job_id)
            return "lost"
        with self.db.session() as s:
            rows = []
            for art in result.artifacts:
                path = Path(art.path)
                if not path.is_file() or work not in path.resolve().parents:
                    raise RuntimeError(f"engine {job.engine} returned an artifact outside its work dir: {path}")
                meta = dict(art.meta) | {"engine": job.engine, "job_id": job_id}
                rows.append(self.assets.record(s, path, filename=path.name, kind=art.kind, mime=art.mime,
                                               job_id=job_id, meta=meta, owner_id=job.owner_id))
            s.flush()
            if self.library is not None:  # adapters a job produced enter the library
                previews = [r.id for r in rows if r.kind == "image"]
                for r in rows:
                    if r.kind == "adapter":
                        self.library.add_from_job(s, r, job_id, previews)
            n = s.execute(update(Job).where(*self._fence(job_id), Job.status == "running").values(
                status="completed", progress=1.0, message=f"done in {elapsed:.1f}s", finished_at=utcnow(),
                result_meta=dict(result.meta) | {"seconds": round(elapsed, 3),
                                                                   "device": self.device, "dtype": self.dtype})).rowcount
            if n == 0:  # someone (recovery) already finalised it: keep their verdict, add no rows
                s.rollback()
                self.lost.add(job_id)
                return "lost"
        shutil.rmtree(self._state_dir(job_id), ignore_errors=True)  # checkpoints served their purpose
        return "completed"

    def _finish(self, job_id: str, status: str, **values: Any) -> bool:
        """A terminal status, under the lease (False: recovery had already finalised the job)."""
        def write() -> bool:
            with self.db.session() as s:
                return s.execute(update(Job).where(*self._fence(job_id), Job.status == "running").values(
                    status=status, finished_at=utcnow(), **values)).rowcount == 1

        return self._db_retry(write, f"finishing job {job_id}")

    def _interrupt(self, job_id: str) -> None:
        if not self._finish(job_id, "failed", error_type="interrupted", message="interrupted",
                            error_message="the worker was stopped while running this job"):
            return  # recovery finalised it (and retried it if it could): one retry, not two
        try:
            idem = registry.get(self.jobs.get(job_id).engine).idempotent
        except (KeyError, ImportError):
            idem = False
        if idem and self.jobs.auto_retry_depth(job_id) < self.jobs.max_auto_retries:
            self.jobs.retry(job_id, auto=True)

    def _cancel_requested(self, job_id: str) -> bool:
        with self.db.session() as s:
            job = s.get(Job, job_id)
            return bool(job and job.cancel_requested)

    # -- context -------------------------------------------------------------------------
    def _context(self, job_id: str, work: Path) -> EngineContext:
        throttle = Throttle(self.settings.progress_per_s)
        preview_dest = self.settings.previews_dir / f"{job_id}.png"
        check = {"t": 0.0, "v": False}

        def report(ev: ProgressEvent) -> None:
            final = ev.total > 0 and ev.step >= ev.total
            if not throttle.ready(force=final):
                return
            now = utcnow()
            values: dict[str, Any] = {"progress": ev.fraction, "message": ev.message or f"step {ev.step}/{ev.total}",
                                      "heartbeat_at": now,
                                      "lease_expires_at": now + timedelta(seconds=self.settings.lease_seconds)}
            if ev.preview is not None and Path(ev.preview).is_file():
                atomic_write_bytes(preview_dest, Path(ev.preview).read_bytes())
                values["preview_path"] = str(preview_dest)
            try:  # progress is best effort: a database restart must not fail the job
                if not self._set(job_id, **values):
                    self.lost.add(job_id)  # the lease is gone: stop at the next step check
            except DBAPIError as e:
                log.warning("job %s: progress not recorded (%s)", job_id, type(e.orig).__name__)

        def is_cancelled() -> bool:
            if self.stopping.is_set() or job_id in self.lost:
                return True
            now = time.monotonic()
            if now - check["t"] >= 0.05:  # a PK lookup at most 20×/s
                check["t"] = now
                try:
                    check["v"] = self._cancel_requested(job_id)
                except DBAPIError:  # database restarting: keep going, ask again later
                    pass
            return check["v"]

        def load_model(ref: str, key: str, build: Any) -> Any:
            return self.models.load(ref, key, build, self.device, self.dtype)

        return EngineContext(work_dir=work, device=self.device, dtype=self.dtype, report=report,
                             is_cancelled=is_cancelled, load_model=load_model, resolve_model=self.models.resolve,
                             resolve_input=self.assets.path, state_dir=self._state_dir(job_id),
                             extras={"adapter_cache_bytes": self.settings.adapter_cache_bytes})

    def _state_dir(self, job_id: str) -> Path:
        """Per-params persistent dir: a retry of the same job (same engine + params) finds the
        checkpoints of the interrupted run and resumes."""
        job = self.jobs.get(job_id)
        d = state_root(self.settings) / job.engine / state_key(job.engine, job.params)
        d.mkdir(parents=True, exist_ok=True)
        return d

    # -- heartbeat -----------------------------------------------------------------------
    def beat(self) -> set[str]:
        """Renew the leases of running jobs; a lease that is gone stops its run (returned)."""
        with self._lock:
            leases = {j: t for j, t in self.leases.items() if j in self.active}
        lost = self.jobs.renew(leases, self.settings.lease_seconds)
        with self._lock:
            lost &= set(self.leases)  # runs that ended meanwhile lost nothing
            self.lost |= lost
        if lost:
            log.warning("lease lost for %s: stopping those runs", sorted(lost))
        return lost


def state_root(settings: Settings) -> Path:
    return settings.data_dir / "state"


def state_key(engine: str, params: dict[str, Any]) -> str:
    """Jobs with the same engine and params share checkpoints (a retry resumes its original)."""
    return hashlib.sha256(json.dumps([engine, params], sort_keys=True).encode()).hexdigest()[:24]


STATE_KEEP_S = 7 * 24 * 3600.0  # a failed/canceled job's checkpoints wait this long for a manual retry
TEMP_KEEP_S = 60.0  # a preview temp file older than this belongs to a writer that died


def sweep_job_files(settings: Settings, db: Any, *, state: bool = True) -> dict[str, int]:
    """Delete the files of jobs that no longer run: their work dirs and previews (a worker
    killed with SIGKILL never ran its cleanup), and checkpoints no queued, running or recently
    failed job can resume from. Run after recovery has failed the dead workers' jobs.

    Only entries directly inside the work, previews and state areas are touched, and links
    are unlinked, never followed. Each area is listed before the jobs table is read, so a job
    that starts meanwhile is seen as running and keeps its files.
    """
    work = _entries(settings.work_root)
    previews = _entries(settings.previews_dir)
    keys: list[Path] = []  # state/<engine>/<key>
    stray: list[Path] = []  # anything else directly in state/
    if state:
        for engine_dir in _entries(state_root(settings)):
            if engine_dir.is_dir() and not engine_dir.is_symlink():
                keys += _entries(engine_dir)
            else:
                stray.append(engine_dir)
    cutoff = utcnow() - timedelta(seconds=STATE_KEEP_S)
    with db.session() as s:
        running = set(s.scalars(select(Job.id).where(Job.status == "running")))
        resumable = set()
        if keys:
            rows = s.execute(select(Job.engine, Job.params).where(or_(
                Job.status.in_(("queued", "running")),
                Job.status.in_(("failed", "canceled")) & (Job.finished_at >= cutoff))))
            resumable = {(engine, state_key(engine, dict(params or {}))) for engine, params in rows}
    out = {"work": 0, "previews": 0, "state": 0}
    for p in work:
        if p.name not in running:
            out["work"] += _remove(p)
    now = time.time()
    gone = []
    for p in previews:
        if p.name.startswith(".w-"):  # atomic_write_bytes temp file
            if _age(p, now) > TEMP_KEEP_S:
                out["previews"] += _remove(p)
        elif p.suffix == ".png" and p.stem not in running:
            out["previews"] += _remove(p)
            gone.append(p.stem)
    for i in range(0, len(gone), 500):
        with db.session() as s:
            s.execute(update(Job).where(Job.id.in_(gone[i:i + 500]), Job.status != "running")
                      .values(preview_path=None))
    out["state"] += sum(_remove(p) for p in stray)
    for k in keys:
        if (k.parent.name, k.name) not in resumable:
            out["state"] += _remove(k)
            try:
                k.parent.rmdir()  # the engine's folder, once empty
            except OSError:
                pass
    return out


def _entries(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def _age(p: Path, now: float) -> float:
    try:
        return now - p.lstat().st_mtime
    except OSError:
        return 0.0


def _remove(p: Path) -> int:
    """Remove one entry; a link is removed itself, whatever it points at."""
    try:
        if p.is_symlink() or not p.is_dir():
            p.unlink(missing_ok=True)
        else:
            shutil.rmtree(p)
        return 1
    except OSError as e:
        log.warning("could not remove %s: %s", p, e)
        return 0


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
