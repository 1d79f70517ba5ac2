"""Attacks and sharing in a real browser (Debian Chromium via Playwright).

- A page served on another local port tries what a malicious site would: no-cors fetch of a
  FormData upload, an auto-submitted form, a CORS read, a Gradio upload. Nothing is created.
- A page on a rebound name (resolver rule: evil.test → 127.0.0.1) cannot use the Studio.
- With accounts on: a user signs in, shares an image and a splat scene from the Gallery; a
  second browser with no login opens the links; the owner revokes one and it stops opening.
- Behind Debian's Caddy with TLS on loopback (--public-url): login, Secure cookie, share link.
"""
from __future__ import annotations

import http.server
import os
import shutil
import socketserver
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from tests.conftest import ROOT, StudioProcess, free_port, wait_for
from tests.test_browser import ARGS, CHROMIUM

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def pw() -> Iterator[Any]:
    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: `make test` installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        yield p


def launch(pw: Any, *extra: str) -> Any:  # noqa: ANN401
    return pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[*ARGS, *extra])


class Site:
    """An attacker's web server on another local port, serving one HTML page."""

    def __init__(self, html: str) -> None:
        body = html.encode()

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a: object) -> None:
                pass

        self.httpd = socketserver.TCPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def counts(url: str) -> tuple[int, int]:
    return (len(httpx.get(url + "/api/v1/assets", params={"limit": 1000}).json()),
            len(httpx.get(url + "/api/v1/jobs", params={"limit": 1000}).json()))


def test_pages_on_other_origins_cannot_drive_the_studio(studio_server, pw) -> None:  # noqa: ANN001
    target = studio_server.url
    before = counts(target)
    attack = f"""<!doctype html><body>
<iframe name=sink></iframe>
<form id=f method=post enctype=multipart/form-data action="{target}/api/v1/assets" target=sink>
<input type=hidden name=x value=1></form>
<form id=g method=post enctype=text/plain action="{target}/api/v1/jobs" target=sink>
<input name='{{"engine":"test-steps","params":{{"steps":1,"x":"' value='"}}}}'></form>
<script>
window.results = {{}};
async function go() {{
  const fd = new FormData();
  fd.append('file', new Blob([new Uint8Array([137,80,78,71,13,10,26,10])], {{type: 'image/png'}}), 'a.png');
  try {{ await fetch('{target}/api/v1/assets', {{method: 'POST', mode: 'no-cors', body: fd}}); results.nocors = 'sent'; }}
  catch (e) {{ results.nocors = 'blocked'; }}
  try {{ await fetch('{target}/gradio_api/upload', {{method: 'POST', mode: 'no-cors', body: fd}}); results.gr = 'sent'; }}
  catch (e) {{ results.gr = 'blocked'; }}
  try {{ await fetch('{target}/api/v1/jobs', {{method: 'POST', mode: 'no-cors',
          headers: {{'content-type': 'text/plain'}}, body: '{{"engine":"test-steps","params":{{"steps":1}}}}'}});
        results.job = 'sent'; }} catch (e) {{ results.job = 'blocked'; }}
  try {{ const r = await fetch('{target}/api/v1/jobs'); results.read = await r.text(); }}
  catch (e) {{ results.read = 'blocked'; }}
  document.getElementById('f').submit();
  document.getElementById('g').submit();
  results.done = true;
}}
go();
</script></body>"""
    site = Site(attack)
    b = launch(pw)
    try:
        page = b.new_page()
        page.goto(site.url)
        page.wait_for_function("() => window.results && window.results.done", timeout=30000)
        time.sleep(1.5)  # let the form posts land
        res = page.evaluate("() => window.results")
        assert res["read"] == "blocked", res  # no CORS grant: the job list cannot be read
    finally:
        b.close()
        site.close()
    assert counts(target) == before, "a cross-origin page created something"


def test_rebound_name_is_refused_in_the_browser(studio_server, pw) -> None:  # noqa: ANN001
    """DNS rebinding: a name the attacker controls, now resolving to 127.0.0.1."""
    b = launch(pw, "--host-resolver-rules=MAP evil.test 127.0.0.1")
    try:
        page = b.new_page()
        r = page.goto(f"http://evil.test:{studio_server.port}/api/v1/jobs")
        assert r is not None and r.status == 403
        before = counts(studio_server.url)
        status = page.evaluate("""async () => { try { return (await fetch('/api/v1/jobs', {method: 'POST',
            headers: {'content-type': 'application/json'}, body: '{"engine":"test-steps","params":{"steps":1}}'})).status; }
            catch (e) { return 'failed'; } }""")
        assert status in (403, "failed"), status
        assert counts(studio_server.url) == before
    finally:
        b.close()


