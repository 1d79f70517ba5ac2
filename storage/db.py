"""Database engine, sessions and schema upgrades (Alembic is the only schema writer)."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).with_name("migrations")


def as_url(target: Path | str) -> str:
    """A path is the SQLite file; a string with ``://`` is a SQLAlchemy URL (e.g. PostgreSQL)."""
    text = str(target)
    return text if "://" in text else f"sqlite:///{target}"


def make_engine(target: Path | str) -> Engine:
    """SQLite in WAL mode with a busy timeout: web and worker processes write concurrently.
    Any other URL (``postgresql+psycopg://…``) gets a pre-pinged pool, so connections that a
    database restart cut are replaced instead of failing the next statement."""
    url = as_url(target)
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10, pool_recycle=1800)
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn, _record):  # noqa: ANN001
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    return engine


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Create or upgrade the schema with Alembic (never ``create_all``)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":  # workers starting together: one migrates, the rest wait
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7426001)")
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def head_revision() -> str:
    """The newest migration shipped with this code (what ``upgrade`` brings a database to)."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return str(ScriptDirectory.from_config(cfg).get_current_head())


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


class Database:
    """Owns the SQLAlchemy engine and hands out short-lived sessions."""

    def __init__(self, target: Path | str) -> None:
        url = as_url(target)
        self.path = Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None
        self.url = url
        self.engine = make_engine(url)
        self.dialect = self.engine.dialect.name  # sqlite | postgresql
        self._factory = sessionmaker(self.engine, expire_on_commit=False)

    def upgrade(self) -> None:
        upgrade(self.engine)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._factory() as s:
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise

    def dispose(self) -> None:
        self.engine.dispose()
