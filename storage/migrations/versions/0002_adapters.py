"""adapter library

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 13:39:34.573468
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('adapters',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=120), nullable=False),
    sa.Column('method', sa.String(length=16), nullable=False),
    sa.Column('file_format', sa.String(length=32), nullable=False),
    sa.Column('asset_id', sa.String(length=32), nullable=False),
    sa.Column('base_model', sa.Text(), nullable=False),
    sa.Column('base_model_hash', sa.String(length=64), nullable=False),
    sa.Column('targets', sa.JSON(), nullable=False),
    sa.Column('rank', sa.Integer(), nullable=True),
    sa.Column('density', sa.Float(), nullable=True),
    sa.Column('trigger', sa.String(length=120), nullable=False),
    sa.Column('provenance', sa.JSON(), nullable=False),
    sa.Column('preview_asset_ids', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['asset_id'], ['assets.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )


def downgrade() -> None:
    op.drop_table('adapters')
