"""Scale-out drills: many worker processes over PostgreSQL + Redis (and the SQLite default for
comparison), a cheap engine, 20 concurrent REST clients, and faults.

    studio bench scale --json [--jobs 1000] [--clients 20] [--workers 4] [--kills 20]
                              [--baseline-jobs 200] [--only load|faults|sqlite]

Real servers from the Debian packages (``bench.backends``: throwaway PostgreSQL cluster and
redis-server on loopback), a real web process (``studio serve --no-worker``) taking the submits
over HTTP, and ``studio worker`` processes with separate scratch dirs sharing the database,
queue and asset root. The engine is ``scale-steps``: the test engine's steps (sleeps, standing in
for GPU time) with an output image unique to each job, so orphaned files would show.

* load: N jobs from C clients → completed, lost, duplicated, submit p50/p99, jobs/s with W
  workers and with 1 worker (on ``--baseline-jobs``), ``scaling_4_workers`` = the ratio.
* faults: the same load while workers are killed -9 at random (``--kills`` times, each restarted
  at once), PostgreSQL restarted once (immediate stop: a crash) and Redis restarted once (no
  persistence: every queued message is lost) → stuck_running, lost, duplicated, orphan_files,
  requeue_p95_s (kill → the killed job's linked retry is queued).
* sqlite: the load on the single-machine default (one data dir, SQLite files, W worker processes).

A job is *lost* when neither it nor any of its linked retries completed; *duplicated* when more
than one of them completed (or a job row was claimed twice). Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from PIL import Image

from bench.fake_engines import COLORS, StepEngine, StepParams
from bench.harness import TEST_ENGINES
from engines.base import Artifact, EngineContext, EngineResult

ENGINES = TEST_ENGINES + ",scale-steps=bench.scale:ScaleEngine"
LEASE_S = 4.0
HEARTBEAT_S = 0.5


class ScaleEngine(StepEngine):
    """The test engine's steps, then one PNG whose pixels encode the prompt: every job's output
    is a different content-addressed file."""

    name = "scale-steps"
    title = "Scale steps"
    description = "Sleeps per step, then writes one image unique to its prompt (scale bench engine)."

    def run(self, params: StepParams, ctx: EngineContext) -> EngineResult:
        import hashlib

        for i in range(params.steps):
            ctx.check_cancelled()
            time.sleep(params.step_s)
            ctx.progress(i + 1, params.steps, f"step {i + 1}/{params.steps}")
        seed = hashlib.sha256(params.prompt.encode()).digest()
        img = Image.new("RGB", (8, 8), COLORS[params.color])
        img.putdata([tuple(seed[(3 * k + c) % 32] for c in range(3)) for k in range(64)])
        p = ctx.work_dir / "out.png"
        img.save(p)
        return EngineResult([Artifact(p, "image", "image/png", {"prompt": params.prompt})], {"steps": params.steps})


def _utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


class Cluster:
    """A web process (submits) plus worker processes, all sharing one deployment's URLs."""

    def __init__(self, root: Path, env_extra: dict[str, str], workers: int, shared_data: bool) -> None:
        from bench.backends import WorkerProcess
        from bench.harness import StudioProcess, free_port, studio_env

        self.root = root
        self.env = studio_env({"STUDIO_EXTRA_ENGINES": ENGINES, "STUDIO_HEARTBEAT_S": str(HEARTBEAT_S),
                               "STUDIO_STALE_AFTER_S": str(LEASE_S), "STUDIO_RECOVER_EVERY_S": "1",
                               "STUDIO_CLAIM_POLL_S": "0.5", "STUDIO_MAX_AUTO_RETRIES": "5", **env_extra})
        self.shared_data = shared_data
        self.web = StudioProcess(root / "web", free_port(), ["--no-worker"], env=self.env)
        self._worker_cls = WorkerProcess
        self.workers: list[Any] = []
        for i in range(workers):
            self.workers.append(self._spawn(i))
        for w in self.workers:
            w.ready()

    def _spawn(self, i: int) -> Any:
        if self.shared_data:  # the single-machine default: one data dir
            return self._worker_cls(self.root / "web", self.env)
        # another "machine": its own scratch dir and host name, so only its lease can say it died
        return self._worker_cls(self.root / f"host{i}", self.env | {"STUDIO_WORKER_HOST": f"sim-host{i}"})

    def respawn(self, i: int) -> Any:
        self.workers[i] = self._spawn(i)
        return self.workers[i]

    def stop(self) -> None:
        for w in self.workers:
            w.stop()
        self.web.stop()


