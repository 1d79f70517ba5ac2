"""``studio`` command line: serve, worker, run, jobs, db, bench, eval, models, train-embedded.

``run`` goes through the same services as the web UI (job row, runner, asset store),
in-process. Bad input exits 2 with one line on stderr, never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any, Callable

BENCHES = {
    "queue": "bench.queue_latency:main",
    "clockwork": "bench.clockwork:main",
    "t2i": "bench.t2i:main",
    "adapters": "bench.adapters:main",
    "splat": "bench.splat:main",
    "security": "bench.security:main",
    "personalize": "bench.personalize:main",
    "soak": "bench.soak:main",
    "relight": "bench.relight:main",
    "scale": "bench.scale:main",
    "video": "bench.video:main",
    "layout": "bench.layout:main",
}
EVALS = {
    "world": "engines.world.eval:main",
}


def _data_dir_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None, help="data directory (default: $STUDIO_DATA_DIR or ~/.studio)")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="studio", description="Local-first generative studio")
    sub = ap.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("serve", help="start web UI + API and a worker (same as launch.py)")
    add_serve_args(s)

    w = sub.add_parser("worker", help="run queue workers only")
    _data_dir_arg(w)
    w.add_argument("--workers", type=int, default=None, help="worker threads (default 1)")
    w.add_argument("--engines", default=None, metavar="NAME,NAME",
                   help="only run these engines, e.g. t2i,video-edit (default: every engine; $STUDIO_ENGINES)")
    w.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)

    r = sub.add_parser("run", help="run one job now and write its outputs to --out")
    r.add_argument("engine")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a parameter (repeatable)")
    r.add_argument("--params", default=None, help="JSON object of parameters (merged under --set)")
    r.add_argument("--out", default=".", help="directory for the output files")
    r.add_argument("--json", action="store_true", help="print the job as JSON")
    _data_dir_arg(r)

    j = sub.add_parser("jobs", help="list jobs")
    j.add_argument("--status", default=None)
    j.add_argument("--limit", type=int, default=20)
    j.add_argument("--json", action="store_true")
    _data_dir_arg(j)

    st = sub.add_parser("status", help="workers (engines, current job, heartbeat age) and queue depth per engine")
    st.add_argument("--json", action="store_true")
    _data_dir_arg(st)

    d = sub.add_parser("db", help="database maintenance")
    d.add_argument("action", choices=["upgrade", "current"])
    _data_dir_arg(d)

    m = sub.add_parser("models", help="registered models")
    m.add_argument("action", choices=["list", "register", "remove"])
    m.add_argument("name", nargs="?")
    m.add_argument("location", nargs="?")
    _data_dir_arg(m)

    u = sub.add_parser("users", help="accounts: add, list, passwd, token, revoke-sessions")
    u.add_argument("action", choices=["add", "list", "passwd", "token", "revoke-sessions"])
    u.add_argument("name", nargs="?")
    u.add_argument("--admin", action="store_true", help="with add: an administrator (sees everyone's work)")
    u.add_argument("--password-stdin", action="store_true",
                   help="read the password from standard input (default: generate one and print it once)")
    u.add_argument("--token-name", default="cli", help="with token: a label for the new API token")
    _data_dir_arg(u)

    for name, table in (("bench", BENCHES), ("eval", EVALS)):
        b = sub.add_parser(name, help=f"{name} NAME --json: print one JSON object")
        b.add_argument("name", choices=sorted(table))
        b.add_argument("rest", nargs=argparse.REMAINDER)

    t = sub.add_parser("train-embedded", help="train the embedded world models (see docs/embedded-world.md)")
    t.add_argument("rest", nargs=argparse.REMAINDER)
    c = sub.add_parser("train-clockwork", help="distil a Clockwork adaptor for a model (captions only)")
    c.add_argument("rest", nargs=argparse.REMAINDER)
    return ap


def add_serve_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=7860)
    _data_dir_arg(s)
    s.add_argument("--no-worker", action="store_true", help="do not start a worker process")
    s.add_argument("--workers", type=int, default=None)
    s.add_argument("--auth", choices=["auto", "on", "off"], default=None,
                   help="accounts: auto (default: on whenever others can reach the Studio), on, off (loopback only)")
    s.add_argument("--public-url", action="append", default=None, metavar="URL",
                   help="address others use, e.g. https://studio.example.com behind a reverse proxy (repeatable)")
    s.add_argument("--allowed-host", action="append", default=None, metavar="NAME",
                   help="another Host name to serve (e.g. the machine's LAN name)")
    s.add_argument("--share", action="store_true", help="open gradio's share tunnel (needs its frpc client)")
    s.add_argument("--share-server-address", default=None, metavar="HOST:PORT",
                   help="a self-hosted gradio share server")
    s.add_argument("--insecure-listen", action="store_true", help=argparse.SUPPRESS)


def fail(msg: str, code: int = 2) -> int:
    print(f"studio: {msg}", file=sys.stderr)
    return code


def parse_sets(engine: str, sets: list[str], base: dict[str, Any]) -> dict[str, Any]:
    """KEY=VALUE pairs typed by the engine's schema: strings stay strings, lists/objects are JSON."""
    from engines import registry

    props = registry.get(engine).params_model.model_json_schema().get("properties", {})
    params = dict(base)
    for item in sets:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"--set {item!r} is not KEY=VALUE")
        prop = props.get(key, {})
        types = {prop.get("type")} | {p.get("type") for p in prop.get("anyOf", [])}
        if types & {"array", "object"}:
            try:
                params[key] = json.loads(value)
            except json.JSONDecodeError:
                raise ValueError(f"--set {key}: expected JSON") from None
        elif "string" in types or not types - {None}:
            params[key] = value
        else:
            params[key] = value  # pydantic's lax mode turns "7" / "0.5" / "true" into numbers/bools
    return params


