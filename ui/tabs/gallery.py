"""Gallery tab: assets with their metadata, search by prompt text, original-bytes download."""
from __future__ import annotations

from typing import Any

import gradio as gr

from studio.wiring import Services
from ui.common import asset_file


def build_tab(services: Services, demo: gr.Blocks) -> None:
    with gr.Tab("Gallery", id="gallery"):
        with gr.Row():
            query = gr.Textbox(label="Search (prompt text, file name or asset id)", elem_id="gallery-search", scale=4)
            kind = gr.Dropdown(["all", "image", "video", "splat", "safetensors", "archive", "json"], value="image",
                               label="Kind", scale=1)
            refresh_btn = gr.Button("Refresh", scale=1)
        ids = gr.State([])
        gallery = gr.Gallery(label="Assets", columns=6, height=480, elem_id="gallery-grid", allow_preview=True)
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

        for ev in (query.submit, refresh_btn.click, kind.change):
            ev(load, inputs=[query, kind], outputs=[gallery, ids])
        gallery.select(select, inputs=ids, outputs=[meta, download])
        demo.load(load, inputs=[query, kind], outputs=[gallery, ids])
