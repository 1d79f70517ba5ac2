"""The Relight tab against a real Studio process (web + huey worker), in Debian Chromium: a user
picks the sample portrait (a real photo), relights it, turns the light with the yaw slider and
the WebGL preview re-shades in the browser — matching the server's render of the same yaw —
and a web client cannot make the tab read a server file."""
from __future__ import annotations

import base64
import io
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.test_browser import browser  # noqa: F401 - the shared Chromium fixture

pytest.importorskip("skimage", reason="the sample portrait comes with scikit-image")


def _frame(page: Any, name: str, timeout: float = 60.0) -> Any:
    t0 = time.time()
    while time.time() - t0 < timeout:
        for f in page.frames:
            if "preview.html" in f.url and f.name == name or (name in f.url):
                return f
        el = page.query_selector(f"iframe#{name}")
        if el is not None and el.content_frame() is not None:
            return el.content_frame()
        time.sleep(0.2)
    raise AssertionError(f"no iframe {name}")


def _canvas(frame: Any) -> np.ndarray:
    url = frame.evaluate("() => document.getElementById('portrait').toDataURL('image/png')")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"), np.float32)


def _server_render(url: str, job: dict[str, Any]) -> np.ndarray:
    a = job["assets"][0]
    r = httpx.get(f"{url}/api/v1/assets/{a['id']}")
    return np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"), np.float32)


def _wait_job(url: str, n: int, timeout: float = 180.0) -> dict[str, Any]:
    t0 = time.time()
    while time.time() - t0 < timeout:
        jobs = [j for j in httpx.get(url + "/api/v1/jobs").json() if j["engine"] == "relight"]
        if len(jobs) >= n and all(j["status"] in ("completed", "failed", "canceled") for j in jobs):
            return max(jobs, key=lambda j: j["created_at"])
        time.sleep(0.5)
    raise AssertionError("relight job did not finish")


@pytest.mark.browser
def test_relight_the_sample_portrait_and_turn_the_light_live(studio_server, browser, tmp_path: Path) -> None:  # noqa: ANN001, F811
    page = browser.new_page(viewport={"width": 1400, "height": 1600})
    page.goto(studio_server.url + "/", wait_until="domcontentloaded")
    page.get_by_role("tab", name="Relight").click(timeout=60000)
    page.locator("#rl-builtin input").click()
    page.get_by_role("option", name="studio-blue-right").click()
    page.locator("#rl-env-status").get_by_text("studio-blue-right").wait_for(timeout=30000)
    page.locator("#rl-sample input").click()
    page.get_by_role("option", name="astronaut", exact=True).click()
    page.wait_for_function("() => { const i = document.querySelector('#rl-before img'); return i && i.complete && i.naturalWidth > 0; }",
                           timeout=60000)
    page.locator("#rl-submit").click()
    page.locator("#rl-status").get_by_text("completed").wait_for(timeout=180000)
    job = _wait_job(studio_server.url, 1)
    assert job["status"] == "completed" and job["params"]["builtin"] == "studio-blue-right"
    assert job["result_meta"]["face_found"] is True
    frame = _frame(page, "rl-live-frame")
    frame.wait_for_function("() => window.__relight && (window.__relight.ready || window.__relight.error)", timeout=60000)
    state = frame.evaluate("() => ({error: window.__relight.error, fps: window.__relight.fps})")
    assert state["error"] is None and state["fps"] > 0, state
    server0 = _server_render(studio_server.url, job)
    live0 = _canvas(frame)
    assert live0.shape == server0.shape
    err0 = np.abs(live0 - server0).mean()
    assert err0 < 3.0, err0  # the browser's shader is the server's formula
    # the Gradio yaw slider drives the preview in the browser (no job, no round trip)
    slider = page.locator("#rl-yaw input[type=range]")
    slider.evaluate("(el) => { el.value = 90; el.dispatchEvent(new Event('input', {bubbles: true})); }")
    frame.wait_for_function("() => Math.round(window.__relight.yaw) === 90", timeout=10000)
    live90 = _canvas(frame)
    assert np.abs(live90 - live0).mean() > 1.0  # the light moved
    page.screenshot(path=str(tmp_path / "relight-tab.png"))
    # the server's render at yaw 90 matches what the browser showed at yaw 90
    page.locator("#rl-submit").click()
    job90 = _wait_job(studio_server.url, 2)
    assert job90["params"]["yaw"] == 90
    err90 = np.abs(_server_render(studio_server.url, job90) - live90).mean()
    assert err90 < 3.0, err90
    page.close()


def test_the_relight_tab_refuses_server_paths_and_unknown_samples(studio_server, tmp_path: Path) -> None:  # noqa: ANN001
    """A server path sent as the tab's portrait file or as its sample name is refused and nothing
    is ingested or queued; the environment cannot be named by a client at all; the preview page
    takes asset URLs only."""
    import hashlib

    secret = tmp_path / "secret.png"
    Image.new("RGB", (64, 64), (200, 10, 10)).save(secret)  # a real image: only the path is wrong
    digest = hashlib.sha256(secret.read_bytes()).hexdigest()
    file_data = {"path": str(secret), "meta": {"_type": "gradio.FileData"}, "orig_name": "x.png"}
    attacks = {"portrait": ["", file_data], "sample as a path": [str(secret), None],
               "sample as a traversal": ["../../../etc/passwd", None]}
    with httpx.Client(base_url=studio_server.url, timeout=60) as c:
        # the environment (an asset id) lives in server-side session state: no client can name it
        params = c.get("/gradio_api/info").json()["named_endpoints"]["/relight_submit"]["parameters"]
        assert [p["parameter_name"] for p in params] == ["name", "path", "bname", "y", "s", "m", "sm"]
        n_before = len(c.get("/api/v1/assets", params={"limit": 1000}).json())
        jobs_before = len(c.get("/api/v1/jobs").json())
        for what, (sample, portrait) in attacks.items():
            data = [sample, portrait, "sunset-left", 12, 0.8, "add", 0.4]
            ev = c.post("/gradio_api/call/relight_submit", json={"data": data})
            assert ev.status_code == 200, (what, ev.text[:300])
            out = c.get(f"/gradio_api/call/relight_submit/{ev.json()['event_id']}").text
            assert "event: error" in out, (what, out[:300])
        assets = c.get("/api/v1/assets", params={"limit": 1000}).json()
        jobs = c.get("/api/v1/jobs").json()
        js = c.get("/static/relight/preview.js").text
    assert all(a["sha256"] != digest for a in assets) and len(assets) == n_before
    assert len(jobs) == jobs_before
    assert "refused URL" in js and "/api\\/v1\\/assets" in js


