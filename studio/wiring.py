"""The composition root: the one place concrete classes are chosen and connected."""
from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass

from storage.db import Database
from storage.files import AssetFileStore
from studio.assets import AssetService
from studio.auth import AuthService
from studio.config import Settings
from studio.jobs import JobService
from studio.library import AdapterLibrary
from studio.model_manager import ModelManager
from studio.queue import JobQueue
from studio.sharing import ShareService


@dataclass
class Services:
    settings: Settings
    db: Database
    assets: AssetService
    jobs: JobService
    models: ModelManager
    queue: JobQueue
    library: AdapterLibrary
    auth: AuthService
    shares: ShareService

    def close(self) -> None:
        self.db.dispose()


PROCESS_ENV = {
    "HF_HUB_OFFLINE": "1",  # never reach for a hub at run time
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "GRADIO_ANALYTICS_ENABLED": "False",  # Gradio reads it at import: set before the UI is built
}


def configure_environment() -> None:
    """The one place the Studio sets process environment (defaults only: a user's own
    setting wins). Called by ``build``, the composition root, before anything reads it."""
    for k, v in PROCESS_ENV.items():
        os.environ.setdefault(k, v)


def build(settings: Settings, *, upgrade: bool = True) -> Services:
    """Open (and migrate) the store and wire the services for one process."""
    configure_environment()
    settings.ensure_dirs()
    db = Database(settings.db_url)
    if upgrade:
        db.upgrade()
    files = AssetFileStore(settings.assets_dir)
    assets = AssetService(settings, db, files)
    queue = JobQueue(settings)
    models = ModelManager(db, budget_bytes=settings.model_cache_mb << 20, default_ref=settings.default_model,
                          roots=settings.model_roots)
    jobs = JobService(db, queue, assets, max_auto_retries=settings.max_auto_retries, models=models)
    library = AdapterLibrary(db, assets, lambda ref: models.resolve(ref, allow_paths=False))
    return Services(settings, db, assets, jobs, models, queue, library, AuthService(db), ShareService(db, assets))


def new_worker_id(role: str = "worker", host: str = "") -> str:
    return f"{host or socket.gethostname()}:{os.getpid()}:{role}:{uuid.uuid4().hex[:6]}"


def build_runner(services: Services, role: str = "worker"):  # noqa: ANN201
    from studio.runner import JobRunner

    return JobRunner(services.settings, services.jobs, services.assets, services.models,
                     new_worker_id(role, services.settings.worker_host), services.library)
