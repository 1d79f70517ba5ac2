"""Job service: submit, inspect, cancel and retry jobs; the jobs table is the truth."""
from __future__ import annotations

import json
import logging
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import ValidationError
from sqlalchemy import case, delete, func, select, update
from sqlalchemy.orm import aliased

from engines import registry
from engines.base import INPUT_FILE_MARK, ModelNotFound
from storage.db import Database
from storage.models import JOB_STATUSES, TERMINAL, Adapter, Asset, Job, Worker, utcnow
from studio.assets import AssetService, new_id, visible
from studio.auth import LOCAL, acting_as, viewer
from studio.dto import AssetDTO, JobDTO
from studio.errors import Conflict, InvalidParams, NotFound, StudioError, UploadRejected
from studio.model_manager import ModelManager
from studio.queue import JobQueue

log = logging.getLogger("studio.jobs")
Origin = Literal["api", "cli", "ui"]
FAIRNESS_WINDOW_S = 3600.0  # "recently served" for the per-user/per-origin fairness rule
WORKER_FORGET_S = 24 * 3600.0  # rows of workers stopped or silent this long are dropped
CALLER = object()  # submit(owner_id=CALLER): the job belongs to whoever is asking


def _field_name(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "params"


def validate_params(engine_name: str, params: dict[str, Any]) -> Any:
    """Validate against the engine's params model; raise InvalidParams naming each field."""
    try:
        engine = registry.get(engine_name)
    except KeyError as e:
        raise InvalidParams([{"field": "engine", "message": str(e)}]) from None
    if not isinstance(params, dict):
        raise InvalidParams([{"field": "params", "message": "must be an object"}])
    check_param_sizes(params)
    try:
        return engine.params_model.model_validate(params)
    except ValidationError as e:
        errs = e.errors()
        out = [{"field": _field_name(err["loc"])[:120], "message": str(err["msg"])[:300]} for err in errs[:MAX_ERRORS]]
        if len(errs) > MAX_ERRORS:
            out.append({"field": "params", "message": f"... and {len(errs) - MAX_ERRORS} more errors"})
        raise InvalidParams(out) from None


MAX_ERRORS = 20
MAX_PARAM_KEYS = 200  # no engine has more; unknown keys are refused anyway
MAX_STRING = 4096  # a prompt; longer text is a mistake or an attack
MAX_ITEMS = 1024
MAX_DEPTH = 8


def check_param_sizes(params: dict[str, Any]) -> None:
    """Refuse oversized params before validation, so cost stays bounded whatever is sent
    (200,000 unknown keys or a 16 MB string would otherwise be parsed, reported and stored)."""
    if len(params) > MAX_PARAM_KEYS:
        raise InvalidParams([{"field": "params", "message": f"{len(params)} keys (limit {MAX_PARAM_KEYS})"}])

    def walk(v: Any, path: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise InvalidParams([{"field": path, "message": f"nested deeper than {MAX_DEPTH} levels"}])
        if isinstance(v, str) and len(v) > MAX_STRING:
            raise InvalidParams([{"field": path, "message": f"text of {len(v)} characters (limit {MAX_STRING})"}])
        if isinstance(v, (list, tuple)):
            if len(v) > MAX_ITEMS:
                raise InvalidParams([{"field": path, "message": f"{len(v)} items (limit {MAX_ITEMS})"}])
            for i, x in enumerate(v):
                walk(x, f"{path}.{i}", depth + 1)
        elif isinstance(v, dict):
            if len(v) > MAX_ITEMS:
                raise InvalidParams([{"field": path, "message": f"{len(v)} keys (limit {MAX_ITEMS})"}])
            for k, x in v.items():
                walk(x, f"{path}.{str(k)[:40]}", depth + 1)

    for k, v in params.items():
        walk(v, str(k)[:40], 1)


def input_fields(engine_name: str) -> dict[str, tuple[str | None, list[str]]]:
    """Params that name input files: field -> (key inside list items or None, accepted kinds).
    Covers a plain field and a list of objects one of whose keys is a file (e.g. adapters)."""
    schema = registry.get(engine_name).params_model.model_json_schema()
    defs = schema.get("$defs", {})
    out: dict[str, tuple[str | None, list[str]]] = {}
    for name, prop in schema.get("properties", {}).items():
        for c in [prop] + list(prop.get("anyOf", [])):
            if c.get("format") == INPUT_FILE_MARK:
                out[name] = (None, list(prop.get("x-asset-kinds") or c.get("x-asset-kinds") or []))
        ref = (prop.get("items") or {}).get("$ref", "")
        item = defs.get(ref.split("/")[-1], {}) if ref else {}
        for key, sub in item.get("properties", {}).items():
            if sub.get("format") == INPUT_FILE_MARK:
                out[name] = (key, list(sub.get("x-asset-kinds") or []))
    return out


class JobService:
    def __init__(self, db: Database, queue: JobQueue | None, assets: AssetService, max_auto_retries: int = 1,
                 models: ModelManager | None = None) -> None:
        self.db = db
        self.models = models
        self.queue = queue
        self.assets = assets
        self.max_auto_retries = max_auto_retries
        # set by the process that supervises the worker (studio serve): its status() dict
        self.worker_status: Callable[[], dict[str, Any]] | None = None

    # -- submit --------------------------------------------------------------------------
    def submit(self, engine: str, params: dict[str, Any], *, priority: int = 0, origin: Origin = "cli",
               enqueue: bool = True, retried_from: str | None = None, auto_retry: bool = False,
               owner_id: Any = CALLER) -> JobDTO:
        """Validate, resolve input files to assets, store the job, then enqueue its id.

        Invalid params raise InvalidParams and store nothing. ``origin`` says who is asking:
        web routes pass "api"/"ui"; the default "cli" is for in-process callers (CLI, benches).
        From the CLI, an input field
        may be a local path: it is validated and ingested as an asset first; from the web,
        inputs must be assets the caller may read and models must not be paths.
        The job belongs to the caller (``viewer()``) unless ``owner_id`` is given (retries).
        """
        who = viewer()
        if owner_id is CALLER and not who.authenticated:
            raise StudioError("not signed in")
        owner: str | None = who.user_id if owner_id is CALLER else owner_id
        model = validate_params(engine, params)
        data = model.model_dump(mode="json")
        for name, (key, kinds) in input_fields(engine).items():
            value = data.get(name)
            if value in (None, "", []):
                continue
            if key is None:
                data[name] = self._resolve_input(name, str(value), kinds, origin, owner)
            else:
                data[name] = [item | {key: self._resolve_input(f"{name}.{i}.{key}", str(item[key]), kinds, origin,
                                                                     owner)}
                              for i, item in enumerate(value)]
                if "adapter" in kinds:  # show library names in metadata
                    with self.db.session() as s:
                        for item in data[name]:
                            if not item.get("name"):
                                row = s.scalar(select(Adapter).where(Adapter.asset_id == item[key]))
                                if row is not None:
                                    item["name"] = row.name
        if self.models is not None:
            for name in registry.get(engine).model_params:
                try:
                    self.models.resolve(data.get(name), allow_paths=origin == "cli")
                except ModelNotFound as e:
                    raise InvalidParams([{"field": name, "message": str(e)}]) from None
        job = Job(id=new_id(), engine=engine, params=data, status="queued", priority=priority,
                  retried_from=retried_from, auto_retry=auto_retry, result_meta={}, owner_id=owner, origin=origin)
        with self.db.session() as s:
            s.add(job)
        if enqueue and self.queue is not None:
            self._enqueue(job.id, priority)
        try:
            return self.get(job.id)
        except Exception:  # noqa: BLE001 - stored already: a failed re-read must not make the client submit twice
            log.warning("job %s stored; re-reading it failed", job.id, exc_info=True)
            return JobDTO.of(job, [])

    def _resolve_input(self, field: str, value: str, kinds: list[str], origin: Origin, owner: str | None) -> str:
        """An input is an asset the job's owner may read (else: no such asset, whoever owns it)."""
        def readable(a: Asset | None) -> Asset | None:
            return a if a is not None and (owner is None or a.owner_id == owner) else None

        with self.db.session() as s:
            asset = readable(s.get(Asset, value[:64]))
            if asset is None and "adapter" in kinds:  # a library adapter by id or name
                lib = s.get(Adapter, value[:64]) or s.scalar(select(Adapter).where(Adapter.name == value))
                asset = readable(s.get(Asset, lib.asset_id)) if lib is not None else None
                value = asset.id if asset is not None else value
            kind = asset.kind if asset else None
        if asset is None:
            p = Path(value).expanduser()
            if origin != "cli" or not p.exists():
                raise InvalidParams([{"field": field, "message": f"no asset with id {value!r}"
                                      + (" and no such local file" if origin == "cli" else "")}])
            try:
                if p.is_dir():
                    dto = self._ingest_dir(p, owner)
                else:
                    dto = self.assets.ingest_path(p, owner_id=owner)
            except UploadRejected as e:
                raise InvalidParams([{"field": field, "message": str(e)}]) from None
            value, kind = dto.id, dto.kind
        if kinds and kind not in kinds:
            raise InvalidParams([{"field": field, "message": f"asset is a {kind}, expected {' or '.join(kinds)}"}])
        return value

    def _ingest_dir(self, folder: Path, owner: str | None) -> AssetDTO:
        """A local folder (e.g. posed images) travels as a zip asset."""
        import tempfile
        import zipfile

        with tempfile.TemporaryDirectory(dir=self.assets.files.tmp) as td:
            zpath = Path(td) / f"{folder.name}.zip"
            with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as z:
                for f in sorted(folder.rglob("*")):
                    if f.is_file():
                        z.write(f, f.relative_to(folder).as_posix())
            return self.assets.ingest_path(zpath, owner_id=owner)

    def _enqueue(self, job_id: str, priority: int) -> None:
        """Ring the queue for a stored job. The row is the truth: with the queue unreachable (a
        Redis restart) the job stays queued, and idle workers and recovery find it anyway."""
        assert self.queue is not None
        try:
            task_id = self.queue.enqueue(job_id, priority)
        except Exception as e:  # noqa: BLE001 - transport down; the job is safe in the database
            log.warning("could not enqueue job %s (%s: %s); workers will find it in the database",
                        job_id, type(e).__name__, str(e)[:200])
            return
        try:  # the task id only serves revoke; a failure here must not fail a stored, enqueued job
            with self.db.session() as s:
                s.execute(update(Job).where(Job.id == job_id).values(queue_task_id=task_id))
        except Exception as e:  # noqa: BLE001
            log.warning("job %s: task id not recorded (%s)", job_id, type(e).__name__)

    # -- claims and leases (workers) -----------------------------------------------------
    def claim(self, job_id: str, worker_id: str, lease_s: float) -> str | None:
        """Claim one queued job atomically; returns the lease token, or None if not claimable."""
        token = uuid.uuid4().hex
        now = utcnow()
        with self.db.session() as s:
            n = s.execute(update(Job).where(Job.id == job_id, Job.status == "queued",
                                            Job.cancel_requested.is_(False))
                          .values(**self._claim_values(worker_id, token, now, lease_s))).rowcount
        return token if n == 1 else None

    @staticmethod
    def _claim_values(worker_id: str, token: str, now: Any, lease_s: float) -> dict[str, Any]:
        return dict(status="running", worker_id=worker_id, started_at=now, heartbeat_at=now, progress=0.0,
                    message="starting", lease_token=token, lease_expires_at=now + timedelta(seconds=lease_s),
                    attempts=Job.attempts + 1)

    def claim_next(self, worker_id: str, engines: "tuple[str, ...] | list[str] | None", lease_s: float,
                   tries: int = 8) -> tuple[str, str] | None:
        """Claim the job this worker should run next, atomically: (job id, lease token) or None.

        Order: priority first; then fairness between (owner, origin) groups: the group with the
        fewest running jobs, then the one served least recently (last start within the hour),
        so one user's batch of 1,000 cannot starve another user's single job, on any number of
        workers; then age. Only engines the worker runs. On PostgreSQL the candidate rows are
        locked with SKIP LOCKED so concurrent workers take different jobs without waiting; on
        SQLite writes are serialised. Either way the conditional UPDATE is what makes a claim
        exclusive: two workers never both move a job from queued to running.
        """
        now = utcnow()
        r = aliased(Job)
        owner = func.coalesce(r.owner_id, "")
        load = (select(owner.label("owner"), r.origin.label("origin"),
                       func.sum(case((r.status == "running", 1), else_=0)).label("running"),
                       func.max(r.started_at).label("last_start"))
                .where(r.started_at >= now - timedelta(seconds=FAIRNESS_WINDOW_S))
                .group_by(owner, r.origin).subquery())
        stmt = (select(Job.id)
                .outerjoin(load, (load.c.owner == func.coalesce(Job.owner_id, "")) & (load.c.origin == Job.origin))
                .where(Job.status == "queued", Job.cancel_requested.is_(False))
                .order_by(Job.priority.desc(), func.coalesce(load.c.running, 0).asc(),
                          load.c.last_start.asc().nulls_first(), Job.created_at.asc(), Job.id.asc())
                )
        if engines:
            stmt = stmt.where(Job.engine.in_(list(engines)))
        if self.db.engine.dialect.name == "postgresql":  # lock just the row we take; others skip it
            stmt = stmt.with_for_update(of=Job, skip_locked=True).limit(1)
        else:
            stmt = stmt.limit(tries)
        with self.db.session() as s:
            for job_id in s.scalars(stmt).all():
                token = uuid.uuid4().hex
                n = s.execute(update(Job).where(Job.id == job_id, Job.status == "queued",
                                                Job.cancel_requested.is_(False))
                              .values(**self._claim_values(worker_id, token, now, lease_s))).rowcount
                if n == 1:
                    return job_id, token
        return None

    def claimable(self, engines: "tuple[str, ...] | list[str] | None") -> tuple[str, int] | None:
        """A queued job one of ``engines`` could run (id, priority), or None: an idle worker's check."""
        stmt = select(Job.id, Job.priority).where(Job.status == "queued", Job.cancel_requested.is_(False)).limit(1)
        if engines:
            stmt = stmt.where(Job.engine.in_(list(engines)))
        with self.db.session() as s:
            row = s.execute(stmt).first()
        return (row[0], int(row[1])) if row else None

    def renew(self, leases: dict[str, str], lease_s: float) -> set[str]:
        """Extend the leases {job id: token} this worker holds; returns the job ids whose lease is
        gone (recovery took the job back, or it ended): their runs must stop and write nothing."""
        lost: set[str] = set()
        if not leases:
            return lost
        now = utcnow()
        with self.db.session() as s:
            for job_id, token in leases.items():
                n = s.execute(update(Job).where(Job.id == job_id, Job.lease_token == token, Job.status == "running")
                              .values(heartbeat_at=now, lease_expires_at=now + timedelta(seconds=lease_s))).rowcount
                if n == 0:
                    lost.add(job_id)
        return lost

    # -- workers -------------------------------------------------------------------------
    def register_worker(self, worker_id: str, *, host: str, pid: int, devices: list[str], engines: list[str],
                        threads: int) -> None:
        now = utcnow()
        with self.db.session() as s:
            s.merge(Worker(id=worker_id, host=host, pid=pid, devices=devices, engines=engines, threads=threads,
                           started_at=now, heartbeat_at=now, stopped_at=None))

    def worker_beat(self, worker_id: str, stopped: bool = False) -> None:
        now = utcnow()
        with self.db.session() as s:
            s.execute(update(Worker).where(Worker.id == worker_id).values(
                heartbeat_at=now, **({"stopped_at": now} if stopped else {})))

    def cluster(self, lease_s: float) -> dict[str, Any]:
        """Workers (engines, devices, what each runs, heartbeat age, state) and queue depth per
        engine: what ``studio status`` and the Queue tab show."""
        now = utcnow()
        with self.db.session() as s:
            rows = s.scalars(select(Worker).order_by(Worker.started_at.desc())).all()
            running = s.execute(select(Job.worker_id, Job.id, Job.engine, Job.progress)
                                .where(Job.status == "running")).all()
            depth = dict(s.execute(select(Job.engine, func.count()).where(Job.status == "queued")
                                   .group_by(Job.engine)).all())
            busy = dict(s.execute(select(Job.engine, func.count()).where(Job.status == "running")
                                  .group_by(Job.engine)).all())
        by_worker: dict[str, list[dict[str, Any]]] = {}
        for wid, jid, engine, progress in running:
            by_worker.setdefault(wid or "", []).append({"id": jid, "engine": engine, "progress": round(progress, 3)})
        workers = []
        for w in rows:
            age = (now - w.heartbeat_at).total_seconds()
            state = "stopped" if w.stopped_at else ("lost" if age > lease_s else "alive")
            if state != "alive" and (now - (w.stopped_at or w.heartbeat_at)).total_seconds() > 3600 \
                    and not by_worker.get(w.id):
                continue  # old history: not worth a line
            workers.append({"id": w.id, "host": w.host, "pid": w.pid, "devices": list(w.devices or []),
                            "engines": list(w.engines or []), "threads": w.threads, "state": state,
                            "heartbeat_age_s": round(age, 1), "started_at": w.started_at.isoformat() + "Z",
                            "running": by_worker.get(w.id, [])})
        engines = sorted(set(depth) | set(busy))
        return {"workers": workers,
                "queue": {e: {"queued": int(depth.get(e, 0)), "running": int(busy.get(e, 0))} for e in engines},
                "database": self.db.engine.dialect.name,
                "queue_transport": getattr(self.queue, "kind", None)}

    # -- queries -------------------------------------------------------------------------
    @staticmethod
    def _visible_job(s: Any, job_id: str) -> Job:
        """The job if the caller may see it; otherwise NotFound, as if it did not exist."""
        job = s.get(Job, str(job_id)[:64])
        if job is None or not viewer().owns(job.owner_id):
            raise NotFound(f"no job {str(job_id)[:64]}")
        return job

    def get(self, job_id: str) -> JobDTO:
        with self.db.session() as s:
            job = self._visible_job(s, job_id)
            return JobDTO.of(job, [AssetDTO.of(a) for a in job.assets])

    def list(self, status: str | None = None, limit: int = 100, offset: int = 0) -> list[JobDTO]:
        if status is not None and status not in JOB_STATUSES:
            raise StudioError(f"unknown status {status[:32]!r}; one of {', '.join(JOB_STATUSES)}")
        stmt = select(Job).order_by(Job.created_at.desc()).limit(limit).offset(offset)
        if status:
            stmt = stmt.where(Job.status == status)
        stmt = visible(stmt, Job)
        with self.db.session() as s:
            return [JobDTO.of(j, [AssetDTO.of(a) for a in j.assets]) for j in s.scalars(stmt)]

    def latest_active(self, engine: str | None = None) -> str | None:
        """The caller's newest queued or running job (of ``engine``): a reloaded page re-attaches to it."""
        stmt = visible(select(Job.id).where(Job.status.in_(("queued", "running"))), Job)
        if engine:
            stmt = stmt.where(Job.engine == engine)
        with self.db.session() as s:
            return s.scalar(stmt.order_by(Job.created_at.desc()).limit(1))

    def queue_position(self, job_id: str) -> int | None:
        """1 = next to start. Counts every queued job ahead (higher priority, or equal and older)."""
        with self.db.session() as s:
            job = self._visible_job(s, job_id)
            if job.status != "queued":
                return None
            ahead = s.scalar(select(func.count()).select_from(Job).where(
                Job.status == "queued", Job.id != job.id,
                (Job.priority > job.priority) | ((Job.priority == job.priority) & (Job.created_at < job.created_at))))
            return int(ahead or 0) + 1

    def counts(self) -> dict[str, int]:
        with self.db.session() as s:
            return dict(s.execute(visible(select(Job.status, func.count()), Job).group_by(Job.status)).all())

    def preview_path(self, job_id: str) -> Path | None:
        with self.db.session() as s:
            job = self._visible_job(s, job_id)
            return Path(job.preview_path) if job.preview_path else None

    def worker(self) -> dict[str, Any] | None:
        """The supervised worker: alive, restarts, last exit (e.g. 'SIGKILL'), last restart
        time; None where this process supervises none (``--no-worker``, CLI, tests)."""
        return self.worker_status() if self.worker_status is not None else None

    # -- control -------------------------------------------------------------------------
    def cancel(self, job_id: str) -> JobDTO:
        """Queued: canceled now and its message revoked. Running: flagged; the worker stops
        at its next step. Terminal: unchanged (409)."""
        with self.db.session() as s:
            job = self._visible_job(s, job_id)
            if job.status in TERMINAL:
                raise Conflict(f"job is already {job.status}")
            task_id = job.queue_task_id
            if job.status == "queued":
                n = s.execute(update(Job).where(Job.id == job_id, Job.status == "queued").values(
                    status="canceled", cancel_requested=True, finished_at=utcnow(), message="canceled")).rowcount
                if n == 0:  # claimed by a worker in between: fall through to a flag
                    s.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))
            else:
                s.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True, message="canceling…"))
        if task_id and self.queue is not None:
            self.queue.revoke(task_id)
        return self.get(job_id)

    def retry(self, job_id: str, *, auto: bool = False) -> JobDTO:
        """A new job with the same engine and params, linked to the old one."""
        with self.db.session() as s:
            job = self._visible_job(s, job_id)
            if job.status not in ("failed", "canceled"):
                raise Conflict(f"only failed or canceled jobs can be retried (this one is {job.status})")
            engine, params, priority = job.engine, dict(job.params), job.priority
            origin, owner = job.origin or "api", job.owner_id
        return self.submit(engine, params, priority=priority, origin=origin, retried_from=job_id,  # type: ignore[arg-type]
                           auto_retry=auto, owner_id=owner)

    def reproduce(self, asset_id: str) -> JobDTO:
        """Re-run what produced an asset: same engine, params and resolved seed. A batch is
        re-run whole, because batched math differs in the last bit from a batch of one; the
        image at the same index comes back byte-identical (same device and dtype)."""
        with self.db.session() as s:
            asset = s.get(Asset, str(asset_id)[:64])
            if asset is None or not viewer().owns(asset.owner_id):
                raise NotFound(f"no asset {str(asset_id)[:64]}")
            job = s.get(Job, asset.job_id) if asset.job_id else None
            meta = dict(asset.meta or {})
        params = meta.get("params")
        if job is None or not isinstance(params, dict):
            raise Conflict("this asset has no recorded generation parameters to reproduce")
        return self.submit(job.engine, dict(params), origin=job.origin or "api")  # type: ignore[arg-type]

    def auto_retry_depth(self, job_id: str) -> int:
        """How many automatic retries lead to this job (stops crash loops)."""
        depth = 0
        with self.db.session() as s:
            job = s.get(Job, job_id)
            while job is not None and job.auto_retry and job.retried_from:
                depth += 1
                job = s.get(Job, job.retried_from)
        return depth

    # -- recovery ------------------------------------------------------------------------
    def recover(self, *, alive: "callable[[str], bool]", stale_after_s: float) -> dict[str, list[str]]:
        """Fail running jobs whose worker is gone; re-enqueue queued jobs whose message is gone.

        ``alive(worker_id)`` answers for workers we can check directly (same host);
        otherwise a heartbeat older than ``stale_after_s`` means dead.
        """
        with acting_as(LOCAL):  # recovery is the system's work, whoever's jobs they are
            return self._recover(alive, stale_after_s)

    def _recover(self, alive: "callable[[str], bool]", stale_after_s: float) -> dict[str, list[str]]:
        now = utcnow()
        cutoff = now - timedelta(seconds=stale_after_s)
        interrupted, retried, requeued = [], [], []
        with self.db.session() as s:
            running = s.scalars(select(Job).where(Job.status == "running")).all()

            def why(j: Job) -> str | None:
                if not alive(j.worker_id or ""):
                    return "stopped"
                if j.lease_expires_at is not None and j.lease_expires_at < now:
                    return "lost its lease"
                if (j.heartbeat_at or j.started_at or now) < cutoff:
                    return "went silent"
                return None

            for j in running:
                reason = why(j)
                if reason is None:
                    continue
                # as read: a lease renewed meanwhile keeps its job
                cond = [Job.id == j.id, Job.status == "running"]
                cond.append(Job.lease_token == j.lease_token if j.lease_token else Job.lease_token.is_(None))
                if reason == "lost its lease":
                    cond.append(Job.lease_expires_at < now)
                elif reason == "went silent":
                    cond.append(func.coalesce(Job.heartbeat_at, Job.started_at) < cutoff)
                if j.cancel_requested:  # the user canceled it; the worker died before it saw the flag
                    s.execute(update(Job).where(*cond).values(
                        status="canceled", finished_at=now, lease_token=None, message="canceled"))
                    continue  # canceled means canceled: never retried
                n = s.execute(update(Job).where(*cond).values(
                    status="failed", error_type="interrupted", finished_at=now, lease_token=None,
                    error_message=f"worker {j.worker_id} {reason} while running this job",
                    message="interrupted")).rowcount
                if n:
                    interrupted.append(j.id)
            s.execute(delete(Worker).where(func.coalesce(Worker.stopped_at, Worker.heartbeat_at)
                                           < now - timedelta(seconds=WORKER_FORGET_S)))
        for job_id in interrupted:
            job = self.get(job_id)
            try:
                idem = registry.get(job.engine).idempotent
            except (KeyError, ImportError):
                idem = False
            if idem and self.queue is not None and self.auto_retry_depth(job_id) < self.max_auto_retries:
                retried.append(self.retry(job_id, auto=True).id)
        if self.queue is not None:
            pending = self.queue.pending_job_ids()
            with self.db.session() as s:
                queued = s.scalars(select(Job).where(Job.status == "queued").order_by(Job.created_at)).all()
                lost = [(j.id, j.priority) for j in queued if j.id not in pending]
            for job_id, prio in lost:
                self._enqueue(job_id, prio)
                requeued.append(job_id)
        return {"interrupted": interrupted, "retried": retried, "requeued": requeued}


def dumps(obj: Any) -> str:
    return json.dumps(obj, default=str)
