"""What engines exist and what params they take (for API, UI and CLI alike)."""
from __future__ import annotations

from typing import Any

from engines import registry


def engine_list() -> list[dict[str, Any]]:
    out = []
    for name in registry.names():
        cls = registry.get(name)
        out.append({"name": name, "title": cls.title or name, "description": cls.description,
                    "idempotent": cls.idempotent, "params_schema": cls.params_model.model_json_schema()})
    return out


def engine_schema(name: str) -> dict[str, Any] | None:
    """The params JSON schema of one engine, or None when it is not installed."""
    try:
        return registry.get(name).params_model.model_json_schema()
    except (KeyError, ImportError):
        return None
