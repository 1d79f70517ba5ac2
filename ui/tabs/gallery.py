"""Gallery tab: assets with their metadata, search by prompt text, original-bytes download,
and sharing: read-only public links (with copy button and QR code) that the owner can revoke."""
from __future__ import annotations

from typing import Any

import gradio as gr

from studio.wiring import Services
from ui.common import asset_file


def build_tab(services: Services, demo: gr.Blocks, bridge: Any = None, tabs: Any = None) -> None:
    with gr.Tab("Gallery", id="gallery"):
        with gr.Row():
            query = gr.Textbox(label="Search (prompt text, file name or asset id)", elem_id="gallery-search", scale=4)
            kind = gr.Dropdown(["all", "image", "video", "hdr", "splat", "safetensors", "archive", "json"], value="image",
                               label="Kind", scale=1)
            refresh_btn = gr.Button("Refresh", scale=1)
        ids = gr.State([])
        gallery = gr.Gallery(label="Assets", columns=6, height=480, elem_id="gallery-grid", allow_preview=True)
        chosen = gr.State(None)
        to_gen = gr.Button("Send to Generate", elem_id="gallery-to-generate", size="sm")
        with gr.Row():
            meta = gr.JSON(label="Metadata", elem_id="gallery-meta")
            download = gr.File(label="Original file", interactive=False, elem_id="gallery-download")

        def load(q: str, k: str) -> tuple[list[Any], list[str]]:
            assets = services.assets.list(query=q or "", kind=None if k == "all" else k, limit=120)
            items = []
            for a in assets:
                caption = str(a.meta.get("prompt") or a.filename or a.id)[:80]
                if a.kind == "image":
                    items.append((asset_file(services, a), caption))
            return items, [a.id for a in assets if a.kind == "image"]

        def select(evt: gr.SelectData, asset_ids: list[str]) -> tuple[Any, Any]:
            if evt.index is None or evt.index >= len(asset_ids):
                return None, None
            a = services.assets.get(asset_ids[evt.index])
            return a.to_json(), asset_file(services, a)

        with gr.Accordion("Share", open=False, elem_id="share-box"):
            gr.Markdown("A read-only link anyone can open without signing in. It shows only the chosen "
                        "files (image, video or splat scene in a 3D viewer); revoke it any time.")
            with gr.Row():
                pick = gr.Dropdown([], multiselect=True, label="Assets to share (the selected one is added)",
                                   elem_id="share-pick", scale=3)
                title = gr.Textbox(label="Title", elem_id="share-title", scale=2)
            with gr.Row():
                with_meta = gr.Checkbox(False, label="Include prompt and seed", elem_id="share-meta")
                expiry = gr.Dropdown([("never", 0), ("1 hour", 1 / 24), ("1 day", 1), ("7 days", 7), ("30 days", 30)],
                                     value=7, label="Expires after", elem_id="share-expiry")
                share_btn = gr.Button("Create link", variant="primary", elem_id="share-create")
            with gr.Row():
                link = gr.Textbox(label="Link (shown once)", buttons=["copy"], interactive=False,
                                  elem_id="share-link", scale=3)
                qr = gr.Image(label="QR code", type="pil", interactive=False, height=180, elem_id="share-qr", scale=1)
            links = gr.Dataframe(headers=["id", "title", "items", "state", "views", "expires"], interactive=False,
                                 elem_id="share-links", label="My links")
            with gr.Row():
                revoke_id = gr.Dropdown([], label="Link to revoke", elem_id="share-revoke-id", scale=3)
                revoke_btn = gr.Button("Revoke", variant="stop", elem_id="share-revoke", scale=1)
            share_msg = gr.Markdown(elem_id="share-msg")

        def choices(q: str) -> Any:
            assets = services.assets.list(query=q or "", limit=200)
            return gr.update(choices=[(f"{a.kind}: {str(a.meta.get('prompt') or a.filename or a.id)[:60]}", a.id)
                                      for a in assets])

        def my_links() -> tuple[list[list[Any]], Any]:
            rows = [[x["id"][:8], x["title"], len(x["assets"]), x["state"], x["views"], x["expires_at"] or "never"]
                    for x in services.shares.list()]
            active = [(f"{x['id'][:8]} {x['title'] or ''} ({len(x['assets'])} items)", x["id"])
                      for x in services.shares.list() if x["state"] == "active"]
            return rows, gr.update(choices=active, value=None)

        def add_selected(evt: gr.SelectData, asset_ids: list[str], chosen: list[str] | None) -> Any:
            if evt.index is None or evt.index >= len(asset_ids):
                return gr.update()
            return gr.update(value=list(dict.fromkeys([*(chosen or []), asset_ids[evt.index]])))

        def create(chosen: list[str] | None, t: str, meta_on: bool, days: float,
                   request: gr.Request) -> tuple[str, Any, list[list[Any]], Any, str]:
            from studio.errors import StudioError

            try:
                made = services.shares.create(chosen or [], title=t or "", include_meta=bool(meta_on),
                                              expires_in_days=float(days) or None)
            except StudioError as e:
                raise gr.Error(str(e)) from None
            url = _base_url(services, request) + made["path"]
            rows, active = my_links()
            return url, _qr(url), rows, active, f"Link created for {len(made['assets'])} item(s)."

        def revoke(link_id: str | None) -> tuple[list[list[Any]], Any, str]:
            from studio.errors import StudioError

            if not link_id:
                return *my_links(), "Pick a link to revoke."
            try:
                services.shares.revoke(link_id)
            except StudioError as e:
                raise gr.Error(str(e)) from None
            return *my_links(), "Link revoked: it no longer opens."

        for ev in (query.submit, refresh_btn.click, kind.change):
            ev(load, inputs=[query, kind], outputs=[gallery, ids])
            ev(choices, inputs=query, outputs=pick)
        gallery.select(select, inputs=ids, outputs=[meta, download])

        def remember(evt: gr.SelectData, asset_ids: list[str]) -> str | None:
            return asset_ids[evt.index] if evt.index is not None and evt.index < len(asset_ids) else None

        gallery.select(remember, inputs=ids, outputs=chosen)
        if bridge is not None and tabs is not None:
            def send(asset_id: str | None) -> tuple[Any, Any]:
                if not asset_id:
                    raise gr.Error("select an image first")
                return asset_id, gr.Tabs(selected="generate")

            to_gen.click(send, inputs=chosen, outputs=[bridge, tabs])
        gallery.select(add_selected, inputs=[ids, pick], outputs=pick)
        share_btn.click(create, inputs=[pick, title, with_meta, expiry],
                        outputs=[link, qr, links, revoke_id, share_msg])
        revoke_btn.click(revoke, inputs=revoke_id, outputs=[links, revoke_id, share_msg])
        demo.load(load, inputs=[query, kind], outputs=[gallery, ids])
        demo.load(choices, inputs=query, outputs=pick)
        demo.load(my_links, outputs=[links, revoke_id])


def _base_url(services: Services, request: gr.Request | None) -> str:
    """What others should open: the first --public-url, else the address the owner is using."""
    s = services.settings
    if s.public_urls:
        return s.public_urls[0].rstrip("/")
    host = ""
    if request is not None:
        host = dict(request.headers).get("host", "")
    return f"http://{host or f'127.0.0.1:{s.port}'}"


def _qr(url: str) -> Any:
    import io

    import segno
    from PIL import Image

    buf = io.BytesIO()
    segno.make(url, error="m").save(buf, kind="png", scale=6, border=2)
    buf.seek(0)
    return Image.open(buf).convert("RGB")