# -- accounts on: share from the Gallery, open elsewhere, revoke ------------------------------------------
@pytest.fixture(scope="module")
def accounts_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StudioProcess]:
    data = tmp_path_factory.mktemp("acct") / "data"
    cmd = [sys.executable, "-m", "studio", "users", "add", "dora", "--password-stdin", "--data-dir", str(data)]
    r = subprocess.run(cmd, input="dora-password-1\n", cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    srv = StudioProcess(data, free_port(), ["--auth", "on"])
    srv.worker_ready()
    yield srv
    srv.stop()


def sign_in(page: Any, url: str) -> None:  # noqa: ANN401
    page.goto(url + "/", wait_until="domcontentloaded")
    page.wait_for_selector("input[name=username]", timeout=30000)  # redirected to the login page
    page.fill("input[name=username]", "dora")
    page.fill("input[name=password]", "dora-password-1")
    page.click("button[type=submit]")
    page.wait_for_selector("#studio-user", timeout=60000)
    page.get_by_text("signed in as").wait_for(timeout=30000)


def test_share_image_and_splat_then_revoke(accounts_server, pw, tmp_path: Path) -> None:  # noqa: ANN001
    url = accounts_server.url
    b = launch(pw)
    try:
        owner = b.new_context(viewport={"width": 1400, "height": 1300})
        page = owner.new_page()
        sign_in(page, url)
        cookies = {c["name"]: c for c in owner.cookies()}
        assert cookies["studio_session"]["httpOnly"] and cookies["studio_session"]["sameSite"] == "Strict"
        # the owner's files, uploaded with the browser's session
        img = page.evaluate("""async () => {
            const c = document.createElement('canvas'); c.width = 48; c.height = 32;
            const g = c.getContext('2d'); g.fillStyle = '#2a9d8f'; g.fillRect(0, 0, 48, 32);
            const blob = await new Promise(r => c.toBlob(r, 'image/png'));
            const fd = new FormData(); fd.append('file', blob, 'teal.png');
            return (await fetch('/api/v1/assets', {method: 'POST', body: fd})).json(); }""")
        scene = (ROOT / "tests/data/splats/fruit_drops_minimal.ply").read_bytes()
        page.evaluate("""async (bytes) => {
            const fd = new FormData(); fd.append('file', new Blob([new Uint8Array(bytes)]), 'fruit.ply');
            return (await fetch('/api/v1/assets', {method: 'POST', body: fd})).json(); }""", list(scene))
        # share the image from the Gallery UI
        page.get_by_role("tab", name="Gallery").click()
        page.get_by_text("Share", exact=True).click()
        page.get_by_role("button", name="Refresh").click()
        page.locator("#share-pick input").click()
        page.get_by_role("option", name="image: teal.png").click()
        page.locator("#share-title input, #share-title textarea").first.fill("teal square")
        page.locator("#share-create").click()
        link_box = page.locator("#share-link textarea, #share-link input").first
        try:
            wait_for(lambda: "/s/" in (link_box.input_value() or ""), 30, 0.2, "share link")
        finally:
            page.screenshot(path=str(tmp_path / "share-ui-1.png"), full_page=True)
        image_link = link_box.input_value()
        page.wait_for_selector("#share-qr img", timeout=10000)
        # the splat scene, shared as well
        page.locator("#share-pick input").click()
        page.get_by_role("option", name="splat: fruit.ply").click()
        page.get_by_role("option", name="image: teal.png").click()  # deselect the image
        page.locator("#share-title input, #share-title textarea").first.fill("fruit scene")
        page.locator("#share-create").click()
        wait_for(lambda: link_box.input_value() not in ("", image_link), 30, 0.2, "second link")
        scene_link = link_box.input_value()
        page.screenshot(path=str(tmp_path / "share-ui.png"))

        # a stranger: a new browser context, no cookies, no login
        stranger = b.new_context()
        sp = stranger.new_page()
        r = sp.goto(image_link)
        assert r is not None and r.status == 200
        sp.get_by_text("teal square").wait_for()
        src = sp.locator("img").first.get_attribute("src")
        assert src and "/f/0" in src and img["id"] not in sp.content()
        sp.wait_for_function("() => document.querySelector('img').naturalWidth === 48")
        assert sp.goto(url + "/api/v1/assets").status == 401
        assert sp.goto(url + img["url"]).status == 401
        r = sp.goto(scene_link)
        assert r is not None and r.status == 200
        frame = sp.frame_locator("iframe")
        frame.locator("#status").get_by_text("splats").wait_for(timeout=60000)
        sp.screenshot(path=str(tmp_path / "share-splat.png"))
        # revoke the image link from the UI; the stranger's next visit fails
        page.locator("#share-revoke-id input").click()
        page.get_by_role("option", name="teal square").click()
        page.locator("#share-revoke").click()
        page.locator("#share-msg").get_by_text("revoked").wait_for(timeout=20000)
        assert sp.goto(image_link).status == 404
        assert sp.goto(scene_link).status == 200
    finally:
        b.close()


# -- behind Caddy with TLS on loopback ------------------------------------------------------------------------
def test_behind_caddy_with_tls(pw, tmp_path: Path) -> None:  # noqa: ANN001
    caddy = shutil.which("caddy")
    if caddy is None:
        pytest.fail("Debian's caddy is missing: `make test` installs it (apt-get install caddy)")
    tls_port, http_port, studio_port = free_port(), free_port(), free_port()
    public = f"https://localhost:{tls_port}"
    data = tmp_path / "data"
    r = subprocess.run([sys.executable, "-m", "studio", "users", "add", "erin", "--password-stdin",
                        "--data-dir", str(data)], input="erin-password-1\n", cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    (tmp_path / "Caddyfile").write_text(f"""{{
	admin off
	skip_install_trust
	http_port {http_port}
	https_port {tls_port}
	storage file_system {tmp_path / 'caddy'}
}}
localhost:{tls_port} {{
	tls internal
	reverse_proxy 127.0.0.1:{studio_port}
}}
""")
    env = dict(os.environ, HOME=str(tmp_path), XDG_DATA_HOME=str(tmp_path / "xdg"), XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    proxy = subprocess.Popen([caddy, "run", "--config", str(tmp_path / "Caddyfile"), "--adapter", "caddyfile"],
                             env=env, stdout=open(tmp_path / "caddy.log", "wb"), stderr=subprocess.STDOUT)
    srv = StudioProcess(data, studio_port, ["--public-url", public, "--no-worker"])
    b = launch(pw)
    try:
        wait_for(lambda: _up(public + "/healthz"), 60, 0.5, "caddy")
        ctx = b.new_context(ignore_https_errors=True, viewport={"width": 1300, "height": 1000})
        page = ctx.new_page()
        page.goto(public + "/", wait_until="domcontentloaded")
        page.wait_for_selector("input[name=username]", timeout=30000)
        page.fill("input[name=username]", "erin")
        page.fill("input[name=password]", "erin-password-1")
        page.click("button[type=submit]")
        page.get_by_text("signed in as").wait_for(timeout=60000)
        cookie = next(c for c in ctx.cookies() if c["name"] == "studio_session")
        assert cookie["secure"] and cookie["httpOnly"]
        made = page.evaluate("""async () => {
            const c = document.createElement('canvas'); c.width = 8; c.height = 8;
            const blob = await new Promise(r => c.toBlob(r, 'image/png'));
            const fd = new FormData(); fd.append('file', blob, 'p.png');
            const a = await (await fetch('/api/v1/assets', {method: 'POST', body: fd})).json();
            return (await fetch('/api/v1/shares', {method: 'POST', headers: {'content-type': 'application/json'},
                     body: JSON.stringify({asset_ids: [a.id]})})).json(); }""")
        assert made["url"].startswith(public + "/s/")
        other = b.new_context(ignore_https_errors=True).new_page()
        assert other.goto(made["url"]).status == 200
        assert other.goto(public + "/api/v1/jobs").status == 401
        # the Studio itself still listens on loopback only, behind the proxy
        assert httpx.get(f"http://127.0.0.1:{studio_port}/api/v1/jobs").status_code == 401
    finally:
        b.close()
        srv.stop()
        proxy.terminate()
        proxy.wait(10)


def _up(url: str) -> bool:
    try:
        return httpx.get(url, verify=False, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_run_tab_works_for_a_signed_in_user(accounts_server, pw, tmp_path: Path) -> None:  # noqa: ANN001
    """The Run tab's form is made by gr.render after start; its events must run as the user too."""
    b = launch(pw)
    try:
        page = b.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        sign_in(page, accounts_server.url)
        page.get_by_role("tab", name="Run").click()
        page.locator("#run-engine input").click()
        page.locator("#run-engine input").fill("test-steps")
        page.get_by_role("option", name="test-steps").click()
        page.wait_for_selector("#run-p-steps", timeout=30000)
        page.locator("#run-p-prompt textarea").fill("signed-in job")
        page.locator("#run-submit").click()
        page.locator("#run-status").get_by_text("completed").wait_for(timeout=60000)
        page.get_by_role("tab", name="Queue").click()
        page.wait_for_function("() => document.querySelector('#queue-table').innerText.includes('test-steps')",
                               timeout=20000)
    finally:
        b.close()