def _submit_all(url: str, n: int, clients: int, params: dict[str, Any], tag: str) -> tuple[list[str], list[float], int]:
    import httpx

    ids: list[str] = []
    lat: list[float] = []
    retries = [0]
    lock = threading.Lock()
    counter = iter(range(n))

    def client(c: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            while True:
                with lock:
                    k = next(counter, None)
                if k is None:
                    return
                body = {"engine": "scale-steps", "params": params | {"prompt": f"{tag} job {k}"}}
                for attempt in range(200):  # a database restart: 5xx until it is back
                    t0 = time.perf_counter()
                    try:
                        r = http.post("/api/v1/jobs", json=body)
                    except httpx.HTTPError:
                        r = None
                    dt = time.perf_counter() - t0
                    if r is not None and r.status_code == 201:
                        with lock:
                            ids.append(r.json()["id"])
                            lat.append(dt)
                        break
                    with lock:
                        retries[0] += 1
                    time.sleep(0.1)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return ids, lat, retries[0]


def _audit(db: Any, roots: list[str], assets_dir: Path | None) -> dict[str, Any]:
    from sqlalchemy import func, select

    from storage.models import Asset, Job

    with db.session() as s:
        rows = s.execute(select(Job.id, Job.retried_from, Job.status, Job.attempts, Job.created_at,
                                Job.finished_at, Job.started_at)).all()
        per_job_assets = dict(s.execute(select(Asset.job_id, func.count()).group_by(Asset.job_id)).all())
        shas = set(s.scalars(select(Asset.sha256)))
    kids: dict[str, list[Any]] = {}
    by_id = {r.id: r for r in rows}
    for r in rows:
        if r.retried_from:
            kids.setdefault(r.retried_from, []).append(r)
    completed = lost = duplicated = 0
    for root in roots:
        chain, todo = [], [by_id[root]]
        while todo:
            j = todo.pop()
            chain.append(j)
            todo += kids.get(j.id, [])
        done = [j for j in chain if j.status == "completed"]
        completed += bool(done)
        lost += not done
        duplicated += len(done) > 1 or any(j.attempts > 1 or per_job_assets.get(j.id, 0) > 1 for j in chain)
    out: dict[str, Any] = {"completed": completed, "lost": lost, "duplicated": duplicated,
                           "stuck_running": sum(r.status == "running" for r in rows),
                           "still_queued": sum(r.status == "queued" for r in rows),
                           "job_rows": len(rows), "interrupted_rows": sum(r.id in kids for r in rows)}
    finished = [r.finished_at for r in rows if r.status == "completed" and r.finished_at]
    created = [by_id[r].created_at for r in roots]
    if finished and created:
        span = (max(finished) - min(created)).total_seconds()
        out["wall_s"] = round(span, 2)
        out["jobs_per_s"] = round(completed / span, 2) if span > 0 else None
    if assets_dir is not None:
        files = [f for sub in assets_dir.iterdir() if sub.is_dir() and sub.name != ".tmp" for f in sub.iterdir()]
        tmp = list((assets_dir / ".tmp").iterdir()) if (assets_dir / ".tmp").exists() else []
        out["orphan_files"] = sum(f.name not in shas for f in files) + len(tmp)
        out["asset_files"] = len(files)
    out["_by_id"] = by_id
    out["_kids"] = kids
    return out


def _settle(db: Any, roots: list[str], timeout: float) -> float:
    """Wait until no job is queued or running (or timeout); returns seconds waited."""
    from sqlalchemy import func, select

    from storage.models import Job

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            with db.session() as s:
                busy = s.scalar(select(func.count()).select_from(Job).where(Job.status.in_(("queued", "running"))))
        except Exception:  # noqa: BLE001 - the database may be restarting
            busy = 1
        if busy == 0:
            break
        time.sleep(0.5)
    return time.monotonic() - t0


def _clean(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if not k.startswith("_")}


def run_load(root: Path, deployment: dict[str, str] | None, *, jobs: int, clients: int, workers: int,
             params: dict[str, Any], faults: dict[str, Any] | None = None) -> dict[str, Any]:
    """One drill on one deployment (None = the SQLite default in one data dir)."""
    from storage.db import Database

    env_extra = {} if deployment is None else {
        "STUDIO_DATABASE_URL": deployment["db"], "STUDIO_QUEUE_URL": deployment["queue"],
        "STUDIO_ASSETS_DIR": str(root / "shared-assets")}
    cluster = Cluster(root, env_extra, workers, shared_data=deployment is None)
    db = Database(deployment["db"] if deployment else root / "web" / "studio.db")
    assets_dir = root / "shared-assets" if deployment else root / "web" / "assets"
    kills: list[dict[str, Any]] = []
    stop_faults = threading.Event()
    fault_log: list[str] = []

    def chaos() -> None:
        from sqlalchemy import select

        from storage.models import Job

        rng = random.Random(7)
        n_kills, period = faults["kills"], faults["period_s"]
        restart_db_at, restart_q_at = n_kills // 3, (2 * n_kills) // 3
        for k in range(n_kills):
            if stop_faults.wait(period * rng.uniform(0.6, 1.4)):
                return
            # a random busy worker (killing one that is still starting up proves little)
            try:
                with db.session() as s:
                    running = list(s.execute(select(Job.id, Job.worker_id).where(Job.status == "running")))
            except Exception as e:  # noqa: BLE001 - the database may be restarting
                fault_log.append(f"running jobs unknown: {type(e).__name__}")
                running = []
            busy = [i for i, w in enumerate(cluster.workers)
                    if any(f":{w.pid}:worker:" in (wid or "") for _, wid in running)]
            i = rng.choice(busy) if busy else rng.randrange(len(cluster.workers))
            w = cluster.workers[i]
            victims = [jid for jid, wid in running if f":{w.pid}:worker:" in (wid or "")]
            t = _utcnow()
            w.kill()
            kills.append({"at": t, "pid": w.pid, "jobs": victims})
            cluster.respawn(i)
            if k == restart_db_at:
                fault_log.append(f"postgres restart at {_utcnow().isoformat()}")
                faults["pg"].restart(1.0)
            if k == restart_q_at:
                fault_log.append(f"redis restart at {_utcnow().isoformat()}")
                faults["redis"].restart(1.0)

    try:
        chaos_t = threading.Thread(target=chaos, daemon=True) if faults else None
        t0 = time.perf_counter()
        if chaos_t:
            chaos_t.start()
        ids, lat, retries = _submit_all(cluster.web.url, jobs, clients, params, root.name)
        submit_s = time.perf_counter() - t0
        if chaos_t:
            # keep killing while the backlog drains, then let it settle
            while chaos_t.is_alive() and _busy(db):
                chaos_t.join(1.0)
            stop_faults.set()
            chaos_t.join(120)
        settle_s = _settle(db, ids, timeout=600)
        audit = _audit(db, ids, assets_dir)
    finally:
        stop_faults.set()
        cluster.stop()
    out = _clean(audit) | {"jobs": jobs, "clients": clients, "workers": workers,
                           "submit_p50_ms": round(statistics.median(lat) * 1000, 1) if lat else None,
                           "submit_p99_ms": round(_pct(lat, 0.99) * 1000, 1) if lat else None,
                           "submit_retries": retries, "submit_s": round(submit_s, 1), "settle_s": round(settle_s, 1)}
    if faults:
        by_id, kids = audit["_by_id"], audit["_kids"]
        delays = []
        for k in kills:
            for jid in k["jobs"]:
                j = by_id.get(jid)
                if j is None:
                    continue
                if kids.get(jid):  # its linked retry was queued
                    delays.append((min(c.created_at for c in kids[jid]) - k["at"]).total_seconds())
                elif j.status == "failed" and j.finished_at:
                    delays.append((j.finished_at - k["at"]).total_seconds())
        out |= {"kills": len(kills), "killed_running_jobs": sum(len(k["jobs"]) for k in kills),
                "requeue_p50_s": round(_pct(delays, 0.5), 2) if delays else None,
                "requeue_p95_s": round(_pct(delays, 0.95), 2) if delays else None,
                "requeue_max_s": round(max(delays), 2) if delays else None,
                "requeue_s": sorted(round(d, 2) for d in delays),
                "restarts": fault_log, "lease_s": LEASE_S}
    db.dispose()
    return out


def _busy(db: Any) -> bool:
    from sqlalchemy import func, select

    from storage.models import Job

    try:
        with db.session() as s:
            return bool(s.scalar(select(func.count()).select_from(Job).where(Job.status.in_(("queued", "running")))))
    except Exception:  # noqa: BLE001
        return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="studio bench scale")
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--baseline-jobs", type=int, default=200, help="jobs for the 1-worker jobs/s baseline")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--step-s", type=float, default=0.05, help="seconds per step (stands in for GPU time)")
    ap.add_argument("--only", choices=["load", "faults", "sqlite"], action="append", default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    from bench.backends import Postgres, Redis, missing

    parts = args.only or ["load", "faults", "sqlite"]
    params = {"steps": args.steps, "step_s": args.step_s, "images": 0}
    result: dict[str, Any] = {"engine": "scale-steps", "params": params, "lease_s": LEASE_S,
                              "heartbeat_s": HEARTBEAT_S}
    need = {"load", "faults"} & set(parts)
    if need and missing():
        print(json.dumps({"error": f"needs {' and '.join(missing())}: sudo apt-get install -y {' '.join(missing())}"}))
        return 1
    with tempfile.TemporaryDirectory(prefix="studio-scale-") as td:
        root = Path(td)
        pg = Postgres() if need else None
        rd = Redis() if need else None
        try:
            if "load" in parts:
                dep = {"db": pg.new_database(), "queue": rd.url}
                rd.flush()
                one = run_load(root / "load1", dep, jobs=args.baseline_jobs, clients=args.clients, workers=1,
                               params=params)
                dep = {"db": pg.new_database(), "queue": rd.url}
                rd.flush()
                many = run_load(root / "load", dep, jobs=args.jobs, clients=args.clients, workers=args.workers,
                                params=params)
                many["jobs_per_s_1_worker"] = one.get("jobs_per_s")
                many["baseline_1_worker"] = {k: one.get(k) for k in ("jobs", "completed", "lost", "jobs_per_s")}
                if one.get("jobs_per_s") and many.get("jobs_per_s"):
                    many[f"scaling_{args.workers}_workers"] = round(many["jobs_per_s"] / one["jobs_per_s"], 2)
                result["load_postgres_redis"] = many
            if "faults" in parts:
                dep = {"db": pg.new_database(), "queue": rd.url}
                rd.flush()
                result["faults_postgres_redis"] = run_load(
                    root / "faults", dep, jobs=args.jobs, clients=args.clients, workers=args.workers, params=params,
                    faults={"kills": args.kills, "period_s": max(1.0, args.jobs * (args.steps * args.step_s + 0.25)
                                                                 / args.workers / (args.kills + 2)),
                            "pg": pg, "redis": rd})
            if "sqlite" in parts:
                result["load_sqlite_default"] = run_load(root / "sqlite", None, jobs=args.jobs, clients=args.clients,
                                                         workers=args.workers, params=params)
        finally:
            if pg:
                pg.close()
            if rd:
                rd.close()
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
