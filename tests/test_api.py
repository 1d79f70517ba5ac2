"""REST API through FastAPI's TestClient on real services (real SQLite, real queue file)."""
from __future__ import annotations

import io
import struct
import zipfile
import zlib

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import func, select

from storage.models import Asset, Job


@pytest.fixture
def client(services):  # noqa: ANN001, ANN201
    from studio.server import create_app

    with TestClient(create_app(services, with_ui=False)) as c:
        yield c


def png_bytes(w: int = 8, h: int = 8, color=(255, 0, 0)) -> bytes:  # noqa: ANN001
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, "PNG")
    return buf.getvalue()


def count(services, model) -> int:  # noqa: ANN001
    with services.db.session() as s:
        return s.scalar(select(func.count()).select_from(model))


def test_health_engines_and_openapi(client) -> None:  # noqa: ANN001
    assert client.get("/healthz").status_code == 200
    engines = client.get("/api/v1/engines").json()
    e = next(e for e in engines if e["name"] == "test-steps")
    assert e["params_schema"]["properties"]["steps"]["maximum"] == 10000
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    for p in ("/api/v1/jobs", "/api/v1/jobs/{job_id}", "/api/v1/jobs/{job_id}/cancel", "/api/v1/jobs/{job_id}/retry",
              "/api/v1/assets", "/api/v1/assets/{asset_id}", "/api/v1/assets/{asset_id}/meta", "/api/v1/engines"):
        assert p in paths


def test_submit_get_list_cancel_retry(client, services) -> None:  # noqa: ANN001
    r = client.post("/api/v1/jobs", json={"engine": "test-steps", "params": {"steps": 3}})
    assert r.status_code == 201
    jid = r.json()["id"]
    j = client.get(f"/api/v1/jobs/{jid}").json()
    assert {"id", "engine", "status", "progress", "message", "error", "assets"} <= set(j)
    assert j["status"] == "queued"
    assert [x["id"] for x in client.get("/api/v1/jobs", params={"status": "queued"}).json()] == [jid]
    assert client.get("/api/v1/jobs", params={"status": "running"}).json() == []
    assert client.get("/api/v1/jobs", params={"status": "bogus"}).status_code == 400
    assert client.post(f"/api/v1/jobs/{jid}/cancel").json()["status"] == "canceled"
    assert client.post(f"/api/v1/jobs/{jid}/cancel").status_code == 409
    r = client.post(f"/api/v1/jobs/{jid}/retry")
    assert r.status_code == 201 and r.json()["retried_from"] == jid
    assert client.get("/api/v1/jobs/nope").status_code == 404


def test_invalid_params_422_names_field_and_stores_nothing(client, services) -> None:  # noqa: ANN001
    r = client.post("/api/v1/jobs", json={"engine": "test-steps", "params": {"steps": 99999}})
    assert r.status_code == 422
    assert "steps" in r.json()["detail"] and r.json()["errors"][0]["field"] == "steps"
    r = client.post("/api/v1/jobs", json={"engine": "nope", "params": {}})
    assert r.status_code == 422 and "engine" in r.json()["detail"]
    r = client.post("/api/v1/jobs", json={"params": {}})
    assert r.status_code == 422
    assert count(services, Job) == 0


def test_upload_roundtrip_and_meta(client, services) -> None:  # noqa: ANN001
    data = png_bytes(32, 16)
    r = client.post("/api/v1/assets", files={"file": ("x.png", data, "image/png")})
    assert r.status_code == 201, r.text
    aid = r.json()["id"]
    got = client.get(f"/api/v1/assets/{aid}")
    assert got.content == data and got.headers["content-type"] == "image/png"
    meta = client.get(f"/api/v1/assets/{aid}/meta").json()
    assert meta["width"] == 32 and meta["height"] == 16 and meta["kind"] == "image"
    # an uploaded asset can feed a job
    r = client.post("/api/v1/jobs", json={"engine": "test-steps", "params": {"steps": 1, "source": aid}})
    assert r.status_code == 201


def _bomb_png(w: int, h: int) -> bytes:
    """A valid PNG header declaring a huge image, with a tiny compressed body."""
    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    body = zlib.compress(b"\x00" * (w + 1) * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def _zip_bytes(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for n, d in entries.items():
            z.writestr(n, d)
    return buf.getvalue()


@pytest.mark.parametrize("name,data,status", [
    ("t.png", png_bytes()[:-20], 400),                       # truncated
    ("bomb.png", _bomb_png(50000, 50000), 413),              # decompression bomb
    ("x.exe", b"MZ\x90\x00" + b"\x00" * 100, 415),           # unknown type
    ("e.png", b"", 400),                                     # empty
    ("w.safetensors", struct.pack("<Q", 10) + b"not json!!", 400),
    ("t.safetensors", struct.pack("<Q", 60) + b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}'[:60] + b"\x00" * 4, 400),
    ("s.splat", b"\x00" * 33, 400),
    ("evil.zip", _zip_bytes({"../evil.txt": b"x"}), 400),
    ("mesh.ply", b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\n", 400),
])
def test_bad_uploads_are_rejected_and_store_nothing(client, services, name, data, status) -> None:  # noqa: ANN001
    r = client.post("/api/v1/assets", files={"file": (name, data, "application/octet-stream")})
    assert r.status_code == status, r.text
    assert r.json()["detail"]
    assert count(services, Asset) == 0
    assert not [p for p in services.settings.assets_dir.rglob("*") if p.is_file()]


def test_upload_size_limit(services) -> None:  # noqa: ANN001
    from studio.server import create_app
    from studio.wiring import build

    small = build(services.settings.with_(max_upload_bytes=1000), upgrade=False)
    with TestClient(create_app(small, with_ui=False)) as c:
        r = c.post("/api/v1/assets", files={"file": ("big.png", png_bytes(200, 200, (1, 2, 3)) + b"\x00" * 2000, "image/png")})
    assert r.status_code == 413
    assert count(services, Asset) == 0
