"""REST API (FastAPI). Thin: every route calls a service and maps its errors to HTTP."""
from __future__ import annotations

from typing import Any

from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field

from studio import __version__
from studio.auth import RateLimited
from studio.catalog import engine_list
from studio.errors import InvalidParams, StudioError
from studio.wiring import Services


class JobIn(BaseModel):
    engine: str = Field(description="engine name, see GET /api/v1/engines")
    params: dict[str, Any] = Field(default_factory=dict)
    priority: int = Field(0, ge=-100, le=100)


def build_api(services: Services) -> FastAPI:
    app = FastAPI(title="Studio", version=__version__, docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    jobs, assets = services.jobs, services.assets

    @app.exception_handler(StudioError)
    async def _studio_error(_req: Request, exc: StudioError) -> JSONResponse:
        body: dict[str, Any] = {"detail": str(exc)}
        if isinstance(exc, InvalidParams):
            body["errors"] = exc.errors
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, RateLimited) else None
        return JSONResponse(body, status_code=exc.status_code, headers=headers)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        w = jobs.worker()
        return {"status": "ok", "version": __version__} | ({"worker": w} if w is not None else {})

    @app.get("/api/v1/engines")
    def engines() -> list[dict[str, Any]]:
        return engine_list()

    @app.post("/api/v1/jobs", status_code=201)
    def submit(body: JobIn) -> dict[str, Any]:
        job = jobs.submit(body.engine, body.params, priority=body.priority, origin="api")
        return job.to_json()

    @app.get("/api/v1/jobs")
    def list_jobs(status: str | None = None, limit: int = Query(100, ge=1, le=1000),
                  offset: int = Query(0, ge=0)) -> list[dict[str, Any]]:
        return [j.to_json() for j in jobs.list(status=status, limit=limit, offset=offset)]

    @app.get("/api/v1/jobs/{job_id}")
    def get_job(job_id: str) -> dict[str, Any]:
        return jobs.get(job_id).to_json()

    @app.get("/api/v1/jobs/{job_id}/preview")
    def job_preview(job_id: str) -> FileResponse:
        p = jobs.preview_path(job_id)
        if p is None or not p.is_file():
            raise HTTPException(404, "no preview yet")
        return FileResponse(p, media_type="image/png", headers={"Cache-Control": "no-store"})

    @app.post("/api/v1/jobs/{job_id}/cancel")
    def cancel(job_id: str) -> dict[str, Any]:
        return jobs.cancel(job_id).to_json()

    @app.post("/api/v1/jobs/{job_id}/retry", status_code=201)
    def retry(job_id: str) -> dict[str, Any]:
        return jobs.retry(job_id).to_json()

    @app.post("/api/v1/assets", status_code=201)
    def upload(file: UploadFile = File(...)) -> dict[str, Any]:
        a = assets.upload(file.file, file.filename or "upload")
        return {"id": a.id, "kind": a.kind, "mime": a.mime, "size": a.size, "url": a.url}

    @app.get("/api/v1/assets")
    def list_assets(q: str = "", kind: str | None = None, limit: int = Query(100, ge=1, le=1000),
                    offset: int = Query(0, ge=0)) -> list[dict[str, Any]]:
        return [a.to_json() for a in assets.list(query=q, kind=kind, limit=limit, offset=offset)]

    @app.get("/api/v1/assets/{asset_id}")
    def get_asset(asset_id: str) -> FileResponse:
        a = assets.get(asset_id)
        return FileResponse(assets.path(asset_id), media_type=a.mime, filename=a.filename or a.id,
                            content_disposition_type="inline")

    @app.get("/api/v1/assets/{asset_id}/meta")
    def asset_meta(asset_id: str) -> dict[str, Any]:
        return assets.get(asset_id).to_json()

    @app.get("/api/v1/adapters")
    def adapters(method: str | None = None) -> list[dict[str, Any]]:
        return services.library.list(method)

    @app.post("/api/v1/adapters", status_code=201)
    def import_adapter(file: UploadFile = File(...), name: str = Form(""), trigger: str = Form(""),
                       base_model: str = Form("")) -> dict[str, Any]:
        return services.library.import_file(file.file, file.filename or "adapter.safetensors", name=name,
                                            trigger=trigger, base_model=base_model)

    @app.get("/api/v1/models")
    def models() -> list[dict[str, Any]]:
        return services.models.list()

    from studio.web import add_routes

    add_routes(app, services)
    from studio.a1111 import add_a1111_routes

    add_a1111_routes(app, services)
    return app
