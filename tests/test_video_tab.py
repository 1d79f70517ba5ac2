"""The Video tab against a real Studio process (web + huey worker) and the shipped embedded edit
model: in Debian Chromium a user picks a demo world clip, edits it and sees the edited video
play; and a web client cannot make the tab read a server file as its clip."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.test_browser import browser  # noqa: F401 - the shared Chromium fixture

FRAMES = 12  # a short edit: seconds of CPU with the embedded model


def set_number(page: Any, elem: str, value: str) -> None:
    box = page.locator(f"{elem} input[type=number]")
    box.fill(value)
    box.press("Tab")


@pytest.mark.browser
def test_edit_a_demo_clip_and_see_the_edited_video(studio_server, browser, tmp_path: Path) -> None:  # noqa: ANN001, F811
    from engines.video.world import demo_instruction

    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    page.goto(studio_server.url + "/", wait_until="domcontentloaded")
    page.get_by_role("tab", name="Video").click(timeout=60000)
    label = f"colour: {demo_instruction('colour')}"
    page.locator("#vid-demo input").click()
    page.get_by_role("option", name=label).click()
    # the demo clip plays as the original and its instruction is filled in
    page.wait_for_function("() => { const v = document.querySelector('#vid-original video');"
                           " return v && v.src && v.src.includes('world-colour'); }", timeout=60000)
    assert page.locator("#vid-instruction textarea").input_value() == demo_instruction("colour")
    set_number(page, "#vid-steps", "2")
    set_number(page, "#vid-max-frames", str(FRAMES))
    page.locator("#vid-cfg-model").get_by_text("speed (CFG-distilled").click()  # the 1-pass student
    page.locator("#vid-submit").click()
    page.locator("#vid-status").get_by_text("completed").wait_for(timeout=300000)
    # the edited clip is in the player and the browser decodes it (H.264, 64×64)
    page.wait_for_function("() => { const v = document.querySelector('#vid-edited video');"
                           " return v && v.readyState >= 1 && v.videoWidth === 64; }", timeout=60000)
    assert page.locator("#vid-download").inner_text().count(".mp4") >= 1
    assert "sound kept" in page.locator("#vid-status").inner_text()
    page.screenshot(path=str(tmp_path / "video-tab.png"))
    page.close()
    jobs = httpx.get(studio_server.url + "/api/v1/jobs", params={"status": "completed"}).json()
    job = next(j for j in jobs if j["engine"] == "video-edit")
    assert job["params"]["model"] == "embedded" and job["params"]["consistency"] == "keyframes"
    assert job["params"]["cfg_model"] == "distilled" and job["result_meta"]["cfg_distilled"] is True
    assert job["params"]["instruction"] == demo_instruction("colour")
    assert job["result_meta"]["frames"] == FRAMES and job["result_meta"]["audio"] is True


def test_the_video_tab_refuses_server_paths_and_unknown_demos(studio_server, tmp_path: Path) -> None:  # noqa: ANN001
    """Sent as the tab's clip (Gradio FileData) or as its demo name, a server path is refused
    and nothing is ingested."""
    secret = tmp_path / "secret.mp4"
    from engines.video.world import demo_clip

    secret.write_bytes(demo_clip("style", tmp_path).read_bytes())  # a real video: only the path is wrong
    digest = hashlib.sha256(secret.read_bytes()).hexdigest()
    file_data = {"path": str(secret), "meta": {"_type": "gradio.FileData"}, "orig_name": "x.mp4"}
    attacks = {"clip": ["", file_data], "demo as a path": [str(secret), None],
               "demo as a traversal": ["../../../etc/passwd", None]}
    with httpx.Client(base_url=studio_server.url, timeout=60) as c:
        for what, (demo, clip) in attacks.items():
            data = [demo, clip, "make it red", 7.5, 1.5, 2, True, 4, "embedded", "auto"]
            ev = c.post("/gradio_api/call/video_submit", json={"data": data})
            assert ev.status_code == 200, (what, ev.text[:300])
            out = c.get(f"/gradio_api/call/video_submit/{ev.json()['event_id']}").text
            assert "event: error" in out, (what, out[:300])
        assets = c.get("/api/v1/assets", params={"limit": 1000}).json()
        jobs = c.get("/api/v1/jobs").json()
    assert all(a["sha256"] != digest for a in assets)
    assert not [j for j in jobs if j["engine"] == "video-edit" and j["params"].get("instruction") == "make it red"]
