"""The REST API refuses adapter-train fields that do not apply to the chosen method (422 naming
the field), and stores nothing."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from storage.models import Job


@pytest.fixture
def client(services):  # noqa: ANN001, ANN201
    from studio.server import create_app

    with TestClient(create_app(services, with_ui=False)) as c:
        yield c


def test_field_of_another_method_is_422_naming_it(client, services) -> None:  # noqa: ANN001
    base = {"demo": "striped-style", "steps": 2}
    r = client.post("/api/v1/jobs", json={"engine": "adapter-train", "params": base | {"method": "lora", "density": 0.05}})
    assert r.status_code == 422, r.text
    assert r.json()["errors"] == [{"field": "density",
                                   "message": "density does not apply to method 'lora' (only to shira)"}]
    r = client.post("/api/v1/jobs", json={"engine": "adapter-train", "params": base | {"method": "shira", "rank": 4}})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "rank"
    with services.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 0
    r = client.post("/api/v1/jobs", json={"engine": "adapter-train",
                                          "params": base | {"method": "shira", "density": 0.05}})
    assert r.status_code == 201, r.text
    params = services.jobs.get(r.json()["id"]).params  # what the worker will validate again
    assert params["method"] == "shira" and params["density"] == 0.05 and "rank" not in params
    schema = next(e for e in client.get("/api/v1/engines").json() if e["name"] == "adapter-train")["params_schema"]
    assert schema["properties"]["density"]["x-methods"] == ["shira"]
