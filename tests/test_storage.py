from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from storage.db import Database, current_revision, head_revision
from storage.files import AssetFileStore, sha256_file


def test_alembic_creates_schema_in_wal_mode(tmp_path: Path) -> None:
    db = Database(tmp_path / "studio.db")
    db.upgrade()
    insp = inspect(db.engine)
    assert {"jobs", "assets", "models", "adapters", "alembic_version"} <= set(insp.get_table_names())
    cols = {c["name"] for c in insp.get_columns("jobs")}
    assert {"status", "priority", "progress", "message", "error_type", "error_message", "error_traceback",
            "created_at", "started_at", "finished_at", "worker_id", "heartbeat_at", "retried_from"} <= cols
    assert {"sha256", "kind", "mime", "size", "width", "height", "frames", "job_id", "meta"} <= {
        c["name"] for c in insp.get_columns("assets")}
    assert current_revision(db.engine) == head_revision()
    with db.engine.connect() as c:
        assert c.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    db.upgrade()  # idempotent
    assert current_revision(db.engine) == head_revision()


def test_file_store_is_content_addressed_and_atomic(tmp_path: Path) -> None:
    store = AssetFileStore(tmp_path / "assets")
    src = tmp_path / "a.bin"
    src.write_bytes(b"hello" * 1000)
    digest, size = store.put_file(src)
    assert size == 5000 and digest == sha256_file(src)
    assert store.path_for(digest).read_bytes() == src.read_bytes()
    assert store.put_file(src) == (digest, size)  # dedup
    assert list(store.tmp.iterdir()) == []  # no temp leftovers
    with pytest.raises(ValueError):
        store.path_for("../../etc/passwd")


def test_sweep_removes_orphans_but_keeps_referenced_and_young(tmp_path: Path) -> None:
    store = AssetFileStore(tmp_path / "assets")
    keep, _ = store.put_bytes(b"keep")
    orphan, _ = store.put_bytes(b"orphan")
    young, _ = store.put_bytes(b"young")
    (store.tmp / "in-partial").write_bytes(b"half")
    old = time.time() - 7200
    for p in (store.path_for(keep), store.path_for(orphan), store.tmp / "in-partial"):
        os.utime(p, (old, old))
    removed = store.sweep({keep})
    assert removed == 2
    assert store.exists(keep) and store.exists(young) and not store.exists(orphan)
    assert not (store.tmp / "in-partial").exists()
