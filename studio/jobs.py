"""Job service: submit, inspect, cancel and retry jobs; the jobs table is the truth."""
from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import ValidationError
from sqlalchemy import func, select, update

from engines import registry
from engines.base import INPUT_FILE_MARK, ModelNotFound
from storage.db import Database
from storage.models import JOB_STATUSES, TERMINAL, Adapter, Asset, Job, utcnow
from studio.assets import AssetService, new_id, visible
from studio.auth import LOCAL, acting_as, viewer
from studio.dto import AssetDTO, JobDTO
from studio.errors import Conflict, InvalidParams, NotFound, StudioError, UploadRejected
from studio.model_manager import ModelManager
from studio.queue import JobQueue

Origin = Literal["api", "cli", "ui"]
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
        return self.get(job.id)

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
        assert self.queue is not None
        task_id = self.queue.enqueue(job_id, priority)
        with self.db.session() as s:
            s.execute(update(Job).where(Job.id == job_id).values(queue_task_id=task_id))

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
            dead = [j for j in running if not alive(j.worker_id or "") or (j.heartbeat_at or j.started_at or now) < cutoff]
            for j in dead:
                n = s.execute(update(Job).where(Job.id == j.id, Job.status == "running").values(
                    status="failed", error_type="interrupted", finished_at=now,
                    error_message=f"worker {j.worker_id} stopped while running this job",
                    message="interrupted")).rowcount
                if n:
                    interrupted.append(j.id)
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
