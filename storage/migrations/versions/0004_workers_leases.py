"""scale-out: registered workers; job leases (token, expiry, attempts) for fenced claims

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 17:40:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('workers',
    sa.Column('id', sa.String(length=128), nullable=False),
    sa.Column('host', sa.String(length=255), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=False),
    sa.Column('devices', sa.JSON(), nullable=False),
    sa.Column('engines', sa.JSON(), nullable=False),
    sa.Column('threads', sa.Integer(), nullable=False),
    sa.Column('started_at', sa.DateTime(), nullable=False),
    sa.Column('heartbeat_at', sa.DateTime(), nullable=False),
    sa.Column('stopped_at', sa.DateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('jobs') as b:
        b.add_column(sa.Column('lease_token', sa.String(length=32), nullable=True))
        b.add_column(sa.Column('lease_expires_at', sa.DateTime(), nullable=True))
        b.add_column(sa.Column('attempts', sa.Integer(), nullable=False, server_default='0'))
        b.create_index('ix_jobs_engine_status', ['engine', 'status'])
        b.create_index('ix_jobs_started', ['started_at'])


def downgrade() -> None:
    with op.batch_alter_table('jobs') as b:
        b.drop_index('ix_jobs_started')
        b.drop_index('ix_jobs_engine_status')
        b.drop_column('attempts')
        b.drop_column('lease_expires_at')
        b.drop_column('lease_token')
    op.drop_table('workers')
