"""A real browser (Debian Chromium via Playwright) opens the UI, submits a job from the
generated form, watches it finish, then sees it in the Queue tab."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("STUDIO_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


def served_model(studio_server, tiny_model) -> str:  # noqa: ANN001
    """Browsers name models, never server paths: the tiny model sits in the models directory."""
    dest = studio_server.data_dir / "models" / "tiny-sd"
    if not dest.exists():
        shutil.copytree(tiny_model, dest)
    return "tiny-sd"


@pytest.fixture(scope="module")
def browser():  # noqa: ANN201
    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: .ci/run installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


def test_submit_job_from_ui_and_see_it_finish(studio_server, browser, tmp_path: Path) -> None:  # noqa: ANN001
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(studio_server.url + "/", wait_until="domcontentloaded")
    page.get_by_role("tab", name="Run").click(timeout=60000)
    page.wait_for_selector("#run-engine", timeout=60000)
    # pick the test engine in the engine dropdown
    page.locator("#run-engine input").click()
    page.locator("#run-engine input").fill("test-steps")
    page.get_by_role("option", name="test-steps").click()
    page.wait_for_selector("#run-p-steps", timeout=30000)
    page.locator("#run-p-prompt textarea").fill("browser job")
    steps = page.locator("#run-p-steps input[type=number]")
    steps.fill("4")
    steps.press("Tab")
    page.locator("#run-submit").click()
    status = page.locator("#run-status")
    status.get_by_text("completed").wait_for(timeout=60000)
    page.screenshot(path=str(tmp_path / "run.png"))
    jobs = __import__("httpx").get(studio_server.url + "/api/v1/jobs", params={"status": "completed"}).json()
    mine = [j for j in jobs if j["params"].get("prompt") == "browser job"]
    assert mine and mine[0]["params"]["steps"] == 4
    # the gallery shows the output image
    assert page.locator("#run-gallery img").count() >= 1
    # the Queue tab lists it
    page.get_by_role("tab", name="Queue").click()
    page.wait_for_function("id => document.querySelector('#queue-table').innerText.includes(id)",
                           arg=mine[0]["id"][:8], timeout=20000)
    page.screenshot(path=str(tmp_path / "queue.png"))
    page.close()


def test_generate_tab_renders_and_cancels(studio_server, browser, tiny_model, tmp_path: Path) -> None:  # noqa: ANN001
    import httpx

    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    page.goto(studio_server.url + "/", wait_until="domcontentloaded")
    page.wait_for_selector("#gen-prompt", timeout=60000)
    page.locator("#gen-prompt textarea").fill("a red star on a blue background")
    model = served_model(studio_server, tiny_model)
    page.locator("#gen-model input").fill(model)
    page.locator("#gen-model input").press("Enter")
    steps = page.locator("#gen-steps input[type=number]")
    steps.fill("6")
    steps.press("Tab")
    page.locator("#gen-submit").click()
    page.locator("#gen-status").get_by_text("completed").wait_for(timeout=120000)
    page.wait_for_function("() => document.querySelectorAll('#gen-gallery img').length >= 1", timeout=20000)
    done = [j for j in httpx.get(studio_server.url + "/api/v1/jobs", params={"status": "completed"}).json()
            if j["engine"] == "t2i"]
    assert done and done[0]["params"]["steps"] == 6 and done[0]["params"]["model"] == model
    # a long run, canceled from the UI
    steps.fill("150")
    steps.press("Tab")
    page.locator("#gen-submit").click()
    page.wait_for_function("() => document.querySelector('#gen-status').innerText.includes('running')",
                           timeout=60000)
    page.locator("#gen-cancel").click()
    page.locator("#gen-status").get_by_text("canceled").wait_for(timeout=30000)
    page.screenshot(path=str(tmp_path / "generate.png"))
    page.close()


def test_splat_tab_upload_and_render_both_modes(studio_server, browser, tmp_path: Path) -> None:  # noqa: ANN001
    sample = Path(__file__).parent / "data" / "splats" / "fruit_drops_minimal.ply"
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    page.goto(studio_server.url + "/", wait_until="domcontentloaded")
    page.get_by_role("tab", name="Splat").click(timeout=60000)
    page.locator("#splat-upload input[type=file]").set_input_files(str(sample))
    # "Loaded …" is replaced within a second by the render the new scene starts automatically,
    # so accept either (a fast machine can overwrite it before Playwright polls)
    page.wait_for_function("() => /Loaded|splat-render/.test(document.querySelector('#splat-status').innerText)",
                           timeout=60000)
    page.locator("#splat-render").click()
    for elem in ("#splat-alpha", "#splat-wsr"):
        page.wait_for_function(f"() => !!document.querySelector('{elem} img')", timeout=120000)
    href = page.locator("#splat-viewer-link").get_attribute("href")
    assert href.startswith("/static/splat/viewer.html?url=/api/v1/assets/")
    import httpx

    assert httpx.get(studio_server.url + href.split("?")[0]).status_code == 200
    assert httpx.get(studio_server.url + href.split("url=")[1].split("&")[0]).content[:3] == b"ply"
    page.screenshot(path=str(tmp_path / "splat.png"))
    page.close()


def test_adapters_tab_import_and_ab_grid(studio_server, browser, tiny_model, tmp_path: Path) -> None:  # noqa: ANN001
    import torch
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    from engines.adapters.lora_io import export_kohya

    unet = UNet2DConditionModel.from_pretrained(tiny_model / "unet")
    torch.manual_seed(0)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=["to_q", "to_v"]),
                     adapter_name="x")
    lora = tmp_path / "browser-style.safetensors"
    export_kohya(unet, lora, "x")
    model = served_model(studio_server, tiny_model)
    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    page.goto(studio_server.url + "/", wait_until="domcontentloaded")
    page.get_by_role("tab", name="Adapters").click(timeout=60000)
    page.get_by_text("Import an adapter").click()
    page.locator("#ad-import-file input[type=file]").set_input_files(str(lora))
    page.locator("#ad-import-base textarea, #ad-import-base input").first.fill(model)
    page.locator("#ad-import").click()
    page.get_by_text("Imported").wait_for(timeout=30000)
    page.wait_for_function("() => document.querySelector('#ad-table').innerText.includes('browser-style')",
                           timeout=20000)
    page.get_by_role("button", name="Refresh library").click()
    page.locator("#ad-prompt textarea, #ad-prompt input").first.fill("a red star")
    page.locator("#ad-model textarea, #ad-model input").first.fill(model)
    slot = page.locator("#ad-slot-0 input")
    slot.click()
    slot.fill("browser-style")
    page.get_by_role("option", name="browser-style").click()
    page.locator("#ad-grid").click()
    page.wait_for_function("() => document.querySelectorAll('#ad-grid-out img').length >= 2", timeout=180000)
    page.screenshot(path=str(tmp_path / "adapters.png"))
    page.close()