@pytest.mark.browser
def test_describe_the_light_see_the_panorama_and_relight_with_it(studio_server, browser) -> None:  # noqa: ANN001, F811
    """The issue's flow: type "sunset behind me on the left", see the panorama (draggable) and
    its lit sphere, then relight the sample portrait with that map."""
    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    page.goto(studio_server.url + "/", wait_until="domcontentloaded")
    page.get_by_role("tab", name="Relight").click(timeout=60000)
    page.locator("#rl-prompt textarea").fill("sunset behind me on the left")
    page.locator("#rl-steps input[type=number]").fill("8")
    page.locator("#rl-steps input[type=number]").press("Tab")
    page.locator("#rl-generate").click()
    page.locator("#rl-env-status").get_by_text("Dominant light").wait_for(timeout=240000)
    page.wait_for_function("() => { const i = document.querySelector('#rl-pano img'); return i && i.naturalWidth > 0; }",
                           timeout=60000)
    pano = _frame(page, "rl-pano-frame")
    pano.wait_for_function("() => window.__relight && (window.__relight.ready || window.__relight.error)", timeout=60000)
    assert pano.evaluate("() => window.__relight.error") is None
    # dragging turns the view
    box = page.locator("#rl-pano-frame").bounding_box()
    before = pano.evaluate("() => document.getElementById('pano').toDataURL()")
    frames0 = pano.evaluate("() => window.__relight.frames")
    cx, cy = box["x"] + 200, box["y"] + 150
    page.mouse.move(cx, cy)
    page.mouse.down()
    page.mouse.move(cx + 120, cy + 10, steps=6)
    page.mouse.up()
    pano.wait_for_function(f"() => window.__relight.frames > {frames0}", timeout=10000)
    assert pano.evaluate("() => document.getElementById('pano').toDataURL()") != before
    hdri = next(j for j in httpx.get(studio_server.url + "/api/v1/jobs").json() if j["engine"] == "hdri")
    assert hdri["status"] == "completed" and hdri["params"]["prompt"] == "sunset behind me on the left"
    kinds = sorted(a["kind"] for a in hdri["assets"])
    assert kinds.count("hdr") == 2 and kinds.count("image") == 2
    # the words put the sun behind the subject, on their left (azimuth +135° in the Studio's frame)
    light = hdri["result_meta"]["light"]  # the dominant light found in the generated map
    assert abs((light["azimuth_deg"] - 135 + 180) % 360 - 180) < 50, light
    assert "Main light placed at" in page.locator("#rl-env-status").inner_text()
    # relight the sample with the generated map
    n_before = len([j for j in httpx.get(studio_server.url + "/api/v1/jobs").json() if j["engine"] == "relight"])
    page.locator("#rl-sample input").click()
    page.get_by_role("option", name="astronaut", exact=True).click()
    page.locator("#rl-submit").click()
    job = _wait_job(studio_server.url, n_before + 1)
    assert job["status"] == "completed", job.get("error")
    hdr_ids = {a["id"] for a in hdri["assets"] if a["kind"] == "hdr"}
    assert job["params"].get("environment") in hdr_ids
    page.close()


def test_the_tab_places_the_light_where_asked_and_refuses_angles_out_of_range(studio_server) -> None:  # noqa: ANN001
    """The tab's "Place the main light yourself" reaches the hdri job as light_azimuth /
    light_elevation; out-of-range angles sent by a client are refused and queue nothing."""
    with httpx.Client(base_url=studio_server.url, timeout=60) as c:
        def call(data: list) -> str:
            ev = c.post("/gradio_api/call/relight_hdri", json={"data": data})
            assert ev.status_code == 200, ev.text[:300]
            return c.get(f"/gradio_api/call/relight_hdri/{ev.json()['event_id']}").text

        before = [j["id"] for j in c.get("/api/v1/jobs").json() if j["engine"] == "hdri"]
        for bad in ([999.0, 10.0], [-90.0, 400.0]):
            assert "event: error" in call(["noon sun", 0, 4, True, *bad])
        assert [j["id"] for j in c.get("/api/v1/jobs").json() if j["engine"] == "hdri"] == before
        assert "event: error" not in call(["noon sun", 0, 4, True, -90.0, 10.0])
        assert "event: error" not in call(["noon sun", 0, 4, False, -90.0, 10.0])  # box unticked: the words rule
        new = [j for j in c.get("/api/v1/jobs").json() if j["engine"] == "hdri" and j["id"] not in before]
    placed = sorted(new, key=lambda j: j["created_at"])
    assert len(placed) == 2
    assert placed[0]["params"]["light_azimuth"] == -90.0 and placed[0]["params"]["light_elevation"] == 10.0
    assert placed[1]["params"].get("light_azimuth") is None