def cmd_run(args: argparse.Namespace) -> int:
    from studio.config import load
    from studio.errors import StudioError
    from studio.wiring import build, build_runner

    try:
        base = json.loads(args.params) if args.params else {}
        if not isinstance(base, dict):
            return fail("--params must be a JSON object")
        params = parse_sets(args.engine, args.set, base)
    except KeyError as e:
        return fail(str(e).strip('"'))
    except (ValueError, json.JSONDecodeError) as e:
        return fail(str(e))
    services = build(load(args.data_dir))
    try:
        job = services.jobs.submit(args.engine, params, origin="cli", enqueue=False)
    except StudioError as e:
        return fail(f"invalid params: {e}")
    runner = build_runner(services, role="cli")

    def on_sigint(*_: Any) -> None:
        print("studio: canceling…", file=sys.stderr)
        services.jobs.cancel(job.id)

    old = signal.signal(signal.SIGINT, on_sigint)
    try:
        status = runner.execute(job.id)
    finally:
        signal.signal(signal.SIGINT, old)
    done = services.jobs.get(job.id)
    if args.json:
        print(json.dumps(done.to_json(), default=str))
    if status != "completed":
        err = done.error or {}
        return fail(f"job {status}: {err.get('message') or done.message}", 1 if status == "failed" else 130)
    out = Path(args.out)
    names = [a.filename for a in done.assets]
    unique = all(names) and len(set(names)) == len(names)
    for i, a in enumerate(done.assets):
        name = a.filename if unique else f"{i:03d}-{a.filename or a.id}"
        path = services.assets.export(a.id, out, name)
        if not args.json:
            print(path)
    services.close()
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    from studio.config import load
    from studio.errors import StudioError
    from studio.wiring import build

    services = build(load(args.data_dir))
    try:
        jobs = services.jobs.list(status=args.status, limit=args.limit)
    except StudioError as e:
        return fail(str(e))
    if args.json:
        print(json.dumps([j.to_json() for j in jobs], default=str))
    else:
        for j in jobs:
            err = f"  {j.error['type']}: {j.error['message']}" if j.error else ""
            print(f"{j.id}  {j.engine:<18} {j.status:<9} {j.progress * 100:5.1f}%  {j.created_at}{err}")
    return 0


