"""Throwaway PostgreSQL and Redis servers from the Debian packages (``postgresql``,
``redis-server``), on loopback, in a temp dir, for tests and the scale bench.

Real servers, not mocks: ``initdb`` + ``pg_ctl`` on a free port, ``redis-server --port X
--dir tmp``. As root (CI), PostgreSQL runs as the ``postgres`` user the package created
(initdb refuses root). ``restart()`` stops a server hard and starts it again on the same
port and data: what the fault drills do to the database and the queue.
"""
from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bindir() -> Path | None:
    """The PostgreSQL server binaries (Debian keeps them out of PATH)."""
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True):
        if (Path(d) / "initdb").exists():
            return Path(d)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def missing() -> list[str]:
    """Debian packages whose binaries are not here ([] = both servers can start)."""
    out = []
    if pg_bindir() is None:
        out.append("postgresql")
    if shutil.which("redis-server") is None and not Path("/usr/bin/redis-server").exists():
        out.append("redis-server")
    return out


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false") or os.environ.get("STUDIO_CI") == "1"


def _wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


class Postgres:
    """``initdb`` into a temp dir and ``pg_ctl start`` on a free loopback port (trust auth)."""

    def __init__(self, port: int | None = None, dbname: str = "studio") -> None:
        bindir = pg_bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL is not installed (Debian package: postgresql)")
        self.bin = bindir
        self.port = port or free_port()
        self.dbname = dbname
        self.root = Path(tempfile.mkdtemp(prefix="studio-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.user = None
        if os.geteuid() == 0:  # initdb refuses root: run the server as the package's user
            import pwd

            pw = pwd.getpwnam("postgres")
            self.user = pw.pw_name
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self._run([str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                   "-E", "UTF8", "--no-sync"])
        self.start()
        import psycopg

        with psycopg.connect(self.dsn("postgres"), autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{dbname}"')

    def new_database(self) -> str:
        """A fresh empty database on this server (one per test); returns its SQLAlchemy URL."""
        import uuid

        import psycopg

        name = f"t_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def _run(self, cmd: list[str]) -> None:
        kw = {"user": self.user} if self.user else {}
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:2])} failed: {r.stderr[-2000:]}{r.stdout[-1000:]}")

    def dsn(self, db: str | None = None) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db or self.dbname}"

    @property
    def url(self) -> str:
        """For STUDIO_DATABASE_URL (SQLAlchemy + psycopg 3)."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{self.dbname}"

    def start(self) -> None:
        opts = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c max_connections=300 "
                f"-c fsync=off -c full_page_writes=off")
        self._run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", opts, "-w", "-t", "60",
                   "start"])
        _wait_port(self.port, 30)

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            self._run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop"])

    def restart(self, down_s: float = 1.0) -> None:
        """Kill the server (immediate: like a crash, WAL recovery on start) and bring it back."""
        self.stop("immediate")
        time.sleep(down_s)
        self.start()

    def close(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


class Redis:
    """``redis-server`` on a free loopback port with its dir in a temp folder. No persistence by
    default: a restart loses every queued message (the harshest case for the Studio)."""

    def __init__(self, port: int | None = None, persist: bool = False) -> None:
        self.exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.port = port or free_port()
        self.root = Path(tempfile.mkdtemp(prefix="studio-redis-"))
        self.persist = persist
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.root),
                "--save", "", "--appendonly", "yes" if self.persist else "no", "--protected-mode", "yes"]
        self.proc = subprocess.Popen(args, stdout=open(self.root / "redis.log", "ab"), stderr=subprocess.STDOUT)
        _wait_port(self.port, 30)

    def flush(self) -> None:
        import redis

        with redis.Redis.from_url(self.url) as r:
            r.flushall()

    def stop(self, hard: bool = True) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if hard else signal.SIGTERM)
            self.proc.wait(30)

    def restart(self, down_s: float = 1.0) -> None:
        self.stop(hard=True)
        time.sleep(down_s)
        self.start()

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


class WorkerProcess:
    """``studio worker`` as another machine would run it: its own scratch data dir (work dirs,
    previews, logs), the shared database, queue and asset root from ``env``."""

    def __init__(self, scratch: Path, env: dict[str, str], *, threads: int = 1, engines: str | None = None) -> None:
        import sys

        self.scratch = scratch
        scratch.mkdir(parents=True, exist_ok=True)
        n = 0
        while (scratch / f"worker-{n}.log").exists():  # one log per incarnation
            n += 1
        self.log = scratch / f"worker-{n}.log"
        cmd = [sys.executable, "-m", "studio", "worker", "--data-dir", str(scratch), "--workers", str(threads)]
        if engines:
            cmd += ["--engines", engines]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(cmd, cwd=str(scratch.parent), env=env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.proc.pid

    def ready(self, timeout: float = 90.0) -> "WorkerProcess":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "worker ready" in self.log.read_text(errors="replace"):
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"worker did not start:\n{self.log.read_text(errors='replace')[-3000:]}")

    @property
    def worker_id(self) -> str:
        return self.log.read_text(errors="replace").split("worker ready ")[-1].split()[0]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
