"""Service-level errors. Each carries a one-line message fit for a user."""
from __future__ import annotations


class StudioError(Exception):
    status_code = 400


class NotFound(StudioError):
    status_code = 404


class InvalidParams(StudioError):
    """Params failed validation. ``errors`` is a list of {field, message}."""

    status_code = 422

    def __init__(self, errors: list[dict[str, str]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{e['field']}: {e['message']}" for e in errors))


class UploadRejected(StudioError):
    status_code = 415

    def __init__(self, message: str, status_code: int = 415) -> None:
        super().__init__(message)
        self.status_code = status_code


class Conflict(StudioError):
    status_code = 409