def cmd_db(args: argparse.Namespace) -> int:
    from storage.db import Database, current_revision
    from studio.config import load

    settings = load(args.data_dir)
    settings.ensure_dirs()
    db = Database(settings.db_url)
    if args.action == "upgrade":
        db.upgrade()
    where = settings.db_path if db.path is not None else db.engine.url.render_as_string(hide_password=True)
    print(f"{where}: revision {current_revision(db.engine)}")
    db.dispose()
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from studio.config import load
    from studio.wiring import build

    services = build(load(args.data_dir))
    try:
        info = services.jobs.cluster(services.settings.lease_seconds)
    finally:
        services.close()
    if args.json:
        print(json.dumps(info, default=str))
        return 0
    print(f"database: {info['database']}   queue: {info['queue_transport']}")
    print(f"{'WORKER':<44} {'STATE':<8} {'BEAT':>6}  {'DEVICES':<12} {'ENGINES':<28} RUNNING")
    for w in info["workers"]:
        run = ", ".join(f"{r['id']} ({r['engine']} {r['progress'] * 100:.0f}%)" for r in w["running"]) or "-"
        print(f"{w['id']:<44} {w['state']:<8} {w['heartbeat_age_s']:>5.1f}s  {','.join(w['devices']):<12} "
              f"{','.join(w['engines'])[:28]:<28} {run}")
    if not info["workers"]:
        print("(no workers registered)")
    print(f"{'ENGINE':<24} {'QUEUED':>7} {'RUNNING':>8}")
    for engine, q in info["queue"].items():
        print(f"{engine:<24} {q['queued']:>7} {q['running']:>8}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from engines.base import ModelNotFound
    from studio.config import load
    from studio.wiring import build

    services = build(load(args.data_dir))
    if args.action == "list":
        for m in services.models.list():
            print(f"{m['name']:<24} {m['kind']:<12} {m['location']}")
        return 0
    if not args.name:
        return fail("models register|remove needs NAME")
    if args.action == "remove":
        services.models.unregister(args.name)
        return 0
    if not args.location:
        return fail("models register NAME LOCATION")
    try:
        print(json.dumps(services.models.register(args.name, args.location)))
    except (ModelNotFound, ValueError) as e:
        return fail(str(e))
    return 0


def cmd_users(args: argparse.Namespace) -> int:
    from studio.config import load
    from studio.errors import StudioError
    from studio.wiring import build

    services = build(load(args.data_dir))
    auth = services.auth
    try:
        if args.action == "list":
            for u in auth.list_users():
                print(f"{u['username']:<24} {'admin' if u['is_admin'] else 'user':<6} "
                      f"{'disabled' if u['disabled'] else ''}")
            return 0
        if not args.name:
            return fail(f"users {args.action} needs NAME")
        password = sys.stdin.readline().rstrip("\n") if args.password_stdin else None
        if args.action == "add":
            _, pw = auth.add_user(args.name, password, admin=args.admin)
            print(f"created {args.name}" + ("" if password else f"; password (shown once): {pw}"))
        elif args.action == "passwd":
            if password is None:
                import secrets

                password = secrets.token_urlsafe(15)
                print(f"new password for {args.name} (shown once): {password}")
            auth.set_password(args.name, password)
            print("password changed; the user's sessions were signed out")
        elif args.action == "token":
            _, token = auth.create_token(auth.user_id(args.name), args.token_name)
            print(token)
            print("(shown once: send it as 'Authorization: Bearer <token>')", file=sys.stderr)
        elif args.action == "revoke-sessions":
            print(f"signed out {auth.revoke_sessions(args.name)} session(s)")
    except StudioError as e:
        return fail(str(e))
    finally:
        services.close()
    return 0


def _call(target: str, argv: list[str]) -> int:
    module, _, fn = target.partition(":")
    try:
        func: Callable[[list[str]], int] = getattr(importlib.import_module(module), fn)
    except (ImportError, AttributeError) as e:
        return fail(f"{target} is not available in this install: {e}")
    return int(func(argv) or 0)


PASSTHROUGH = {"train-embedded": "engines.world.train:main", "train-clockwork": "engines.t2i.clockwork_train:main"}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # commands whose options belong to another module's parser: hand over the rest verbatim
    if argv and argv[0] in PASSTHROUGH and "-h" not in argv[:1]:
        logging.basicConfig(level=logging.WARNING)
        return _call(PASSTHROUGH[argv[0]], argv[1:])
    if len(argv) >= 2 and argv[0] in ("bench", "eval") and not argv[1].startswith("-"):
        table = BENCHES if argv[0] == "bench" else EVALS
        if argv[1] not in table:
            return fail(f"unknown {argv[0]} {argv[1]!r}; one of {', '.join(sorted(table))}")
        logging.basicConfig(level=logging.WARNING)
        return _call(table[argv[1]], argv[2:])
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("huey").setLevel(logging.WARNING)
    from studio.config import load

    if args.cmd == "serve":
        from studio.server import serve

        if args.insecure_listen:
            return fail("--insecure-listen is gone: listening off loopback now turns accounts on "
                        "(first start prints the admin password); see docs/security.md")
        return serve(load(args.data_dir, host=args.host, port=args.port, workers=args.workers, auth=args.auth,
                          public_urls=tuple(u.rstrip("/") for u in args.public_url) if args.public_url else None,
                          allowed_hosts=tuple(args.allowed_host) if args.allowed_host else None,
                          share=args.share or None, share_server_address=args.share_server_address),
                     worker=not args.no_worker, workers=args.workers)
    if args.cmd == "worker":
        from studio.worker import run_worker

        engines = tuple(e for e in (args.engines or "").replace(" ", ",").split(",") if e) or None
        return run_worker(load(args.data_dir, workers=args.workers, engines=engines), args.workers, args.parent_pid)
    if args.cmd == "run":
        logging.getLogger().setLevel(logging.WARNING)
        return cmd_run(args)
    if args.cmd == "jobs":
        return cmd_jobs(args)
    if args.cmd == "db":
        return cmd_db(args)
    if args.cmd == "status":
        return cmd_status(args)
    if args.cmd == "models":
        return cmd_models(args)
    if args.cmd == "users":
        return cmd_users(args)
    if args.cmd in ("bench", "eval"):
        table = BENCHES if args.cmd == "bench" else EVALS
        return _call(table[args.name], args.rest)
    if args.cmd in PASSTHROUGH:
        return _call(PASSTHROUGH[args.cmd], args.rest)
    return fail(f"unknown command {args.cmd}")
