"""adapter-train params per method: drop fields of other methods from stored jobs

Jobs stored before the per-method params saved every field (rank, density, mask_type) whatever
the method; the per-method models reject those, so a retry or resume of such a job would fail
validation. Self-contained on purpose (no application imports: migrations must not change
when the code does).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 18:20:00
"""
import json

from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

ONLY = {"rank": ("lora", "foura"), "density": ("shira",), "mask_type": ("shira",)}


def upgrade() -> None:
    conn = op.get_bind()
    jobs = sa.table("jobs", sa.column("id", sa.String), sa.column("engine", sa.String), sa.column("params", sa.JSON))
    rows = conn.execute(sa.select(jobs.c.id, jobs.c.params).where(jobs.c.engine == "adapter-train")).all()
    for job_id, params in rows:
        p = json.loads(params) if isinstance(params, str) else dict(params or {})
        method = p.get("method", "lora")
        clean = {k: v for k, v in p.items() if k not in ONLY or method in ONLY[k]}
        if clean != p:
            conn.execute(sa.update(jobs).where(jobs.c.id == job_id).values(params=clean))


def downgrade() -> None:
    pass  # the dropped fields were ignored by their method; nothing to restore
