"""Issue 14's "done when", in a real browser (Debian Chromium via Playwright) against a real
Studio process with its huey worker: a user drops photos of their subject (the demo creature's
8 photos as PNG files, plus a file that is not a photo and a photo far too small), sees a verdict
per file, picks a hollowed training, watches it train (stage, loss, a sample preview), presses
"Use in Generate" and generates "a photo of sks creature …" with the result; the image's own
metadata names the personal adapter."""
from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from engines.personalize.demo import write_demo_folder
from tests.conftest import wait_for
from tests.test_browser import browser  # noqa: F401 - the shared Chromium fixture

pytestmark = pytest.mark.browser

STEPS = 40          # a short training: ~1 minute of CPU for pre-compute + training on the embedded model
SAMPLES_EVERY = 10  # sample previews at steps 10, 20, 30


def set_number(page: Any, elem: str, value: str) -> None:
    box = page.locator(f"{elem} input[type=number]")
    box.fill(value)
    box.press("Tab")


def test_drop_photos_train_hollowed_and_generate_with_it(studio_server, browser, tmp_path: Path) -> None:  # noqa: ANN001, F811
    photos = write_demo_folder(tmp_path / "photos")
    (tmp_path / "photos" / "notes.jpg").write_bytes(b"shopping list: milk, eggs\n")  # not an image at all
    Image.new("RGB", (12, 12), (200, 30, 30)).save(tmp_path / "photos" / "thumbnail.png")  # far too small
    files = [str(p) for p in photos] + [str(tmp_path / "photos" / "notes.jpg"), str(tmp_path / "photos" / "thumbnail.png")]

    page = browser.new_page(viewport={"width": 1400, "height": 1600})
    page.goto(studio_server.url + "/", wait_until="domcontentloaded")
    page.get_by_role("tab", name="Personalize").click(timeout=60000)
    page.locator("#pz-photos input[type=file]").set_input_files(files)
    wait_for(lambda: page.locator("#pz-photos").inner_text().count(".png") >= len(photos) + 1, 60, 0.3,
             "the dropped files listed")

    # a verdict per file: 8 used, the text file refused at upload, the thumbnail skipped by the check
    page.locator("#pz-check").click()
    page.locator("#pz-check-info").get_by_text("ready to train").wait_for(timeout=90000)
    table = page.locator("#pz-verdicts").inner_text()
    assert table.count("✔") == len(photos), table
    assert re.search(r"thumbnail\.png\s+✘[^\n]*small", table), table
    assert re.search(r"notes\.jpg\s+skipped", table), table  # the refused file keeps its verdict

    # subject and class words; hollowed training, the memory note follows the slider
    page.locator("#pz-class textarea, #pz-class input").first.fill("creature")
    set_number(page, "#pz-hollow", "2")
    page.locator("#pz-memory").get_by_text("Hollow 2").wait_for(timeout=10000)
    set_number(page, "#pz-hollow", "1")
    page.locator("#pz-memory").get_by_text("Hollow 1").wait_for(timeout=10000)
    set_number(page, "#pz-steps", str(STEPS))
    set_number(page, "#pz-samples", str(SAMPLES_EVERY))
    page.locator("#pz-start").click()

    # watch it: the pre-compute stage, then training with its loss, a preview, then completion
    status = page.locator("#pz-status")
    page.wait_for_function("() => /pre-compute \\d+\\/%d/.test(document.querySelector('#pz-status').innerText)" % STEPS,
                           timeout=120000)
    page.wait_for_function("() => /train \\d+\\/%d · loss \\d\\.\\d{4}/.test(document.querySelector('#pz-status')"
                           ".innerText)" % STEPS, timeout=120000)
    page.screenshot(path=str(tmp_path / "training.png"))
    # a sample of the subject in a new context while it trains (the hollowed adapter moved into a full U-Net)
    page.wait_for_function("() => !!document.querySelector('#pz-preview img')", timeout=120000)
    status.get_by_text("completed").wait_for(timeout=240000)
    assert "is in the library" in status.inner_text()
    page.wait_for_function("() => document.querySelectorAll('#pz-out img').length >= 3", timeout=30000)

    job = next(j for j in httpx.get(studio_server.url + "/api/v1/jobs").json() if j["engine"] == "personalize"
               and not j["params"].get("check_only"))
    assert job["status"] == "completed"
    assert job["params"]["hollow"] == 1 and job["params"]["steps"] == STEPS
    assert job["params"]["class_word"] == "creature" and job["params"]["subject_word"] == "sks"
    assert len(job["params"]["photos"]) == len(photos) + 1  # the thumbnail went in and was skipped there
    meta = job["result_meta"]
    assert meta["good_photos"] == len(photos) and meta["hollow"] == 1 and meta["precompute_s"] > 0
    assert meta["kept_param_fraction"] < 0.5 and meta["final_loss"] > 0
    assert "thumbnail.png" in meta["photos"]
    lib = [a for a in httpx.get(studio_server.url + "/api/v1/adapters").json() if a["name"] == "sks-creature"]
    assert lib and lib[0]["provenance"]["hollow"] == 1 and lib[0]["provenance"]["job_id"] == job["id"]

    # "Use in Generate": prompt, model and the adapter arrive in Generate; generate with the subject word
    page.locator("#pz-use").click()
    wait_for(lambda: page.locator("#gen-prompt textarea").input_value().startswith("a photo of sks creature"), 30, 0.3,
             "the prompt handed over")
    detail = httpx.get(studio_server.url + f"/api/v1/jobs/{job['id']}").json()
    adapter_id = next(a["id"] for a in detail["assets"] if a["kind"] == "adapter")
    prompt = "a photo of sks creature in the bottom right corner on a beige background"
    page.locator("#gen-prompt textarea").fill(prompt)
    set_number(page, "#gen-steps", "12")
    page.locator("#gen-submit").click()
    page.locator("#gen-status").get_by_text("completed").wait_for(timeout=120000)
    page.wait_for_function("() => document.querySelectorAll('#gen-gallery img').length >= 1", timeout=30000)
    page.screenshot(path=str(tmp_path / "generated.png"))

    gen = next(j for j in httpx.get(studio_server.url + "/api/v1/jobs").json() if j["engine"] == "t2i"
               and j["params"]["prompt"] == prompt)
    assert gen["status"] == "completed" and gen["params"]["steps"] == 12
    assert [(u["adapter"], u["weight"], u.get("name")) for u in gen["params"]["adapters"]] == [
        (adapter_id, 1.0, "sks-creature")]
    detail = httpx.get(studio_server.url + f"/api/v1/jobs/{gen['id']}").json()
    image = next(a for a in detail["assets"] if a["kind"] == "image")
    png = Image.open(io.BytesIO(httpx.get(studio_server.url + f"/api/v1/assets/{image['id']}").content))
    params = png.text["parameters"]
    assert params.startswith(prompt) and 'Adapters: "sks-creature:1"' in params, params
    page.close()
