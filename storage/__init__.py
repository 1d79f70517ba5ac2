"""Persistence: SQLite via SQLAlchemy (schema owned by Alembic) and the asset file store."""
