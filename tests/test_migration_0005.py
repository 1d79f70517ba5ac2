"""Stored adapter-train jobs from before per-method params still validate after upgrade."""
from __future__ import annotations

import json
from pathlib import Path

import sqlalchemy as sa

from storage.db import Database


def test_legacy_adapter_train_jobs_are_cleaned(tmp_path: Path) -> None:
    from engines.adapters.params import AdapterTrainParams

    db = Database(tmp_path / "s.db")
    from storage.db import upgrade

    upgrade(db.engine, "0004")
    legacy = {"model": "embedded", "demo": "striped-style", "method": "lora", "rank": 8, "density": 0.02,
              "mask_type": "random", "steps": 3}
    shira = legacy | {"method": "shira"}
    with db.engine.begin() as c:
        info = list(c.execute(sa.text("PRAGMA table_info(jobs)")))  # (cid, name, type, notnull, default, pk)
        filler = {"INT": 0, "BOOL": 0, "FLOAT": 0.0, "REAL": 0.0, "DATE": "2026-01-01 00:00:00", "JSON": "{}"}
        for i, p in enumerate((legacy, shira)):
            row = {"id": f"j{i}", "engine": "adapter-train", "params": json.dumps(p), "status": "failed"}
            for _, name, typ, notnull, default, _ in info:  # any other required column of that revision
                if notnull and default is None and name not in row:
                    row[name] = next((v for k, v in filler.items() if k in typ.upper()), "")
            c.execute(sa.text(f"INSERT INTO jobs ({', '.join(row)}) VALUES ({', '.join(':' + k for k in row)})"), row)
    upgrade(db.engine, "head")
    with db.engine.begin() as c:
        got = {r[0]: json.loads(r[1]) for r in c.execute(sa.text("SELECT id, params FROM jobs"))}
    assert "density" not in got["j0"] and "mask_type" not in got["j0"] and got["j0"]["rank"] == 8
    assert "rank" not in got["j1"] and got["j1"]["density"] == 0.02
    for p in got.values():
        AdapterTrainParams.model_validate(p)  # validates again
