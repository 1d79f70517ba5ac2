"""Adapters tab: the library (with previews and metadata), import, training, and a mixer
with per-adapter weights whose A/B grid (base / each adapter / the mix, same seed) shows
what each adapter does and how fast the switch was."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from studio.catalog import engine_schema
from studio.errors import StudioError
from studio.wiring import Services
from ui.common import asset_file, cancel_job, fmt_job_line, job_outputs, progress_bar, uploader
from ui.forms import build_form, collect

SLOTS = 4


def rows(services: Services) -> list[list[Any]]:
    return [[a["name"], a["method"], a["format"], a["rank"] if a["rank"] is not None else "",
             a["density"] if a["density"] is not None else "", a["trigger"], a["base_model"],
             (a["created_at"] or "")[:16].replace("T", " ")] for a in services.library.list()]


def names(services: Services) -> list[str]:
    return [a["name"] for a in services.library.list()]


def build_tab(services: Services) -> None:
    schema = engine_schema("adapter-train")
    if schema is None or engine_schema("t2i") is None:
        return
    with gr.Tab("Adapters", id="adapters") as tab:
        with gr.Row():
            table = gr.Dataframe(headers=["name", "method", "format", "rank", "density", "trigger", "base model",
                                          "created"], value=rows(services), interactive=False, elem_id="ad-table",
                                 label="Library")
        with gr.Row():
            previews = gr.Gallery(label="Previews of the selected adapter", columns=4, height=200)
            detail = gr.JSON(label="Adapter")
        refresh = gr.Button("Refresh library", size="sm")

        with gr.Accordion("Mixer and A/B grid", open=True):
            with gr.Row():
                prompt = gr.Textbox(label="Prompt", elem_id="ad-prompt", scale=3)
                model = gr.Textbox("embedded", label="Model", scale=2, elem_id="ad-model")
                seed = gr.Number(7, label="Seed", precision=0, scale=1)
                mode = gr.Radio(["fused", "unfused"], value="fused", label="Mode", scale=1)
            slots = []
            for i in range(SLOTS):
                with gr.Row():
                    dd = gr.Dropdown(names(services), label=f"Adapter {i + 1}", elem_id=f"ad-slot-{i}", scale=3)
                    w = gr.Slider(-2, 2, 1.0, step=0.05, label="Weight", elem_id=f"ad-weight-{i}", scale=2)
                    slots.append((dd, w))
            grid_btn = gr.Button("Generate A/B grid", variant="primary", elem_id="ad-grid")
            grid_state = gr.State([])
            grid = gr.Gallery(label="base · each adapter · mix (same seed)", columns=SLOTS + 2, height=260,
                              elem_id="ad-grid-out")
            grid_info = gr.Markdown(elem_id="ad-grid-info")

        with gr.Accordion("Import an adapter (.safetensors: kohya / diffusers / PEFT LoRA, Studio SHiRA/FouRA; "
                          ".zip: a peft SHiRA folder)", open=False):
            with gr.Row():
                imp_file = gr.File(label="Adapter file", file_types=[".safetensors", ".zip"], elem_id="ad-import-file")
                imp_name = gr.Textbox(label="Name (default: file name)")
                imp_trigger = gr.Textbox(label="Trigger words")
                imp_base = gr.Textbox(label="Base model (checks every layer fits; needed for peft SHiRA)",
                                      value="embedded", elem_id="ad-import-base")
            imp_btn = gr.Button("Import", elem_id="ad-import")
            imp_msg = gr.Markdown()

        with gr.Accordion("Train an adapter", open=False):
            gr.Markdown("Your images (.zip with optional same-name .txt captions) or a demo set from the "
                        "embedded world. The run checkpoints and resumes after a crash.")
            # with no images of their own, a new user trains on a demo set, briefly (a first look on a CPU;
            # raise steps for quality): Train works with the form as it opens
            comps = build_form(schema, elem_prefix="ad-train-",
                               preset={"demo": "striped-style", "steps": 80, "sample_every": 40})
            with gr.Row():
                train_btn = gr.Button("Train", variant="primary", elem_id="ad-train-submit")
                train_cancel = gr.Button("Cancel", variant="stop")
            train_state = gr.State(None)
            train_status = gr.Markdown(elem_id="ad-train-status")
            train_progress = gr.HTML(progress_bar(0), elem_id="ad-train-progress")
            train_preview = gr.Image(label="Sample preview", type="filepath", interactive=False, height=200)
            train_out = gr.Gallery(label="Loss curve and final sample", columns=2, height=420, object_fit="contain",
                                   elem_id="ad-train-out")

        def refresh_all() -> tuple[Any, ...]:
            n = names(services)
            return (rows(services), *[gr.update(choices=n) for _ in range(SLOTS)])

        slot_dds = [dd for dd, _ in slots]
        refresh.click(refresh_all, outputs=[table, *slot_dds])
        tab.select(refresh_all, outputs=[table, *slot_dds])  # always what exists now (after reloads, other tabs)

        def pick(evt: gr.SelectData) -> tuple[Any, Any]:
            r = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
            lib = services.library.list()
            if r is None or r >= len(lib):
                return [], None
            a = lib[r]
            imgs = []
            for pid in a["previews"]:
                try:
                    imgs.append(asset_file(services, services.assets.get(pid)))
                except StudioError:
                    pass
            return imgs, a

        table.select(pick, outputs=[previews, detail])

        def make_grid(request: gr.Request, p: str, m: str, s: float, md: str, *vals: Any) -> tuple[list[str], str]:
            chosen = [(vals[2 * i], vals[2 * i + 1]) for i in range(SLOTS) if vals[2 * i]]
            if not p.strip():
                raise gr.Error("type a prompt")
            if not chosen:
                raise gr.Error("pick at least one adapter")
            base = {"model": m or "embedded", "prompt": p, "seed": int(s), "adapter_mode": md, "preview_every": 0}
            variants = [("base", [])] + [(n, [{"adapter": n, "weight": w}]) for n, w in chosen]
            if len(chosen) > 1:
                variants.append(("mix", [{"adapter": n, "weight": w} for n, w in chosen]))
            ids = []
            try:
                for label, ads in variants:
                    ids.append((label, services.jobs.submit("t2i", base | {"adapters": ads}, origin="ui").id))
            except StudioError as e:
                raise gr.Error(str(e)) from None
            return ids, f"queued {len(ids)} images"

        slot_vals = [x for pair in slots for x in pair]
        grid_btn.click(make_grid, inputs=[prompt, model, seed, mode, *slot_vals], outputs=[grid_state, grid_info])

        def poll_grid(ids: list) -> tuple[Any, Any]:
            if not ids:
                return gr.update(), gr.update()
            items, lines, done = [], [], 0
            for label, jid in ids:
                j = services.jobs.get(jid)
                imgs = [a for a in j.assets if a.kind == "image"]
                if j.status == "completed" and imgs:
                    done += 1
                    ms = j.result_meta.get("adapter_switch_ms")
                    items.append((asset_file(services, imgs[0]), f"{label}" + (f" · switch {ms:.0f} ms" if ms else "")))
                    if ms is not None and label != "base":
                        lines.append(f"{label}: adapter switch {ms:.1f} ms")
                elif j.status in ("failed", "canceled"):
                    lines.append(f"{label}: {fmt_job_line(j)}")
            return items, f"{done}/{len(ids)} done. " + " · ".join(lines)

        gr.Timer(1.0).tick(poll_grid, inputs=grid_state, outputs=[grid, grid_info], show_progress="hidden")

        def do_import(file: Any, name: str, trigger: str, base: str) -> tuple[str, Any, Any]:
            if not file:
                raise gr.Error("choose a .safetensors or .zip file")
            path = file if isinstance(file, str) else file.name
            try:
                with open(path, "rb") as f:
                    a = services.library.import_file(f, Path(path).name, name=name, trigger=trigger,
                                                     base_model=base.strip())
            except StudioError as e:
                return f"Not imported: {e}", gr.update(), gr.update()
            return f"Imported **{a['name']}** ({a['method']}, {a['format']})", rows(services), gr.update()

        imp_btn.click(do_import, inputs=[imp_file, imp_name, imp_trigger, imp_base], outputs=[imp_msg, table, imp_file])

        def train(values: dict[Any, Any]) -> tuple[str, str]:
            try:
                params = collect(schema, comps, values, uploader(services))
                job = services.jobs.submit("adapter-train", params, origin="ui")
            except (StudioError, ValueError) as e:
                raise gr.Error(str(e)) from None
            return job.id, fmt_job_line(job)

        train_btn.click(train, inputs=set(comps.values()), outputs=[train_state, train_status])
        train_cancel.click(lambda jid: cancel_job(services, jid), inputs=train_state, outputs=train_status)

        def poll_train(jid: str | None) -> tuple[Any, ...]:
            st, pct, pv, images, _ = job_outputs(services, jid)
            return st, progress_bar(pct), pv, images

        gr.Timer(1.0).tick(poll_train, inputs=train_state,
                           outputs=[train_status, train_progress, train_preview, train_out], show_progress="hidden")
